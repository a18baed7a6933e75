namespace PipelineGateway.Pipeline;

/// <summary>
/// A waiting room shared by tenants, drained fairly: one lane per tenant key, two priority classes per lane.
/// The next item goes to the interactive class unless batch work is owed its share (<see cref="BatchShare"/> of the
/// grants while both wait), and within a class by start-time fair queueing: each grant advances its lane's virtual
/// time by 1 / weight, the lane whose next grant finishes earliest goes next, and a lane that was idle starts from the
/// current virtual time (no credit banked while idle). Equal weights take turns; weight 3 against 1 gets three grants
/// in four — of in-flight slots, or of a provider's workers.
/// </summary>
/// <remarks>
/// Not thread-safe: the owner (the in-flight slots, a provider's queue) holds its own lock around every call, since
/// it must combine a look at the queue with its own state atomically. Lanes are created on demand and dropped as soon
/// as they hold nothing and have nothing active, so an idle tenant costs nothing and the lane count is bounded by the
/// tenants with work in the gateway. Selection scans the lanes with waiting work: O(tenants waiting), not O(items).
/// </remarks>
internal sealed class FairQueue<T>
    where T : class
{
    private readonly Dictionary<string, Lane> _lanes = new(StringComparer.Ordinal);
    private readonly List<Lane> _waiting = [];
    private readonly int[] _counts = new int[2];
    private double _batchCredit;
    private long _grants;
    private double _virtual; // the start tag of the latest grant: the fair-queueing clock

    public FairQueue(double batchShare) => BatchShare = Math.Clamp(batchShare, 0, 1);

    /// <summary>The part of the grants batch work gets while interactive work waits too (0.1: one in ten).</summary>
    public double BatchShare { get; }

    /// <summary>Items waiting, both classes.</summary>
    public int Count => _counts[0] + _counts[1];

    public int CountOf(RequestPriority priority) => _counts[(int)priority];

    /// <summary>Lanes alive (waiting or active work).</summary>
    public int LaneCount => _lanes.Count;

    /// <summary>The lane of a tenant, created if it has none.</summary>
    public Lane LaneFor(string key, double weight)
    {
        if (!_lanes.TryGetValue(key, out var lane))
        {
            lane = new Lane(key, weight);
            _lanes.Add(key, lane);
        }

        return lane;
    }

    /// <summary>Counts work that starts at once, without waiting (the owner had room and nothing was queued).</summary>
    public Lane Start(string key, double weight)
    {
        var lane = LaneFor(key, weight);
        if (lane.Queued == 0)
        {
            lane.Virtual = Math.Max(lane.Virtual, _virtual); // an idle tenant banks no credit
        }

        Grant(lane);
        return lane;
    }

    public void Enqueue(Lane lane, RequestPriority priority, T item)
    {
        var items = lane.Items(priority);
        if (lane.Queued == 0)
        {
            _waiting.Add(lane);
            lane.Virtual = Math.Max(lane.Virtual, _virtual); // an idle tenant banks no credit
        }

        items.AddLast(item);
        lane.Queued++;
        _counts[(int)priority]++;
    }

    /// <summary>Takes the next item by class and fairness; its lane counts it as active until <see cref="Finish"/>.</summary>
    public bool TryDequeue(out T item, out Lane lane)
    {
        item = null!;
        lane = null!;
        if (Count == 0)
        {
            return false;
        }

        var priority = NextClass();
        Lane? best = null;
        var bestFinish = double.MaxValue;
        foreach (var candidate in _waiting)
        {
            if (candidate.CountOf(priority) == 0)
            {
                continue;
            }

            var finish = candidate.Virtual + (1 / candidate.Weight);
            if (finish < bestFinish || (finish == bestFinish && candidate.LastGrant < best!.LastGrant))
            {
                best = candidate;
                bestFinish = finish;
            }
        }

        lane = best!;
        item = lane.Items(priority).RemoveFirst();
        Taken(lane, priority);
        Grant(lane);
        return true;
    }

    // A waiting lane's virtual time was brought up to the clock when it started waiting; it keeps its own pace after.
    private void Grant(Lane lane)
    {
        var start = lane.Virtual;
        _virtual = Math.Max(_virtual, start);
        lane.Virtual = start + (1 / lane.Weight);
        lane.Active++;
        lane.LastGrant = ++_grants;
    }

    /// <summary>Active work of a lane ended; an empty, idle lane is dropped.</summary>
    public void Finish(Lane lane)
    {
        lane.Active--;
        DropIfIdle(lane);
    }

    /// <summary>
    /// Makes room for <paramref name="arriving"/> when the owner is full: the newest item of the lane holding the most
    /// waiting items (batch first) is taken out, if that lane holds more than the arriving one would after joining —
    /// so a flood gives way to a tenant with little waiting, and never the other way round.
    /// </summary>
    public bool TryPushOut(Lane arriving, out T victim)
    {
        victim = null!;
        foreach (var priority in (ReadOnlySpan<RequestPriority>)[RequestPriority.Batch, RequestPriority.Interactive])
        {
            Lane? longest = null;
            foreach (var lane in _waiting)
            {
                if (!ReferenceEquals(lane, arriving) && lane.CountOf(priority) > 0 && (longest is null || lane.Queued > longest.Queued))
                {
                    longest = lane;
                }
            }

            if (longest is not null && longest.Queued > arriving.Queued + 1)
            {
                victim = longest.Items(priority).RemoveLast();
                Taken(longest, priority);
                DropIfIdle(longest);
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// How many waiting items would be handed out before a new item of <paramref name="lane"/> in class
    /// <paramref name="priority"/>, if nothing else arrived: its own lane's queue, each other lane's items whose virtual
    /// finish comes before the new item's, and the other class's share.
    /// </summary>
    public double ItemsAhead(Lane lane, RequestPriority priority)
    {
        var own = lane.CountOf(priority);
        var start = lane.Queued > 0 ? lane.Virtual : Math.Max(lane.Virtual, _virtual);
        var finish = start + ((own + 1) / lane.Weight);
        double ahead = own;
        foreach (var other in _waiting)
        {
            if (!ReferenceEquals(other, lane) && other.CountOf(priority) is var queued and > 0)
            {
                ahead += Math.Clamp(Math.Floor((finish - other.Virtual) * other.Weight), 0, queued);
            }
        }

        if (priority == RequestPriority.Interactive)
        {
            // Batch work waiting takes its share of the grants meanwhile (until it runs out).
            var batch = _counts[(int)RequestPriority.Batch];
            return batch > 0 && BatchShare < 1 ? Math.Min(ahead / (1 - BatchShare), ahead + batch) : ahead + (BatchShare >= 1 ? batch : 0);
        }

        // Interactive work goes first; batch gets its share of the grants while both wait (until interactive runs out).
        var interactive = _counts[(int)RequestPriority.Interactive];
        return interactive == 0 || BatchShare <= 0 ? ahead + interactive : Math.Min(ahead / BatchShare, ahead + interactive);
    }

    /// <summary>Takes one waiting item out wherever it is (it ended while waiting); O(its lane's length).</summary>
    public bool Remove(T item)
    {
        foreach (var lane in _waiting)
        {
            foreach (var priority in (ReadOnlySpan<RequestPriority>)[RequestPriority.Interactive, RequestPriority.Batch])
            {
                if (lane.Items(priority).Remove(item))
                {
                    Taken(lane, priority);
                    DropIfIdle(lane);
                    return true;
                }
            }
        }

        return false;
    }

    /// <summary>Every waiting item, in no particular order (the queue is unchanged).</summary>
    public List<T> Snapshot()
    {
        var all = new List<T>(Count);
        foreach (var lane in _waiting)
        {
            foreach (var priority in (ReadOnlySpan<RequestPriority>)[RequestPriority.Interactive, RequestPriority.Batch])
            {
                var items = lane.Items(priority);
                for (var i = 0; i < items.Count; i++)
                {
                    all.Add(items[i]);
                }
            }
        }

        return all;
    }

    /// <summary>Takes every waiting item out (shutdown).</summary>
    public List<T> Clear()
    {
        var all = new List<T>(Count);
        foreach (var lane in _waiting)
        {
            foreach (var priority in (ReadOnlySpan<RequestPriority>)[RequestPriority.Interactive, RequestPriority.Batch])
            {
                var items = lane.Items(priority);
                while (items.Count > 0)
                {
                    all.Add(items.RemoveFirst());
                }
            }

            lane.Queued = 0;
        }

        _waiting.Clear();
        _counts[0] = _counts[1] = 0;
        foreach (var lane in _lanes.Values.Where(l => l.Active == 0).ToList())
        {
            _lanes.Remove(lane.Key);
        }

        return all;
    }

    private RequestPriority NextClass()
    {
        var interactive = _counts[(int)RequestPriority.Interactive];
        var batch = _counts[(int)RequestPriority.Batch];
        if (batch == 0)
        {
            return RequestPriority.Interactive;
        }

        if (interactive == 0)
        {
            return RequestPriority.Batch;
        }

        // Both wait: batch earns credit with every grant and takes one when a whole grant is owed.
        _batchCredit += BatchShare;
        if (_batchCredit >= 1)
        {
            _batchCredit -= 1;
            return RequestPriority.Batch;
        }

        return RequestPriority.Interactive;
    }

    private void Taken(Lane lane, RequestPriority priority)
    {
        lane.Queued--;
        _counts[(int)priority]--;
        if (lane.Queued == 0)
        {
            _waiting.Remove(lane);
        }
    }

    /// <summary>Drops a lane that holds nothing and has nothing active (a lane looked up for an offer that was refused).</summary>
    public void DropIfIdle(Lane lane)
    {
        if (lane.Queued == 0 && lane.Active == 0)
        {
            _lanes.Remove(lane.Key);
        }
    }

    /// <summary>One tenant's waiting items and its active count.</summary>
    internal sealed class Lane(string key, double weight)
    {
        private Deque<T>? _interactive;
        private Deque<T>? _batch;

        public string Key { get; } = key;

        public double Weight { get; } = weight > 0 ? weight : 1;

        /// <summary>Work of this tenant granted and not finished (keeps the lane alive).</summary>
        public int Active { get; set; }

        /// <summary>The virtual finish time of the lane's latest grant.</summary>
        public double Virtual { get; set; }

        public int Queued { get; set; }

        public long LastGrant { get; set; }

        public int CountOf(RequestPriority priority) => (priority == RequestPriority.Batch ? _batch : _interactive)?.Count ?? 0;

        public Deque<T> Items(RequestPriority priority) => priority == RequestPriority.Batch
            ? _batch ??= new Deque<T>()
            : _interactive ??= new Deque<T>();
    }
}

/// <summary>A growable ring buffer with removal at both ends (the waiting rooms take their newest out to make room).</summary>
internal sealed class Deque<T>
{
    // Empty until the first item: many deques never hold one (a lane's batch class, a tenant whose callers never wait;
    // the admission door's 4-slot arrays were ~1.2% of the bytes a proxied request allocated, docs/benchmarks.md).
    private T[] _items = [];
    private int _head;

    public int Count { get; private set; }

    public void AddLast(T item)
    {
        if (Count == _items.Length)
        {
            var bigger = new T[Math.Max(4, _items.Length * 2)];
            for (var i = 0; i < Count; i++)
            {
                bigger[i] = _items[(_head + i) % _items.Length];
            }

            _items = bigger;
            _head = 0;
        }

        _items[(_head + Count) % _items.Length] = item;
        Count++;
    }

    public T this[int index] => _items[(_head + index) % _items.Length];

    public T PeekFirst() => Count == 0 ? throw new InvalidOperationException("The deque is empty.") : _items[_head];

    public T RemoveFirst()
    {
        var item = PeekFirst();
        _items[_head] = default!;
        _head = (_head + 1) % _items.Length;
        Count--;
        return item;
    }

    /// <summary>Removes one item wherever it is, keeping the order of the others; O(Count).</summary>
    public bool Remove(T item)
    {
        for (var i = 0; i < Count; i++)
        {
            if (EqualityComparer<T>.Default.Equals(_items[(_head + i) % _items.Length], item))
            {
                for (var j = i; j < Count - 1; j++)
                {
                    _items[(_head + j) % _items.Length] = _items[(_head + j + 1) % _items.Length];
                }

                _items[(_head + Count - 1) % _items.Length] = default!;
                Count--;
                return true;
            }
        }

        return false;
    }

    public T RemoveLast()
    {
        if (Count == 0)
        {
            throw new InvalidOperationException("The deque is empty.");
        }

        var i = (_head + Count - 1) % _items.Length;
        var item = _items[i];
        _items[i] = default!;
        Count--;
        return item;
    }
}
