namespace PipelineGateway.Pipeline;

/// <summary>
/// The <c>MaxInFlight</c> in-flight slots, handed out fairly. A request takes a slot when admission lets it through and
/// gives it back when it is retired; at most <c>MaxInFlight</c> requests exist past admission — the bound the
/// deadlock-freedom argument rests on (docs/architecture.md). When every slot is taken, requests wait here (they are
/// still inside admission's waiting room, so their number is bounded by it) and a freed slot goes to the next one by
/// priority class and then to the tenant holding the fewest slots per unit of weight: a tenant's flood of admitted
/// requests cannot keep another tenant's out.
/// </summary>
/// <remarks>
/// Nothing here waits: a request either gets a slot at once or is queued, and a queued one is handed its slot by
/// whoever frees one (<see cref="Release"/>). So the admission stage's loop never waits for a slot, and no tenant's
/// requests can hold it up for another's.
/// </remarks>
internal sealed class InFlightSlots : IWaitingRoom
{
    private readonly object _lock = new();
    private readonly Stack<int> _free;
    private readonly FairQueue<WorkItem> _waiting;
    private readonly Hosting.FairnessOptions _fairness;

    public InFlightSlots(int count, Hosting.FairnessOptions fairness)
    {
        Capacity = count;
        _fairness = fairness;
        _waiting = new FairQueue<WorkItem>(fairness.BatchShare);
        _free = new Stack<int>(count);
        for (var i = count - 1; i >= 0; i--)
        {
            _free.Push(i);
        }
    }

    public int Capacity { get; }

    /// <summary>Slots held now.</summary>
    public int InUse
    {
        get
        {
            lock (_lock)
            {
                return Capacity - _free.Count;
            }
        }
    }

    /// <summary>Requests waiting for a slot.</summary>
    public int Waiting
    {
        get
        {
            lock (_lock)
            {
                return _waiting.Count;
            }
        }
    }

    /// <summary>Tenants holding or waiting for slots now.</summary>
    public int Tenants
    {
        get
        {
            lock (_lock)
            {
                return _waiting.LaneCount;
            }
        }
    }

    /// <summary>Gives the request a slot now (true), or queues it for the next free one (false).</summary>
    public bool TryTake(WorkItem item, out int slot)
    {
        var key = item.TenantKey;
        lock (_lock)
        {
            if (_waiting.Count == 0 && _free.TryPop(out slot))
            {
                item.SlotLane = _waiting.Start(key, _fairness.WeightOf(key));
                return true;
            }

            _waiting.Enqueue(_waiting.LaneFor(key, _fairness.WeightOf(key)), item.Priority, item);
            item.WaitingIn = this;
            item.NeverReuse(); // a retiring request hands it its slot, shutdown takes it out: other threads' lives
            slot = -1;
            return false;
        }
    }

    /// <summary>
    /// Gives a slot back. If a request waits for one, it gets it: returned with its slot number, for the caller to send
    /// on (outside this lock).
    /// </summary>
    public WorkItem? Release(WorkItem retiring, int slot, out int granted)
    {
        lock (_lock)
        {
            if (retiring.SlotLane is { } lane)
            {
                retiring.SlotLane = null;
                _waiting.Finish(lane);
            }

            if (_waiting.TryDequeue(out var next, out var nextLane))
            {
                next.WaitingIn = null;
                next.SlotLane = nextLane;
                granted = slot;
                return next;
            }

            _free.Push(slot);
            granted = -1;
            return null;
        }
    }

    /// <summary>Takes every request still waiting for a slot out (shutdown), so it can be failed.</summary>
    public List<WorkItem> TakeWaiting()
    {
        lock (_lock)
        {
            var all = _waiting.Clear();
            foreach (var item in all)
            {
                item.WaitingIn = null;
            }

            return all;
        }
    }

    public bool TryRemove(WorkItem item)
    {
        lock (_lock)
        {
            if (!ReferenceEquals(item.WaitingIn, this) || !_waiting.Remove(item))
            {
                return false;
            }

            item.WaitingIn = null;
            return true;
        }
    }
}
