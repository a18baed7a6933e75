using System.Threading.Tasks.Sources;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Dispatch;

/// <summary>
/// One provider's waiting room: a bounded queue, drained by the provider's workers fairly between tenants (and
/// interactive before batch), that knows how long a newcomer would wait. The router <see cref="Offer"/>s a request and
/// gets an answer at once — taken, or refused with the expected wait — so the router never waits on a provider.
/// </summary>
/// <remarks>
/// <para>
/// The expected wait of a newcomer is the number of worker rounds before a worker takes it — the requests served before
/// it (its place under fair sharing, <see cref="FairQueue{T}.ItemsAhead"/>) plus one, divided by the workers, rounded
/// up — times the provider's service time.
/// The service time is an exponentially weighted average of how long an attempt holds a concurrency permit, raised to
/// the time since a permit was last given back while all are held (so a provider that stalls is seen to stall before
/// any request completes); while the queue stays backlogged, the measured time between two takes is used when it is
/// longer (it counts whatever the service time leaves out). Until the first request has finished there is no
/// measurement: requests are taken up to the capacity (a burst at start is not refused on a guess), and when the first
/// measurement comes, those it shows cannot be taken within their allowed wait are refused then.
/// Requests-per-minute limits and a 429 pause add their own wait.
/// </para>
/// <para>
/// Workers wait here without a channel: an idle worker parks its own reusable signal, and a newcomer is handed to a
/// parked worker directly (its continuation runs on the thread pool, never on the router's thread).
/// </para>
/// </remarks>
internal sealed class ProviderQueue : IWaitingRoom
{
    private const double Smoothing = 0.2;
    private readonly object _lock = new();
    private readonly FairQueue<WorkItem> _items;
    private readonly FairQueue<WorkItem> _overflow;
    private readonly Stack<WorkerSignal> _idle = new();
    private TaskCompletionSource? _room;
    private readonly Hosting.FairnessOptions _fairness;
    private readonly TimeProvider _time;
    private double _serviceSeconds;
    private long _samples;
    private readonly Metrics.LatencyHistogram _waits = new();
    private long _maxWaitTicks;
    private readonly long[] _takes;
    private int _takeCount;
    private int _takeNext;
    private bool _backlogged;
    private int _count;
    private bool _stopped;

    public ProviderQueue(int capacity, int workers, Hosting.FairnessOptions fairness, TimeProvider time)
    {
        Capacity = capacity;
        Workers = workers;
        _fairness = fairness;
        _time = time;
        _items = new FairQueue<WorkItem>(fairness.BatchShare);
        _takes = new long[Math.Max(16, 2 * workers)];
        _overflow = new FairQueue<WorkItem>(fairness.BatchShare);
    }

    public int Capacity { get; }

    public int Workers { get; }

    /// <summary>Requests waiting (not yet with a worker).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Workers parked with nothing to do.</summary>
    public int IdleWorkers
    {
        get
        {
            lock (_lock)
            {
                return _idle.Count;
            }
        }
    }

    /// <summary>Waiting callers' requests parked until the queue has room (they hold no in-flight slot meanwhile).</summary>
    public int Parked
    {
        get
        {
            lock (_lock)
            {
                return _overflow.Count;
            }
        }
    }

    /// <summary>True while the queue is full or requests are parked for it: a waiting caller should wait at the door.</summary>
    public bool IsSaturated
    {
        get
        {
            lock (_lock)
            {
                return _count >= Capacity || _overflow.Count > 0;
            }
        }
    }

    /// <summary>Completes when the queue stops being saturated (the door's waiting callers then look again).</summary>
    public Task RoomAsync()
    {
        lock (_lock)
        {
            if (_count < Capacity && _overflow.Count == 0)
            {
                return Task.CompletedTask;
            }

            return (_room ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
    }

    /// <summary>
    /// Parks a waiting caller's request that found the queue full: it waits here, fairly by tenant, without an
    /// in-flight slot, and goes back to the router when the queue has room (<see cref="NextAsync"/> hands it out).
    /// False when the queue has room again (offer it again) or stopped.
    /// </summary>
    public bool Park(WorkItem item)
    {
        var key = item.TenantKey;
        lock (_lock)
        {
            if (_stopped || _count < Capacity)
            {
                return false;
            }

            _overflow.Enqueue(_overflow.LaneFor(key, _fairness.WeightOf(key)), item.Priority, item);
            item.WaitingIn = this;
            item.NeverReuse(); // parked: resumed by whichever worker frees room, maybe after it ended
            return true;
        }
    }

    public bool IsStopped
    {
        get
        {
            lock (_lock)
            {
                return _stopped;
            }
        }
    }

    /// <summary>
    /// A request unparked for room here went elsewhere (or ended): the room is still free, so the next parked request
    /// is unparked instead (returned, for the caller to send back to the router). Null when none waits or there is no room.
    /// </summary>
    public WorkItem? UnparkNext()
    {
        lock (_lock)
        {
            if (_count < Capacity && _overflow.TryDequeue(out var parked, out var lane))
            {
                _overflow.Finish(lane);
                parked.WaitingIn = null;
                SignalRoom();
                return parked;
            }

            return null;
        }
    }

    /// <summary>Takes a request that ended while it waited out of the queue or the parked room.</summary>
    public bool TryRemove(WorkItem item)
    {
        lock (_lock)
        {
            if (!ReferenceEquals(item.WaitingIn, this))
            {
                return false;
            }

            if (_items.Remove(item))
            {
                _count--;
            }
            else if (!_overflow.Remove(item))
            {
                return false;
            }

            item.WaitingIn = null;
            SignalRoom();
            return true;
        }
    }

    /// <summary>The measured time a worker is occupied per request (zero before the first one finished).</summary>
    public TimeSpan ServiceTime => TimeSpan.FromSeconds(Volatile.Read(ref _serviceSeconds));

    /// <summary>
    /// Takes the request if its expected wait is at most <paramref name="maxWait"/> and there is room (making room by
    /// pushing out the newest request of a tenant holding far more: <paramref name="pushedOut"/>, for the router to
    /// refuse or, a waiting caller's, to route again).
    /// <paramref name="paused"/> is how long the provider must not be called (a 429's Retry-After);
    /// <paramref name="requestInterval"/> the spacing its requests-per-minute limit imposes; <paramref name="stalled"/>
    /// how long every concurrency permit has been held with none given back (a floor on the service time).
    /// </summary>
    public QueueOffer Offer(WorkItem item, TimeSpan maxWait, TimeSpan paused, TimeSpan requestInterval, TimeSpan stalled, out WorkItem? pushedOut)
    {
        pushedOut = null;
        WorkerSignal? worker = null;
        QueueOffer result;
        var key = item.TenantKey;
        lock (_lock)
        {
            if (_stopped)
            {
                return QueueOffer.Stopped;
            }

            var lane = _items.LaneFor(key, _fairness.WeightOf(key));
            var ahead = _items.Count == 0 && _idle.Count > 0 ? -1 : _items.ItemsAhead(lane, item.Priority);

            // (LaneFor made this tenant's lane: any other lane is another tenant's, with work here.)
            var (wait, rateBound) = Expected(ahead, paused, requestInterval, stalled, othersActive: _items.LaneCount > 1);

            // Nothing measured yet and a round already queued: a waiting caller waits (nothing says it won't fit its
            // deadline); a fail-fast caller is refused rather than queued blind.
            if (wait > maxWait)
            {
                _items.DropIfIdle(lane);
                var floor = TimeSpan.FromSeconds(Math.Max(ServiceSeconds(stalled) / Workers, 0.1));
                var retry = wait - maxWait;
                return new QueueOffer(false, wait, retry > floor ? retry : floor, rateBound);
            }

            if (ahead < 0)
            {
                // A worker is idle and nobody waits: straight to it.
                worker = _idle.Pop();
                item.QueueLane = _items.Start(key, _fairness.WeightOf(key));
                result = new QueueOffer(true, wait, TimeSpan.Zero, rateBound);
            }
            else
            {
                if (_count >= Capacity)
                {
                    if (!_items.TryPushOut(lane, out var victim))
                    {
                        _items.DropIfIdle(lane);
                        return new QueueOffer(false, wait, TimeSpan.FromSeconds(Math.Max(ServiceSeconds(stalled) / Workers, 0.1)), rateBound) { Full = true };
                    }

                    _count--;
                    victim.WaitingIn = null;
                    pushedOut = victim;
                }

                item.EnqueuedTimestamp = _time.GetTimestamp();
                item.TakeBy = maxWait == TimeSpan.MaxValue || maxWait > TimeSpan.FromDays(365) ? long.MaxValue : item.EnqueuedTimestamp + (long)(maxWait.TotalSeconds * _time.TimestampFrequency);
                _items.Enqueue(lane, item.Priority, item);
                item.WaitingIn = this;
                _count++;
                result = new QueueOffer(true, wait, TimeSpan.Zero, rateBound);
            }
        }

        worker?.Hand(item);
        return result;
    }

    /// <summary>
    /// A worker's next request: at once if one waits, else when one arrives; null when the queue stopped. A request
    /// parked for the room just freed is handed out in <paramref name="unparked"/>, for the worker to send back to the
    /// router (outside this lock).
    /// </summary>
    public ValueTask<WorkItem?> NextAsync(WorkerSignal worker, out WorkItem? unparked)
    {
        unparked = null;
        lock (_lock)
        {
            // Whenever a worker looks for work and the queue has room, one parked request goes back to the router for it
            // (however the room came about: this dequeue, or a queue that drained through direct hand-offs).
            if (_count - (_items.Count > 0 ? 1 : 0) < Capacity && _overflow.TryDequeue(out var parked, out var parkedLane))
            {
                _overflow.Finish(parkedLane);
                parked.WaitingIn = null;
                unparked = parked;
            }

            if (_items.TryDequeue(out var item, out var lane))
            {
                item.WaitingIn = null;
                item.QueueLane = lane;
                var now = _time.GetTimestamp(); // one clock read for both (a read is ~20 ns; see docs/benchmarks.md)
                RecordWait(item, now);
                MeasureDrain(now);
                _count--;
                SignalRoom();
                return new ValueTask<WorkItem?>(item);
            }

            SignalRoom();
            if (_stopped)
            {
                return new ValueTask<WorkItem?>((WorkItem?)null);
            }

            _idle.Push(worker);
            return worker.Wait();
        }
    }

    /// <summary>The lane a worker's request holds here, taken off the request (the worker hands it to <see cref="Done"/>).</summary>
    public static FairQueue<WorkItem>.Lane? TakeLane(WorkItem item)
    {
        var lane = item.QueueLane;
        item.QueueLane = null;
        return lane;
    }

    /// <summary>
    /// A worker finished with a request; <paramref name="service"/> is how long it took (null: no attempt was made).
    /// Returns the requests that must be refused now: when the first measurement arrives, those taken in blind (before
    /// anything was known) that it shows cannot be taken within their allowed wait.
    /// </summary>
    /// <param name="lane">The request's lane here, taken off it when the worker took it (<see cref="TakeLane"/>): by now
    /// the request may be another stage's, or another request's.</param>
    public List<WorkItem>? Done(FairQueue<WorkItem>.Lane? lane, TimeSpan? service)
    {
        lock (_lock)
        {
            if (lane is not null)
            {
                _items.Finish(lane);
            }

            if (service is { } s)
            {
                var seconds = s.TotalSeconds;
                _serviceSeconds = _samples++ == 0 ? seconds : _serviceSeconds + (Smoothing * (seconds - _serviceSeconds));
                if (_samples == 1)
                {
                    return RefuseWhatCannotBeTakenInTime();
                }
            }

            return null;
        }
    }

    /// <summary>
    /// Until the first request finishes, nothing is known of the service time and the queue takes requests up to its
    /// capacity (a burst at start is not refused on a guess). The first measurement tells when each of those will be
    /// taken (in arrival order, a round of the workers per service time): the ones that would wait past their allowed
    /// wait are taken out, to be refused with a Retry-After now rather than kept past the wait they were promised.
    /// </summary>
    private List<WorkItem>? RefuseWhatCannotBeTakenInTime()
    {
        if (_items.Count == 0)
        {
            return null;
        }

        var now = _time.GetTimestamp();
        var queued = _items.Snapshot();
        queued.Sort(static (a, b) => a.EnqueuedTimestamp.CompareTo(b.EnqueuedTimestamp));
        List<WorkItem>? refused = null;
        for (var i = 0; i < queued.Count; i++)
        {
            var takenIn = Math.Ceiling((i + 1.0) / Workers) * _serviceSeconds;
            var item = queued[i];
            if (item.TakeBy != long.MaxValue && now + (long)(takenIn * _time.TimestampFrequency) > item.TakeBy && _items.Remove(item))
            {
                item.WaitingIn = null;
                _count--;
                (refused ??= []).Add(item);
            }
        }

        SignalRoom();
        return refused;
    }

    /// <summary>Stops the queue: parked workers are released, and what still waits is returned to be answered.</summary>
    public List<WorkItem> Stop()
    {
        List<WorkerSignal> idle;
        List<WorkItem> left;
        lock (_lock)
        {
            _stopped = true;
            idle = [.. _idle];
            _idle.Clear();
            left = _items.Clear();
            left.AddRange(_overflow.Clear());
            foreach (var item in left)
            {
                item.WaitingIn = null;
            }

            _count = 0;
            SignalRoom();
        }

        foreach (var w in idle)
        {
            w.Hand(null);
        }

        return left;
    }

    /// <summary>The expected wait of the current newcomer, for metrics (zero when a worker is idle).</summary>
    public TimeSpan ExpectedWait(TimeSpan paused, TimeSpan requestInterval, TimeSpan stalled)
    {
        lock (_lock)
        {
            var ahead = _items.Count == 0 && _idle.Count > 0 ? -1 : _items.Count;
            var (wait, _) = Expected(ahead, paused, requestInterval, stalled);
            return wait == TimeSpan.MaxValue ? TimeSpan.Zero : wait;
        }
    }

    /// <summary>How long requests waited in this queue before a worker took them (the queue's own histogram).</summary>
    public (double P50Ms, double P99Ms, double MaxMs) Waits => (_waits.PercentileMs(0.5), _waits.PercentileMs(0.99), TimeSpan.FromTicks(Volatile.Read(ref _maxWaitTicks)).TotalMilliseconds);

    private void RecordWait(WorkItem item, long now)
    {
        var waited = _time.GetElapsedTime(item.EnqueuedTimestamp, now);
        _waits.Record(waited);
        if (waited.Ticks > _maxWaitTicks)
        {
            Volatile.Write(ref _maxWaitTicks, waited.Ticks);
        }
    }

    // While the queue stays backlogged, the takes of the last two rounds (2 x workers) tell how fast it really drains —
    // workers, CPU, the provider's pace and all; the estimate never assumes faster than that. (Averaged over rounds, not
    // between consecutive takes: workers that started together finish together, in waves.)
    private void MeasureDrain(long now)
    {
        if (!_backlogged)
        {
            _takeCount = 0; // a new backlog: measure it afresh
        }

        _takes[_takeNext] = now;
        _takeNext = (_takeNext + 1) % _takes.Length;
        _takeCount = Math.Min(_takeCount + 1, _takes.Length);
        _backlogged = _count > 1; // something is still waiting after this take
    }

    /// <summary>The average time between takes over the measured window (zero until a full window was seen).</summary>
    private double TakeInterval()
    {
        if (!_backlogged || _takeCount < _takes.Length)
        {
            return 0;
        }

        var newest = _takes[(_takeNext - 1 + _takes.Length) % _takes.Length];
        var oldest = _takes[_takeNext];
        return _time.GetElapsedTime(oldest, newest).TotalSeconds / (_takes.Length - 1);
    }

    private void SignalRoom()
    {
        if (_room is { } room && _count < Capacity && _overflow.Count == 0)
        {
            _room = null;
            room.TrySetResult();
        }
    }

    // While every concurrency permit is held (attempts running upstream, not waiting for a rate limit), the time since
    // one was last given back is a floor on the service time: a provider that stalls shows it before anything completes.
    private double ServiceSeconds(TimeSpan stalled) => Math.Max(_serviceSeconds, stalled.TotalSeconds);

    /// <summary>How long a newcomer with <paramref name="ahead"/> requests before it would wait (-1: a worker is idle).</summary>
    private (TimeSpan Wait, bool RateBound) Expected(double ahead, TimeSpan paused, TimeSpan requestInterval, TimeSpan stalled, bool othersActive = false)
    {
        var positions = Math.Max(ahead + 1, 0);
        var rate = paused + (requestInterval * positions);
        double seconds;
        if (ahead < 0)
        {
            seconds = 0;
        }
        else if (_samples == 0)
        {
            // Nothing measured yet: taken up to the capacity, and corrected at the first measurement (Done).
            seconds = 0;
        }
        else
        {
            // Rounds of the workers, each a service time (whole rounds: the workers ahead may all have started just now),
            // or the measured pace of takes while the queue was backlogged, whichever is longer. While other tenants have
            // work here, fair sharing may put their later requests ahead of this one: one more round is counted for that.
            var rounds = Math.Ceiling(positions / Workers) + (othersActive && ahead > 0 ? 1 : 0);
            seconds = Math.Max(rounds * ServiceSeconds(stalled), positions * TakeInterval());
        }

        var service = double.IsPositiveInfinity(seconds) ? TimeSpan.MaxValue : TimeSpan.FromSeconds(seconds);
        return rate > service ? (rate, rate > TimeSpan.Zero) : (service, false);
    }
}

/// <summary>The answer to an offer: taken, or refused with the expected wait and when to come back.</summary>
internal readonly record struct QueueOffer(bool Accepted, TimeSpan ExpectedWait, TimeSpan RetryAfter, bool RateLimited)
{
    /// <summary>Refused because the queue holds its capacity (not for the expected wait).</summary>
    public bool Full { get; init; }

    public static QueueOffer Stopped => new(false, TimeSpan.MaxValue, TimeSpan.FromSeconds(1), false);
}

/// <summary>
/// A worker's reusable wake-up: parked while idle, handed its next request (or null to stop).
/// <para>
/// A handed worker resumes on the thread pool — one thread-pool hop per request — except on a thread the HTTP front door
/// lends (<see cref="Lend"/>): there the hand-off is kept until the submit has passed every stage (so no stage's
/// single-owner flag is held meanwhile), then the worker resumes on that thread and runs its attempt up to the
/// upstream's answer, as a plain proxy's request thread sends upstream itself. A worker that finishes an attempt while
/// still on a lent thread yields before taking another request (<see cref="OnLentThread"/>), so the front door's
/// thread is back after at most one attempt even with a provider that answers synchronously.
/// </para>
/// </summary>
internal sealed class WorkerSignal : IValueTaskSource<WorkItem?>
{
    [ThreadStatic]
    private static Loan? t_loan; // one per thread that ever lent, reused

    private ManualResetValueTaskSourceCore<WorkItem?> _core = new() { RunContinuationsAsynchronously = true };

    public ValueTask<WorkItem?> Wait()
    {
        _core.Reset();
        return new ValueTask<WorkItem?>(this, _core.Version);
    }

    /// <summary>True while a worker runs on a thread lent to it (see the class remarks).</summary>
    public static bool OnLentThread => t_loan is { Running: true };

    public void Hand(WorkItem? item)
    {
        if (item is not null && t_loan is { Open: true, Signal: null } loan)
        {
            loan.Signal = this; // resumed by EndLoan, when the lending submit is done with the stages
            loan.Item = item;
            return;
        }

        _core.RunContinuationsAsynchronously = true;
        _core.SetResult(item);
    }

    /// <summary>
    /// Lends the calling thread (the front door's, inside a submit) to at most one worker handed a request until
    /// <see cref="EndLoan"/>; false (and nothing to end) when this thread is already lent or running a worker.
    /// </summary>
    public static bool Lend()
    {
        var loan = t_loan ??= new Loan();
        if (loan.Open || loan.Running)
        {
            return false;
        }

        loan.Open = true;
        return true;
    }

    /// <summary>Ends this thread's loan: the worker handed a request meanwhile, if any, resumes here and now.</summary>
    public static void EndLoan()
    {
        var loan = t_loan!;
        loan.Open = false;
        if (loan.Signal is not { } signal)
        {
            return;
        }

        var item = loan.Item;
        loan.Signal = null;
        loan.Item = null;
        loan.Running = true;
        try
        {
            signal._core.RunContinuationsAsynchronously = false;
            signal._core.SetResult(item);
        }
        finally
        {
            loan.Running = false;
        }
    }

    private sealed class Loan
    {
        public bool Open;
        public bool Running;
        public WorkerSignal? Signal;
        public WorkItem? Item;
    }

    WorkItem? IValueTaskSource<WorkItem?>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<WorkItem?>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<WorkItem?>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
