namespace PipelineGateway.Pipeline;

/// <summary>
/// The deadlines of every request in the pipeline, on a few timers of the injected <see cref="TimeProvider"/> instead of
/// one per request. A request's own timed <see cref="CancellationTokenSource"/> cost a timer (92 B), the token source's
/// registration table (65 B) and the node of the item's own callback (76 B): 233 of the ~1,120 B the pipeline added per
/// request (docs/benchmarks.md, "In-process allocation"). Here each request is an entry in a binary heap ordered by its
/// deadline; one timer per shard is armed for the shard's earliest entry. An entry leaves when its owning stage retires
/// the item (<see cref="Remove"/>), so nothing outlives its request. When a deadline passes the item is cancelled exactly
/// as its own timer would have done (<see cref="WorkItem.Cancel"/>: the upstream call's token fires, the caller gets
/// <see cref="DeadlineExceededException"/>).
/// <para>Sharded by the adding thread, as the runtime's own timer queues are per processor: one lock for every request
/// of a many-core host would be contended where a timer per request is not.</para>
/// </summary>
internal sealed class Deadlines
{
    private static readonly TimeSpan MaxWait = TimeSpan.FromDays(1);
    private const int MinShrinkCapacity = 1024;
    private readonly Shard[] _shards;

    public Deadlines(TimeProvider time)
    {
        Time = time;
        _shards = new Shard[Math.Clamp(Environment.ProcessorCount, 1, 16)];
        for (var i = 0; i < _shards.Length; i++)
        {
            _shards[i] = new Shard(time);
        }
    }

    public TimeProvider Time { get; }

    /// <summary>Entries not yet removed, across shards (tests: a retired request holds no entry).</summary>
    public int Count => _shards.Sum(static s => s.Count);

    /// <summary>Slots the shards' heaps hold (tests: a burst's heap gives its memory back).</summary>
    internal int Capacity => _shards.Sum(static s => s.Capacity);

    /// <summary>Arms <paramref name="item"/>'s deadline at the timestamp <paramref name="due"/> (of <see cref="Time"/>).</summary>
    public void Add(WorkItem item, long due) => _shards[(uint)Environment.CurrentManagedThreadId % (uint)_shards.Length].Add(item, due);

    /// <summary>Disarms it (retirement). Safe to call more than once, and for an item whose deadline already fired.</summary>
    public static void Remove(WorkItem item) => item.DeadlineShard?.Remove(item);

    internal sealed class Shard
    {
        private readonly TimeProvider _time;
        private readonly ITimer _timer;
        private readonly object _lock = new();
        private WorkItem[] _heap = new WorkItem[16];
        private int _count;
        private long _armedFor = long.MaxValue;

        public Shard(TimeProvider time)
        {
            _time = time;

            // Created without the creating request's execution context (its activity, its log scope): the timer outlives it.
            using (ExecutionContext.SuppressFlow())
            {
                _timer = time.CreateTimer(static s => ((Shard)s!).Fire(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            }
        }

        public int Count
        {
            get
            {
                lock (_lock)
                {
                    return _count;
                }
            }
        }

        public int Capacity
        {
            get
            {
                lock (_lock)
                {
                    return _heap.Length;
                }
            }
        }

        public void Add(WorkItem item, long due)
        {
            lock (_lock)
            {
                item.DeadlineShard = this;
                item.DeadlineDue = due;
                if (_count == _heap.Length)
                {
                    Array.Resize(ref _heap, _count * 2);
                }

                _heap[_count] = item;
                item.DeadlineIndex = _count;
                _count++;
                SiftUp(item.DeadlineIndex);
                if (due < _armedFor)
                {
                    Arm(due);
                }
            }
        }

        public void Remove(WorkItem item)
        {
            lock (_lock)
            {
                var index = item.DeadlineIndex;
                if (index < 0)
                {
                    return;
                }

                // The timer stays armed for what may now be a later head: it finds nothing due and re-arms (cheaper
                // than moving the timer on every retirement, and retirements are as frequent as requests).
                RemoveAt(index);
            }
        }

        private void Fire()
        {
            if (Monitor.IsEntered(_lock))
            {
                // Run from inside Add or Fire's own re-arming, by a TimeProvider that runs a timer due now at once (a test
                // clock can): acting here would cancel a request inside its constructor, under this lock. Later, on its own.
                ThreadPool.UnsafeQueueUserWorkItem(static s => s.Fire(), this, preferLocal: false);
                return;
            }

            List<WorkItem>? due = null;
            lock (_lock)
            {
                _armedFor = long.MaxValue;
                var now = _time.GetTimestamp();
                while (_count > 0 && _heap[0].DeadlineDue <= now)
                {
                    // Never reused: this thread acts on it after the lock, when its owner may have let go of it.
                    _heap[0].NeverReuse();
                    (due ??= []).Add(_heap[0]);
                    RemoveAt(0);
                }

                if (_count > 0)
                {
                    Arm(_heap[0].DeadlineDue);
                }
            }

            // Outside the lock: a cancellation runs the upstream call's callbacks and answers the caller.
            if (due is not null)
            {
                foreach (var item in due)
                {
                    item.Cancel(CancelReason.Deadline);
                }
            }
        }

        private void Arm(long due)
        {
            _armedFor = due;
            var now = _time.GetTimestamp();
            var wait = due <= now ? TimeSpan.Zero : ToTimeSpanCeiling(due - now, _time.TimestampFrequency);

            // A timer cannot be set much beyond 49 days; a later deadline is re-armed from an early, empty firing.
            _timer.Change(wait < MaxWait ? wait : MaxWait, Timeout.InfiniteTimeSpan);
        }

        private void RemoveAt(int index)
        {
            var removed = _heap[index];
            removed.DeadlineIndex = -1;
            _count--;
            if (index != _count)
            {
                var last = _heap[_count];
                _heap[index] = last;
                last.DeadlineIndex = index;
                if (!SiftUp(index))
                {
                    SiftDown(index);
                }
            }

            _heap[_count] = null!;

            // A burst's heap gives its memory back once the burst is over (halved while a quarter full, down to 1,024).
            if (_heap.Length > MinShrinkCapacity && _count < _heap.Length / 4)
            {
                Array.Resize(ref _heap, _heap.Length / 2);
            }
        }

        private bool SiftUp(int index)
        {
            var item = _heap[index];
            var moved = false;
            while (index > 0)
            {
                var parent = (index - 1) >> 1;
                if (_heap[parent].DeadlineDue <= item.DeadlineDue)
                {
                    break;
                }

                Place(_heap[parent], index);
                index = parent;
                moved = true;
            }

            Place(item, index);
            return moved;
        }

        private void SiftDown(int index)
        {
            var item = _heap[index];
            while (true)
            {
                var child = (index << 1) + 1;
                if (child >= _count)
                {
                    break;
                }

                if (child + 1 < _count && _heap[child + 1].DeadlineDue < _heap[child].DeadlineDue)
                {
                    child++;
                }

                if (item.DeadlineDue <= _heap[child].DeadlineDue)
                {
                    break;
                }

                Place(_heap[child], index);
                index = child;
            }

            Place(item, index);
        }

        private void Place(WorkItem item, int index)
        {
            _heap[index] = item;
            item.DeadlineIndex = index;
        }
    }

    /// <summary>A span of timestamp ticks as a <see cref="TimeSpan"/>, rounded up: a timer never fires before the deadline.</summary>
    internal static TimeSpan ToTimeSpanCeiling(long timestampTicks, long frequency)
    {
        var ticks = Math.Ceiling(timestampTicks * ((double)TimeSpan.TicksPerSecond / frequency));
        return ticks >= TimeSpan.MaxValue.Ticks / 2 ? TimeSpan.FromTicks(TimeSpan.MaxValue.Ticks / 2) : TimeSpan.FromTicks((long)ticks);
    }

    /// <summary>A span as timestamp ticks of <paramref name="frequency"/>, saturating (a deadline days away must not overflow).</summary>
    internal static long ToTimestampTicks(TimeSpan span, long frequency)
    {
        var ticks = span.Ticks * ((double)frequency / TimeSpan.TicksPerSecond);
        return ticks >= long.MaxValue / 4 ? long.MaxValue / 4 : (long)Math.Ceiling(ticks);
    }
}
