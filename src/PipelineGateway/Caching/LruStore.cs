namespace PipelineGateway.Caching;

/// <summary>
/// An exact LRU with per-entry expiry, bounded by entry count and by a size in bytes, every operation O(1): a
/// dictionary to a doubly linked list, most recently used at the head. An insert into a full store evicts from the
/// tail until the new entry fits — never more entries than <see cref="MaxEntries"/>, never more bytes than
/// <see cref="MaxBytes"/>, not even for a moment. Expired entries are dropped when read, when they reach the tail, and
/// by a sweep run from an insert at most once per <see cref="SweepInterval"/> (amortized O(1) per insert at any rate
/// that fills the store).
/// </summary>
/// <remarks>
/// Why not <c>MemoryCache</c>: its <c>Compact(percentage)</c> sorts every entry on each call and rounds small
/// percentages down to zero entries, so keeping it exactly bounded cost 5 ms an insert at 10,000 entries and
/// looped uselessly at some sizes (issue 19; docs/benchmarks.md). Why not BitFaster.Caching's <c>ConcurrentLru</c>:
/// it bounds entries only, and this cache is bounded by bytes too. One lock: an operation holds it for a dictionary
/// lookup and a few pointer moves (tens of nanoseconds), and a cache lookup happens once per request.
/// </remarks>
internal sealed class LruStore<TKey, TValue>(int maxEntries, long maxBytes, TimeProvider time)
    where TKey : notnull
{
    /// <summary>How often an insert also drops every expired entry.</summary>
    public static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(30);

    private readonly Dictionary<TKey, Node> _map = [];
    private readonly object _lock = new();
    private Node? _head;
    private Node? _tail;
    private long _bytes;
    private long _evictions;
    private long _nextSweep = time.GetTimestamp() + (long)(SweepInterval.TotalSeconds * time.TimestampFrequency);

    public int MaxEntries { get; } = maxEntries;

    public long MaxBytes { get; } = maxBytes;

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _map.Count;
            }
        }
    }

    public long Bytes => Interlocked.Read(ref _bytes);

    /// <summary>Entries removed to make room (not expiries).</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    public bool TryGet(TKey key, out TValue value)
    {
        var now = time.GetTimestamp();
        lock (_lock)
        {
            if (_map.TryGetValue(key, out var node))
            {
                if (node.ExpiresAt > now)
                {
                    MoveToHead(node);
                    value = node.Value;
                    return true;
                }

                Remove(node);
            }
        }

        value = default!;
        return false;
    }

    /// <summary>Stores (or replaces) an entry; false when it is larger than the whole store (nothing is evicted for it).</summary>
    public bool Set(TKey key, TValue value, long size, TimeSpan ttl)
    {
        if (size > MaxBytes || ttl <= TimeSpan.Zero)
        {
            return false;
        }

        var now = time.GetTimestamp();
        var expires = ttl == TimeSpan.MaxValue ? long.MaxValue : now + Ticks(ttl);
        lock (_lock)
        {
            if (now >= _nextSweep)
            {
                Sweep(now);
            }

            if (_map.TryGetValue(key, out var existing))
            {
                Remove(existing);
            }

            // Room first, least recently used out (expired ones at the tail go the same way, uncounted).
            while (_tail is { } last && (_map.Count + 1 > MaxEntries || _bytes + size > MaxBytes))
            {
                if (last.ExpiresAt > now)
                {
                    Interlocked.Increment(ref _evictions);
                }

                Remove(last);
            }

            var node = new Node(key, value, size, expires);
            _map.Add(key, node);
            AddHead(node);
            Interlocked.Add(ref _bytes, size);
            return true;
        }
    }

    /// <summary>Removes an entry (true: it was there, expired or not).</summary>
    public bool Remove(TKey key)
    {
        lock (_lock)
        {
            if (!_map.TryGetValue(key, out var node))
            {
                return false;
            }

            Remove(node);
            return true;
        }
    }

    /// <summary>Drops every expired entry (O(n), at most once per <see cref="SweepInterval"/>). Callers hold the lock.</summary>
    private void Sweep(long now)
    {
        _nextSweep = now + Ticks(SweepInterval);
        for (var node = _tail; node is not null;)
        {
            var previous = node.Previous;
            if (node.ExpiresAt <= now)
            {
                Remove(node);
            }

            node = previous;
        }
    }

    private void Remove(Node node)
    {
        _map.Remove(node.Key);
        Unlink(node);
        Interlocked.Add(ref _bytes, -node.Size);
    }

    private void MoveToHead(Node node)
    {
        if (_head == node)
        {
            return;
        }

        Unlink(node);
        AddHead(node);
    }

    private void AddHead(Node node)
    {
        node.Previous = null;
        node.Next = _head;
        if (_head is not null)
        {
            _head.Previous = node;
        }

        _head = node;
        _tail ??= node;
    }

    private void Unlink(Node node)
    {
        if (node.Previous is not null)
        {
            node.Previous.Next = node.Next;
        }
        else
        {
            _head = node.Next;
        }

        if (node.Next is not null)
        {
            node.Next.Previous = node.Previous;
        }
        else
        {
            _tail = node.Previous;
        }

        node.Previous = node.Next = null;
    }

    private long Ticks(TimeSpan span) => (long)(span.TotalSeconds * time.TimestampFrequency);

    private sealed class Node(TKey key, TValue value, long size, long expiresAt)
    {
        public TKey Key { get; } = key;

        public TValue Value { get; } = value;

        public long Size { get; } = size;

        public long ExpiresAt { get; } = expiresAt;

        public Node? Previous { get; set; }

        public Node? Next { get; set; }
    }
}
