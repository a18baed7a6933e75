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
/// The expected wait of a newcomer is the number of requests that would be served before it (its place under fair
/// sharing, <see cref="FairQueue{T}.ItemsAhead"/>) plus one, times the provider's service time, divided by its workers.
/// The service time is an exponentially weighted average of how long a worker is occupied per request, raised to the
/// time since the last request finished while every worker is busy (so a provider that stalls is seen to stall before
/// any request completes). Until the first request has finished there is no measurement: one round (as many requests
/// as there are workers) may queue for fail-fast callers, no more; waiting callers are not refused on a guess.
/// Requests-per-minute limits and a 429 pause add their own wait.
/// </para>
/// <para>
/// Workers wait here without a channel: an idle worker parks its own reusable signal, and a newcomer is handed to a
/// parked worker directly (its continuation runs on the thread pool, never on the router's thread).
/// </para>
/// </remarks>
internal sealed class ProviderQueue
{
    private const double Smoothing = 0.2;
    private readonly object _lock = new();
    private readonly FairQueue<WorkItem> _items;
    private readonly Stack<WorkerSignal> _idle = new();
    private readonly Hosting.FairnessOptions _fairness;
    private readonly TimeProvider _time;
    private double _serviceSeconds;
    private long _samples;
    private long _lastDeparture;
    private int _busy;
    private int _count;
    private bool _stopped;

    public ProviderQueue(int capacity, int workers, Hosting.FairnessOptions fairness, TimeProvider time)
    {
        Capacity = capacity;
        Workers = workers;
        _fairness = fairness;
        _time = time;
        _items = new FairQueue<WorkItem>(fairness.BatchShare);
        _lastDeparture = time.GetTimestamp();
    }

    public int Capacity { get; }

    public int Workers { get; }

    /// <summary>Requests waiting (not yet with a worker).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>The measured time a worker is occupied per request (zero before the first one finished).</summary>
    public TimeSpan ServiceTime => TimeSpan.FromSeconds(Volatile.Read(ref _serviceSeconds));

    /// <summary>
    /// Takes the request if its expected wait is at most <paramref name="maxWait"/> and there is room (making room by
    /// pushing out the newest request of a tenant holding far more: <paramref name="pushedOut"/>, for the router to
    /// refuse or, a waiting caller's, to route again).
    /// <paramref name="paused"/> is how long the provider must not be called (a 429's Retry-After);
    /// <paramref name="requestInterval"/> the spacing its requests-per-minute limit imposes.
    /// </summary>
    public QueueOffer Offer(WorkItem item, TimeSpan maxWait, TimeSpan paused, TimeSpan requestInterval, out WorkItem? pushedOut)
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
            var (wait, rateBound) = Expected(ahead, paused, requestInterval);

            // Nothing measured yet and a round already queued: a waiting caller waits (nothing says it won't fit its
            // deadline); a fail-fast caller is refused rather than queued blind.
            var unknown = wait == TimeSpan.MaxValue;
            if (wait > maxWait && !(unknown && item.Mode == SubmitMode.Wait))
            {
                _items.DropIfIdle(lane);
                var floor = TimeSpan.FromSeconds(Math.Max(ServiceSeconds() / Workers, 0.1));
                var retry = unknown ? TimeSpan.FromSeconds(1) : wait - maxWait;
                return new QueueOffer(false, wait, retry > floor ? retry : floor, rateBound);
            }

            if (ahead < 0)
            {
                // A worker is idle and nobody waits: straight to it.
                worker = _idle.Pop();
                item.QueueLane = _items.Start(key, _fairness.WeightOf(key));
                _busy++;
                result = new QueueOffer(true, wait, TimeSpan.Zero, rateBound);
            }
            else
            {
                // The capacity bounds what fail-fast callers may queue. A waiting caller (SubmitMode.Wait) waits here even
                // past it — its wait is this queue's, fair like any other, and bounded by the in-flight slots it holds.
                if (_count >= Capacity && item.Mode == SubmitMode.FailFast)
                {
                    if (!_items.TryPushOut(lane, out var victim))
                    {
                        _items.DropIfIdle(lane);
                        return new QueueOffer(false, wait, TimeSpan.FromSeconds(Math.Max(ServiceSeconds() / Workers, 0.1)), rateBound);
                    }

                    _count--;
                    pushedOut = victim;
                }

                item.EnqueuedTimestamp = _time.GetTimestamp();
                _items.Enqueue(lane, item.Priority, item);
                _count++;
                result = new QueueOffer(true, wait, TimeSpan.Zero, rateBound);
            }
        }

        worker?.Hand(item);
        return result;
    }

    /// <summary>A worker's next request: at once if one waits, else when one arrives; null when the queue stopped.</summary>
    public ValueTask<WorkItem?> NextAsync(WorkerSignal worker)
    {
        lock (_lock)
        {
            if (_items.TryDequeue(out var item, out var lane))
            {
                item.QueueLane = lane;
                _count--;
                _busy++;
                return new ValueTask<WorkItem?>(item);
            }

            if (_stopped)
            {
                return new ValueTask<WorkItem?>((WorkItem?)null);
            }

            _idle.Push(worker);
            return worker.Wait();
        }
    }

    /// <summary>A worker finished with a request; <paramref name="service"/> is how long it took (null: no attempt was made).</summary>
    public void Done(WorkItem item, TimeSpan? service)
    {
        lock (_lock)
        {
            _busy--;
            if (item.QueueLane is { } lane)
            {
                item.QueueLane = null;
                _items.Finish(lane);
            }

            if (service is { } s)
            {
                var seconds = s.TotalSeconds;
                _serviceSeconds = _samples++ == 0 ? seconds : _serviceSeconds + (Smoothing * (seconds - _serviceSeconds));
                _lastDeparture = _time.GetTimestamp();
            }
        }
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
            _count = 0;
        }

        foreach (var w in idle)
        {
            w.Hand(null);
        }

        return left;
    }

    /// <summary>The expected wait of the current newcomer, for metrics (zero when a worker is idle).</summary>
    public TimeSpan ExpectedWait(TimeSpan paused, TimeSpan requestInterval)
    {
        lock (_lock)
        {
            var ahead = _items.Count == 0 && _idle.Count > 0 ? -1 : _items.Count;
            var (wait, _) = Expected(ahead, paused, requestInterval);
            return wait == TimeSpan.MaxValue ? TimeSpan.Zero : wait;
        }
    }

    private double ServiceSeconds()
    {
        // While every worker is busy, the time since the last one finished is a floor on the service time: a provider
        // that stalls shows it before anything completes.
        var since = _busy >= Workers ? _time.GetElapsedTime(_lastDeparture).TotalSeconds : 0;
        return Math.Max(_serviceSeconds, since);
    }

    /// <summary>How long a newcomer with <paramref name="ahead"/> requests before it would wait (-1: a worker is idle).</summary>
    private (TimeSpan Wait, bool RateBound) Expected(double ahead, TimeSpan paused, TimeSpan requestInterval)
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
            // Nothing measured yet: one round may queue.
            seconds = ahead < Workers ? 0 : double.PositiveInfinity;
        }
        else
        {
            seconds = positions * ServiceSeconds() / Workers;
        }

        var service = double.IsPositiveInfinity(seconds) ? TimeSpan.MaxValue : TimeSpan.FromSeconds(seconds);
        return rate > service ? (rate, rate > TimeSpan.Zero) : (service, false);
    }
}

/// <summary>The answer to an offer: taken, or refused with the expected wait and when to come back.</summary>
internal readonly record struct QueueOffer(bool Accepted, TimeSpan ExpectedWait, TimeSpan RetryAfter, bool RateLimited)
{
    public static QueueOffer Stopped => new(false, TimeSpan.MaxValue, TimeSpan.FromSeconds(1), false);
}

/// <summary>A worker's reusable wake-up: parked while idle, handed its next request (or null to stop).</summary>
internal sealed class WorkerSignal : IValueTaskSource<WorkItem?>
{
    private ManualResetValueTaskSourceCore<WorkItem?> _core = new() { RunContinuationsAsynchronously = true };

    public ValueTask<WorkItem?> Wait()
    {
        _core.Reset();
        return new ValueTask<WorkItem?>(this, _core.Version);
    }

    public void Hand(WorkItem? item) => _core.SetResult(item);

    WorkItem? IValueTaskSource<WorkItem?>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<WorkItem?>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<WorkItem?>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
