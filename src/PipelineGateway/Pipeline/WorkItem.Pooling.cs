using System.Diagnostics;

namespace PipelineGateway.Pipeline;

/// <summary>
/// Reuse (issue 21's in-process target: bytes per request). An item is held by its caller until the caller has read its
/// answer (<see cref="System.Threading.Tasks.Sources.IValueTaskSource{TResult}.GetResult"/>) and by the pipeline until
/// it lets go of it (<see cref="GatewayPipeline.Retire"/>); when both have, it goes back to its pool — unless anything
/// else may still reach it: a cancellation (another thread's timer or token), a stream, a shared cache flight, a hedge,
/// a retry timer, a wait for a rate-limit permit or an in-flight slot, a park for a provider's room, a shutdown. Those
/// lives are rarer and end with the garbage collector, as every item's did before.
/// </summary>
internal sealed partial class WorkItem
{
    private readonly WorkItemPool? _pool;
    private int _holds;
    private int _callerDone;
    private bool _reusable;
    private bool _letGo;
    private bool _released;

    /// <summary>Something other than the caller and the owning stage may still reach the item: it is never reused.</summary>
    public void NeverReuse() => Volatile.Write(ref _reusable, false);

    /// <summary>The pipeline let go of the item (the end of <see cref="GatewayPipeline.Retire"/>): its hold is released.</summary>
    internal void PipelineDone()
    {
        if (_pool is { IsClosed: true })
        {
            NeverReuse(); // shutdown's scan of the in-flight table may still cancel it
        }

        Volatile.Write(ref _letGo, true);
        Release();
    }

    private void Release()
    {
        if (Interlocked.Decrement(ref _holds) == 0 && Volatile.Read(ref _reusable))
        {
            _pool?.Return(this);
        }
    }

    /// <summary>Released to the pool: any use from here on is another request's business (<see cref="Live"/>).</summary>
    internal void MarkReleased() => Volatile.Write(ref _released, true);

    /// <summary>
    /// Debug builds (the test suite): fails the process when a reusable item is used after the pipeline let go of it, or
    /// while it is in the pool — a stage touching it then could be touching another request's item. Checked on the
    /// members a stage uses (not on the caller's: it holds the item until it has read its answer), so every path the
    /// tests take is checked for a use after release whether or not the item was reused meanwhile.
    /// </summary>
    [Conditional("DEBUG")]
    private void Live()
    {
        if (Volatile.Read(ref _released) || (Volatile.Read(ref _letGo) && Volatile.Read(ref _reusable)))
        {
            Environment.FailFast($"Work item {Sequence} was used after the pipeline let go of it:{Environment.NewLine}{Environment.StackTrace}");
        }
    }

    /// <summary>Every field back to what a new item has, its references dropped (the pool keeps no request alive).</summary>
    internal void Clear()
    {
        _reusable = false;
        _letGo = false;
        _response.Reset();
        if (!_cts.TryReset())
        {
            _cts.Dispose();
            _cts = null!;
        }

        _callerRegistration = default;
        _attempts = null;
        _completed = 0;
        _cancelReason = 0;
        Request = null!;
        Observer = null;
        Failure = null;
        Group = null!;
        RootGroup = null!;
        Timeout = default;
        Deadline = default;
        StartTimestamp = 0;
        CallerToken = default;
        _stream = null;
        Sequence = 0;
        InlineSuccessContinuation = false;
        _retryTimer = null;

        _fallbackPosition = -1;
        _contextFallbackPosition = -1;
        _current = null;
        _entered = null;
        _sentTo = null;
        _sentAt = 0;
        _sentIndex = 0;
        _hedgeTo = null;
        _hedgeAt = 0;
        _hedgeIndex = 0;
        LastFailure = null;

        Slot = -1;
        GateTenant = null;
        SlotLane = null;
        QueueLane = null;
        Routed = false;
        ResumedFor = null;
        _waitingIn = null;
        TakeBy = long.MaxValue;
        EnqueuedTimestamp = 0;
        Mode = default;
        RateLimitCharge = null;
        DistributedCharge = null;
        _estimatedTokens = -1;
        _promptTokens = -1;
        BudgetReservation = null;
        SharedBudgetReservation = null;
        Flight = null;
        CacheKey = null;
        Stored = null;
        Span = null;
        DeadlineShard = null;
        DeadlineIndex = -1;
        DeadlineDue = 0;

        _holds = 0;
        _callerDone = 0;
    }

    /// <summary>Back from the pool: usable again (<see cref="Initialize"/> follows).</summary>
    internal void Rented() => Volatile.Write(ref _released, false);
}

/// <summary>
/// Work items let go of by both their caller and the pipeline, for the next request (a pipeline's own; bounded: what does
/// not fit is left to the garbage collector). Measured in docs/benchmarks.md (issue 21, twelfth session).
/// </summary>
internal sealed class WorkItemPool(int capacity)
{
    private readonly WorkItem[] _items = new WorkItem[capacity];
    private readonly Lock _lock = new();
    private int _count;
    private volatile bool _closed;

    /// <summary>Items in the pool now (tests).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Items handed out again so far (tests).</summary>
    public long Reused { get; private set; }

    /// <summary>
    /// The pipeline is shutting down: nothing goes back any more (shutdown cancels whatever it finds in flight, from a
    /// list it read without the owners' knowledge).
    /// </summary>
    public void Close() => _closed = true;

    public bool IsClosed => _closed;

    public WorkItem? Rent()
    {
        WorkItem? item = null;
        lock (_lock)
        {
            if (_count > 0)
            {
                item = _items[--_count];
                _items[_count] = null!;
                Reused++;
            }
        }

        item?.Rented();
        return item;
    }

    public void Return(WorkItem item)
    {
        if (_closed)
        {
            return;
        }

        item.Clear();
        item.MarkReleased();
        lock (_lock)
        {
            if (_count < _items.Length)
            {
                _items[_count++] = item;
            }
        }
    }
}
