using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Caching;
using PipelineGateway.Dispatch;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;

namespace PipelineGateway.Pipeline;

/// <summary>
/// A work item's life past the door: the in-flight slots (handed out fairly), forwarding a request that got one, letting
/// go of it (<see cref="Retire"/>), settlement when it ends (each folder's <see cref="ICompletionListener"/>, in order)
/// and the drain. Stages call it to let go of what they hold; it holds no other stage's services.
/// </summary>
internal sealed partial class GatewayPipeline
{
    private readonly InFlightSlots _slots;
    private readonly WorkItem?[] _live;
    private readonly ILogger _logger;
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly PipelineOptions _options;
    private readonly PipelineChannels _channels;
    private readonly ProviderPools _pools;
    private readonly GatewayMetrics _metrics;
    private readonly Admission.AdmissionRateLimiter _limiter;
    private readonly Admission.AdmissionGate _gate;
    private readonly TimeProvider _time;
    private readonly Cost.PricingTable _pricing;
    private readonly ICompletionListener[] _listeners;
    private long _outstanding;
    private volatile bool _draining;
    private readonly object _drainLock = new();
    private Task? _drain;
    private volatile bool _failingRemaining;
    private volatile bool _started;

    public GatewayPipeline(
        IOptions<GatewayOptions> options,
        PipelineChannels channels,
        ProviderPools pools,
        GatewayMetrics metrics,
        Admission.AdmissionRateLimiter limiter,
        Admission.AdmissionGate gate,
        Cost.BudgetTracker budgets,
        RequestLog.RequestLogWriter requestLog,
        Tracing.GatewayTracing tracing,
        Cost.PricingTable pricing,
        TimeProvider time,
        ILogger<GatewayPipeline> logger)
    {
        _pricing = pricing;
        _options = options.Value.Pipeline;
        _channels = channels;
        _pools = pools;
        _metrics = metrics;
        _limiter = limiter;
        _gate = gate;
        _time = time;
        _logger = logger;
        Flights = new Flights(this, time);
        Deadlines = new Deadlines(time);
        Items = _options.ReuseWorkItems ? new WorkItemPool(Math.Clamp(_options.MaxInFlight, 16, 1024)) : null;

        // Ending a request, folder by folder (ICompletionListener): waiters on the same call, the budget, the token
        // limits, the metrics (which see every other folder's settlement done), then the request log and the trace
        // span (which only record what happened).
        _listeners = [Flights, budgets, limiter, metrics, requestLog, tracing];
        MaxInFlight = channels.MaxInFlight;
        _slots = new InFlightSlots(MaxInFlight, options.Value.Fairness);
        _live = new WorkItem?[MaxInFlight];

        // A provider holds at most its queue and its workers in slots; if that is every slot, one that stops answering
        // would leave none for the others.
        foreach (var pool in pools.All)
        {
            if (pool.QueueCapacity + pool.Workers >= MaxInFlight)
            {
                LogProviderCanHoldEverySlot(_logger, pool.Name, pool.QueueCapacity, pool.Workers, MaxInFlight);
            }
        }
    }

    /// <summary>The in-flight slots, handed out fairly between tenants.</summary>
    internal InFlightSlots Slots => _slots;

    /// <summary>Identical requests in flight sharing one upstream call (Caching's, settled here as a listener).</summary>
    public Flights Flights { get; }

    /// <summary>Every request's deadline, on a few timers instead of one per request.</summary>
    public Deadlines Deadlines { get; }

    /// <summary>Work items for reuse (<see cref="WorkItemPool"/>); none when <c>Pipeline:ReuseWorkItems</c> is off.</summary>
    public WorkItemPool? Items { get; }

    public int MaxInFlight { get; }

    public bool IsAccepting => _started && !_draining;

    public bool IsFailingRemaining => _failingRemaining;

    /// <summary>Items created and not yet let go of (queued, in flight, or in a backoff).</summary>
    public long Outstanding => Interlocked.Read(ref _outstanding);

    /// <summary>Requests holding an in-flight slot.</summary>
    public int InFlight => _slots.InUse;

    internal void MarkStarted() => _started = true;

    /// <summary>Depth of each stage's channel, for metrics and tests.</summary>
    public QueueDepths GetQueueDepths()
    {
        var pools = _pools.All;
        var perProvider = new Dictionary<string, int>(pools.Count, StringComparer.Ordinal);
        foreach (var pool in pools)
        {
            perProvider[pool.Name] = pool.QueueDepth;
        }

        return new QueueDepths(_channels.Admission.Reader.Count, _channels.CacheLookup.Reader.Count, _channels.Routing.Reader.Count, _channels.DeadLetter.Reader.Count, InFlight, perProvider);
    }

    public void OnCreated(WorkItem item)
    {
        Interlocked.Increment(ref _outstanding);
        _metrics.OnSubmitted();
        item.Observer = this;
    }

    /// <summary>
    /// Admission let the request through: it takes an in-flight slot and goes on to the cache stage, or waits for a
    /// slot (handed to it by <see cref="Retire"/> of another request). Never waits itself.
    /// </summary>
    public void Admit(WorkItem item)
    {
        if (_slots.TryTake(item, out var slot))
        {
            Forward(item, slot);
        }
    }

    private void Forward(WorkItem item, int slot)
    {
        item.Slot = slot;
        Volatile.Write(ref _live[slot], item);
        LeaveGate(item);
        if (item.IsCompleted)
        {
            Retire(item);
        }
        else if (!Next(item).TryWrite(item))
        {
            // Cannot happen while the capacity argument holds (the channel holds MaxInFlight); never lose it.
            FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    /// <summary>Where a request goes when it gets a slot: the cache stage, or straight back to the router once it was routed.</summary>
    private ChannelWriter<WorkItem> Next(WorkItem item) => item.Routed ? _channels.Routing.Writer : _channels.CacheLookup.Writer;

    /// <summary>
    /// A waiting caller's request parked at a full provider queue gives its slot back, so a stuck provider never holds
    /// more slots than its queue and workers; the next request waiting for a slot takes it.
    /// </summary>
    public void ReleaseSlot(WorkItem item)
    {
        var slot = item.Slot;
        item.Slot = -1;
        Volatile.Write(ref _live[slot], null);
        PassOn(item, slot, retiring: false);
    }

    /// <summary>
    /// A parked request's provider has room (<paramref name="roomAt"/>, null: not a provider's room): it takes a slot
    /// again (fairly) and goes back to the router. If it does not take that room after all (it ends, or goes to another
    /// deployment), the room is passed on to the next request parked there.
    /// </summary>
    public void Resume(WorkItem item, Dispatch.ProviderWorkerPool? roomAt)
    {
        item.ResumedFor = roomAt;
        if (item.IsCompleted)
        {
            Retire(item);
            return;
        }

        Admit(item);
    }

    private void LeaveGate(WorkItem item)
    {
        if (item.GateTenant is { } tenant)
        {
            item.GateTenant = null;
            _gate.Leave(tenant);
        }
    }

    /// <summary>
    /// The owning stage lets go of the item for good: the slot is returned. The caller of this must not touch the item
    /// afterwards: it may already be another request's (<see cref="WorkItemPool"/>).
    /// </summary>
    public void Retire(WorkItem item) => PassOn(item, LetGo(item), retiring: true);

    /// <summary>
    /// A freed slot goes to the next request waiting for one; one that ended while it waited is retired in turn and
    /// passes the slot on (a loop, not recursion: a run of cancelled waiters cannot deepen the stack). A retiring item's
    /// hold is released once the slot is passed on (the last use of it here).
    /// </summary>
    private void PassOn(WorkItem item, int slot, bool retiring)
    {
        while (true)
        {
            var granted = -1;
            var next = slot >= 0 ? _slots.Release(item, slot, out granted) : null;
            if (retiring)
            {
                item.PipelineDone();
            }

            if (next is null)
            {
                return;
            }

            next.Slot = granted;
            Volatile.Write(ref _live[granted], next);
            LeaveGate(next);
            if (!next.IsCompleted && Next(next).TryWrite(next))
            {
                return;
            }

            // Ended while it waited; or (cannot happen while the capacity argument holds) no room: never lose it.
            next.TryFail(new GatewayUnavailableException("The gateway is shutting down."));
            item = next;
            retiring = true;
            slot = LetGo(next);
        }
    }

    /// <summary>Answers the caller if nobody did, leaves the waiting room, frees the item; returns the slot it held.</summary>
    private int LetGo(WorkItem item)
    {
        if (item.ResumedFor is { } room)
        {
            item.ResumedFor = null;
            room.PassRoomOn(); // it was unparked for room there and ended before taking it
        }

        if (!item.IsCompleted)
        {
            if (item.Token.IsCancellationRequested)
            {
                // Cancelled, and not answered yet (WorkItem.Cancel fires the token first): answer with the cancellation.
                item.TryFail(item.CancellationError());
            }
            else
            {
                // A stage must answer the caller before letting go; if one did not, the caller must not hang.
                LogRetiredIncomplete(_logger, item.RequestId);
                item.TryFail(new GatewayUnavailableException("The request was dropped by the pipeline without an answer."));
            }
        }

        LeaveGate(item);
        var slot = item.Slot;
        item.Slot = -1;
        if (slot >= 0)
        {
            Volatile.Write(ref _live[slot], null);
        }

        item.DisposeResources();
        if (Interlocked.Decrement(ref _outstanding) == 0 && _draining)
        {
            _drained.TrySetResult();
        }

        return slot;
    }

    /// <summary>Sends a failed item back to the router. Never waits: the router channel holds MaxInFlight items.</summary>
    public void Requeue(WorkItem item)
    {
        if (item.IsCompleted)
        {
            Retire(item);
        }
        else if (!_channels.Routing.Writer.TryWrite(item))
        {
            FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    private void LetGoWaiting(WorkItem item)
    {
        if (item.Current is { } deployment && item.ReleaseDeployment())
        {
            // It waited in a provider's queue: it leaves the deployment's load, and any half-open probe it held.
            deployment.State.OnNeutral();
        }

        Retire(item);
    }

    /// <summary>
    /// A stream that ends in failure after its content reached the caller — the caller went away (a client that reads the
    /// answer and disconnects before its last event, say), its deadline passed, the upstream broke — was generated upstream
    /// and is billed by the provider: its usage is billed here too, so budgets, token limits, metrics and the request log
    /// see it (a tenant could otherwise read whole answers for nothing). The upstream's usage when it came, else the
    /// gateway's estimate (the prompt, and the events' text at about four characters a token, one at least per event
    /// that carried content), marked as one. A whole request given up
    /// on (its caller gone, its deadline passed, the gateway stopping) while its upstream call was in flight is billed its
    /// prompt, estimated: the upstream has read it, and most finish and bill a whole answer whoever waits for it — a
    /// tenant must not get answers generated for nothing by cancelling just before they come (a lower bound: the
    /// completion is not known). A hedged attempt with both legs in flight is billed both prompts, each at its deployment.
    /// </summary>
    private ConsumedUpstream? Consumed(WorkItem item)
    {
        if (item.StreamAnswering is { } deployment)
        {
            var usage = item.StreamUsage ?? Admission.TokenCounter.EstimateUsage(item.Request, null, item.StreamOutputEstimate, deployment.Model, item.PromptTokensIfCounted);
            return new ConsumedUpstream(deployment, usage, _pricing.Cost(deployment, usage));
        }

        if (!item.IsStream && item.InFlightTo is { } sent)
        {
            var prompt = Admission.TokenCounter.EstimateUsage(item.Request, null, 0, sent.Model, item.PromptTokensIfCounted);
            var hedge = item.HedgeInFlightTo is { } leg ? Admission.TokenCounter.EstimateUsage(item.Request, null, 0, leg.Model, item.PromptTokensIfCounted) : null;
            return new ConsumedUpstream(sent, prompt, _pricing.Cost(sent, prompt))
            {
                Hedge = hedge is null ? null : new ConsumedUpstream(item.HedgeInFlightTo!, hedge, _pricing.Cost(item.HedgeInFlightTo!, hedge)),
            };
        }

        return null;
    }

    /// <summary>Answers the caller with a failure and retires the item.</summary>
    public void FailAndRetire(WorkItem item, Exception error)
    {
        item.TryFail(error);
        Retire(item);
    }

    /// <summary>Called exactly once per item, by whichever thread completed it.</summary>
    internal void OnCompleted(WorkItem item, ChatCompletionResponse? response, Exception? error)
    {
        if (item.WaitingIn is { } room && room.TryRemove(item))
        {
            // Ended while it waited (its deadline, its caller): taken out of the waiting room at once, and let go of
            // here — off this thread, which may be inside the item's own cancellation (WorkItem.Cancel).
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Pipeline.LetGoWaiting(s.Item), (Pipeline: this, Item: item), preferLocal: false);
        }

        // An answer built for this very request (ResponseInfo, just before completing it) already carries its latency:
        // the same figure then reaches the caller, the metrics and the log, for one clock read fewer.
        var latency = response?.Gateway is { } info && info.RequestSequence == item.Sequence ? info.Latency : _time.GetElapsedTime(item.StartTimestamp);
        var completion = new Completion(item, response, error, latency) { Consumed = error is null ? null : Consumed(item) };
        foreach (var listener in _listeners)
        {
            try
            {
                listener.OnCompleted(completion);
            }
            catch (Exception ex)
            {
                // The caller is answered after this (WorkItem.TryComplete): a listener that throws (a host's own
                // ActivityListener ending the request's span, say) must not leave it waiting, nor skip the others.
                LogListenerFailed(_logger, ex, listener.GetType().Name, item.RequestId);
            }
        }

        if (error is not null && error is not RequestCancelledException)
        {
            LogRequestFailed(_logger, item.RequestId, item.Request.Model, error.GetType().Name, item.AttemptCount, error.Message);
        }
    }

    /// <summary>
    /// Stops admission, lets in-flight work finish within the drain timeout, then fails what is left
    /// explicitly. Returns when every item has been let go of (or the host's own stop token fires).
    /// Runs once: a host that starts the drain early (the HTTP server, before Kestrel stops) and the
    /// admission stage's own stop share the same drain.
    /// </summary>
    public Task DrainAsync(CancellationToken hostStopping)
    {
        lock (_drainLock)
        {
            return _drain ??= DrainOnceAsync(hostStopping);
        }
    }

    private async Task DrainOnceAsync(CancellationToken hostStopping)
    {
        _draining = true;
        Items?.Close();
        _gate.Close(static () => new GatewayUnavailableException("The gateway is shutting down: it stopped accepting requests."));
        _channels.Admission.Writer.TryComplete();
        if (Interlocked.Read(ref _outstanding) == 0)
        {
            _drained.TrySetResult();
        }

        LogDraining(_logger, Outstanding, _options.DrainTimeout.TotalMilliseconds);
        if (await WaitDrainedAsync(_options.DrainTimeout, hostStopping).ConfigureAwait(false))
        {
            LogDrained(_logger);
            return;
        }

        // Grace period over: fail everything still inside explicitly, and cancel its upstream call.
        _failingRemaining = true;
        var failed = 0;
        for (var i = 0; i < _live.Length; i++)
        {
            var item = Volatile.Read(ref _live[i]);
            if (item is not null && !item.IsCompleted)
            {
                item.Cancel(CancelReason.Shutdown);
                failed++;
            }
        }

        failed += _limiter.FailWaiting(static () => new GatewayUnavailableException("The gateway shut down while the request waited for a rate-limit permit."));
        foreach (var waiting in _slots.TakeWaiting())
        {
            FailAndRetire(waiting, new GatewayUnavailableException("The gateway shut down while the request waited for an in-flight slot."));
            failed++;
        }

        LogFailedRemaining(_logger, failed, Outstanding);

        // Cancelled items leave the stages quickly; wait a little for that, on real time: this only bounds
        // how long shutdown waits for bookkeeping, every caller has been answered already.
        await WaitDrainedAsync(TimeSpan.FromSeconds(5), hostStopping, TimeProvider.System).ConfigureAwait(false);
    }

    private async Task<bool> WaitDrainedAsync(TimeSpan timeout, CancellationToken cancellationToken, TimeProvider? time = null)
    {
        try
        {
            await _drained.Task.WaitAsync(timeout, time ?? _time, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    [LoggerMessage(EventId = 6, Level = LogLevel.Warning, Message = "Provider {Provider}: QueueCapacity ({QueueCapacity}) + Workers ({Workers}) is at least Pipeline:MaxInFlight ({MaxInFlight}); if it stops answering it can hold every in-flight slot and stall the other providers. Keep it below MaxInFlight.")]
    private static partial void LogProviderCanHoldEverySlot(ILogger logger, string provider, int queueCapacity, int workers, int maxInFlight);

    [LoggerMessage(EventId = 1, Level = LogLevel.Warning, Message = "Request {RequestId} failed for model {Model}: {ErrorType} after {Attempts} finished attempt(s): {Reason}")]
    private static partial void LogRequestFailed(ILogger logger, string requestId, string model, string errorType, int attempts, string reason);

    [LoggerMessage(EventId = 7, Level = LogLevel.Error, Message = "Settling request {RequestId} failed in {Listener}; the caller is answered regardless.")]
    private static partial void LogListenerFailed(ILogger logger, Exception exception, string listener, string requestId);

    [LoggerMessage(EventId = 2, Level = LogLevel.Error, Message = "Request {RequestId} was retired by a stage without an answer; failing it.")]
    private static partial void LogRetiredIncomplete(ILogger logger, string requestId);

    [LoggerMessage(EventId = 3, Level = LogLevel.Information, Message = "Draining the pipeline: {Outstanding} request(s) outstanding, grace period {GraceMs} ms.")]
    private static partial void LogDraining(ILogger logger, long outstanding, double graceMs);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "Pipeline drained: every request completed.")]
    private static partial void LogDrained(ILogger logger);

    [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "Drain grace period over: failed {Failed} in-flight request(s) explicitly; {Outstanding} still leaving the stages.")]
    private static partial void LogFailedRemaining(ILogger logger, int failed, long outstanding);
}

/// <summary>How many requests wait in each stage's channel.</summary>
internal sealed record QueueDepths(int Admission, int Cache, int Router, int DeadLetter, int InFlight, IReadOnlyDictionary<string, int> Providers);
