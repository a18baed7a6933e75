using System.Threading.Channels;
using System.Threading.Tasks.Sources;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Pipeline;

/// <summary>
/// One request on its way through the pipeline. Exactly one stage owns it at a time (the one that read
/// it from its channel). Two lifetimes are kept apart on purpose:
/// <list type="bullet">
/// <item><b>Completion</b> answers the caller, exactly once (<see cref="TryComplete"/>, <see cref="TryFail"/>);
/// it may happen on any thread (a cancelled caller, a passed deadline, shutdown) while a stage still holds the item.</item>
/// <item><b>Retirement</b> is the owning stage letting go of the item; only then is its in-flight slot
/// returned, so the number of items inside the pipeline never exceeds <c>MaxInFlight</c> — the bound
/// the deadlock-freedom argument rests on (docs/architecture.md).</item>
/// </list>
/// The caller awaits the item itself (<see cref="Response"/>, an <see cref="IValueTaskSource{TResult}"/>): no task
/// completion source and no task are allocated per request, and each completion chooses whether the caller's
/// continuation runs on the completing thread (see <see cref="TryComplete"/>).
/// </summary>
internal sealed class WorkItem : IValueTaskSource<ChatCompletionResponse>
{
    private ManualResetValueTaskSourceCore<ChatCompletionResponse> _response;
    private readonly CancellationTokenSource _cts;
    private readonly CancellationTokenRegistration _callerRegistration;
    private readonly CancellationTokenRegistration _cancelRegistration;
    private List<GatewayAttempt>? _attempts;
    private int _completed;
    private int _cancelReason;

    public WorkItem(ChatCompletionRequest request, ModelGroup group, bool stream, TimeSpan timeout, TimeProvider time, CancellationToken callerToken, GatewayPipeline? observer = null, long sequence = 0, long? submittedTimestamp = null)
    {
        Sequence = sequence;
        Request = request;
        Group = group;
        RootGroup = group;
        Timeout = timeout;
        CallerToken = callerToken;

        // A caller that waited at admission's door was submitted earlier: its deadline counts from then.
        StartTimestamp = submittedTimestamp ?? time.GetTimestamp();
        var remaining = submittedTimestamp is { } at ? timeout - time.GetElapsedTime(at) : timeout;
        if (remaining <= TimeSpan.Zero)
        {
            remaining = TimeSpan.FromTicks(1);
        }

        Deadline = time.GetUtcNow() + remaining;
        if (stream)
        {
            // Bounded: a slow reader slows the upstream read instead of buffering the whole answer.
            Chunks = Channel.CreateBounded<ChatCompletionChunk>(new BoundedChannelOptions(64)
            {
                SingleReader = true,
                SingleWriter = true,
                FullMode = BoundedChannelFullMode.Wait,
            });
        }

        // Counted before any callback can complete it: a caller token that fires during construction
        // must still be seen ending exactly once.
        observer?.OnCreated(this);

        // One token for everything that can end the request early: the deadline (timer on the injected
        // TimeProvider), the caller's token and gateway shutdown. It is what the upstream call receives.
        _cts = new CancellationTokenSource(remaining, time);
        _cancelRegistration = _cts.Token.UnsafeRegister(static s => ((WorkItem)s!).OnCancelled(), this);
        if (callerToken.CanBeCanceled)
        {
            _callerRegistration = callerToken.UnsafeRegister(static s => ((WorkItem)s!).Cancel(CancelReason.Caller), this);
        }
    }

    public ChatCompletionRequest Request { get; }

    /// <summary>Told exactly once when the item completes (metrics, failure logs).</summary>
    public GatewayPipeline? Observer { get; set; }

    /// <summary>The failure the caller was given, if any (streams read it after the last chunk).</summary>
    public Exception? Failure { get; private set; }

    /// <summary>The group now serving the request (changes along fallback chains).</summary>
    public ModelGroup Group { get; private set; }

    /// <summary>The group the caller's model name resolved to.</summary>
    public ModelGroup RootGroup { get; }

    private int _fallbackPosition = -1;
    private int _contextFallbackPosition = -1;

    /// <summary>Moves to the next group of the root group's fallback chain, if there is one.</summary>
    public bool TryAdvanceFallback()
    {
        var chain = RootGroup.Fallbacks;
        if (_fallbackPosition + 1 >= chain.Count)
        {
            return false;
        }

        Group = chain[++_fallbackPosition];
        return true;
    }

    /// <summary>Moves to the next larger-context group, used only after a context-length error.</summary>
    public bool TryAdvanceContextFallback()
    {
        var chain = RootGroup.ContextWindowFallbacks;
        if (_contextFallbackPosition + 1 >= chain.Count)
        {
            return false;
        }

        Group = chain[++_contextFallbackPosition];
        return true;
    }

    public TimeSpan Timeout { get; }

    public DateTimeOffset Deadline { get; }

    public long StartTimestamp { get; }

    public CancellationToken CallerToken { get; }

    /// <summary>Fires on deadline, caller cancellation or shutdown; passed to the upstream call.</summary>
    public CancellationToken Token => _cts.Token;

    public bool IsStream => Chunks is not null;

    public Channel<ChatCompletionChunk>? Chunks { get; }

    /// <summary>Set once the first chunk reached the caller: from then on no fallback is possible.</summary>
    public bool StreamStarted { get; set; }

    public int Slot { get; set; } = -1;

    /// <summary>The tenant (fairness, rate-limit and budget partition): the request's key, or "" without one.</summary>
    public string TenantKey => Request.Gateway?.RateLimitKey ?? string.Empty;

    public RequestPriority Priority => Request.Gateway?.Priority ?? RequestPriority.Interactive;

    /// <summary>Set while the request is inside admission's waiting room (from acceptance until it holds a slot).</summary>
    public Admission.AdmissionGate.Tenant? GateTenant { get; set; }

    /// <summary>The tenant's share of the in-flight slots this request counts in, while it holds a slot.</summary>
    public FairQueue<WorkItem>.Lane? SlotLane { get; set; }

    /// <summary>The tenant's lane at the provider queue the request waits in or is served from.</summary>
    public FairQueue<WorkItem>.Lane? QueueLane { get; set; }

    /// <summary>Set once the router has seen the request: a slot regained later sends it back to the router, not the cache.</summary>
    public bool Routed { get; set; }

    /// <summary>The provider whose freed room this request was unparked for, until it is offered somewhere.</summary>
    public Dispatch.ProviderWorkerPool? ResumedFor { get; set; }

    /// <summary>The waiting room holding the request now, if any (set and cleared under that room's lock).</summary>
    public IWaitingRoom? WaitingIn
    {
        get => Volatile.Read(ref _waitingIn);
        set => Volatile.Write(ref _waitingIn, value);
    }

    private IWaitingRoom? _waitingIn;

    /// <summary>By when (a timestamp) a worker must take it from its provider's queue: the wait it was accepted for.</summary>
    public long TakeBy { get; set; } = long.MaxValue;

    /// <summary>When the request joined its provider's queue (for the queue-wait measurement).</summary>
    public long EnqueuedTimestamp { get; set; }

    /// <summary>Whether the caller waits for room and for rate-limit permits, or is refused at once.</summary>
    public SubmitMode Mode { get; set; }

    /// <summary>What admission charged the rate limits, for correction to actual usage.</summary>
    public Admission.RateLimitCharge? RateLimitCharge { get; set; }

    /// <summary>The charge a distributed rate-limit store took, kept for the correction to actual usage.</summary>
    public Admission.DistributedLimitCharge? DistributedCharge { get; set; }

    /// <summary>Usage reported by a stream's last chunk.</summary>
    public TokenUsage? StreamUsage { get; set; }

    private long _estimatedTokens = -1;

    /// <summary>The token estimate if something already counted it (no counting just to ask).</summary>
    public long? EstimatedTokensIfCounted => _estimatedTokens >= 0 ? _estimatedTokens : null;

    /// <summary>What admission reserved against budgets, settled with the actual cost.</summary>
    public Cost.BudgetTracker.Reservation? BudgetReservation { get; set; }

    /// <summary>A reservation in a shared budget store, settled with the actual cost.</summary>
    public Cost.BudgetTracker.SharedReservation? SharedBudgetReservation { get; set; }

    /// <summary>Prompt tokens (counted with the model's tokenizer) plus the completion budget; computed once, on demand.</summary>
    public long EstimatedTokens
    {
        get
        {
            if (_estimatedTokens < 0)
            {
                var completion = Request.RequestedCompletionTokens ?? Group.ExpectedCompletionTokens;
                _estimatedTokens = Admission.TokenCounter.CountPrompt(Request, Request.Model) + completion;
            }

            return _estimatedTokens;
        }
    }

    /// <summary>The single-flight group this request leads, if any.</summary>
    public Caching.Flights.Flight? Flight { get; set; }

    /// <summary>Set by the cache stage when the answer may be stored.</summary>
    public Caching.CacheKey? CacheKey { get; set; }

    /// <summary>This request's answer as the cache and its followers keep it (captured before its caller has it).</summary>
    public Caching.StoredAnswer? Stored { get; set; }

    /// <summary>The request's number in this process; <see cref="RequestId"/> is formatted from it on demand.</summary>
    public long Sequence { get; set; }

    public string RequestId => RequestIds.Format(Sequence);

    public bool IsCompleted => Volatile.Read(ref _completed) != 0;

    /// <summary>The caller's answer (a non-streamed request); awaited once, as every <see cref="ValueTask{TResult}"/> is.</summary>
    public ValueTask<ChatCompletionResponse> Response => new(this, _response.Version);

    /// <summary>
    /// Set by a caller whose continuation is short and never blocks (the HTTP front door writing its answer): a
    /// provider worker's success then runs it on the worker's thread instead of queueing it to the thread pool.
    /// </summary>
    public bool InlineSuccessContinuation { get; set; }

    private Deployment? _current;
    private Deployment? _entered;

    /// <summary>The deployment chosen by the router for the current attempt; counted in its in-flight load until the attempt ends.</summary>
    public Deployment? Current
    {
        get => _current;
        set
        {
            ReleaseDeployment();
            _current = value;
            if (value is not null)
            {
                value.State.Enter();
                Volatile.Write(ref _entered, value);
            }
        }
    }

    /// <summary>
    /// Takes the request out of its deployment's in-flight count, once. Called as soon as the attempt's outcome is
    /// known — before the caller is answered, so a caller that immediately sends again sees the load as it is.
    /// </summary>
    public bool ReleaseDeployment()
    {
        var entered = Interlocked.Exchange(ref _entered, null);
        entered?.State.Exit();
        return entered is not null;
    }

    /// <summary>The failure of the last attempt, read by the dead-letter stage.</summary>
    public ProviderFailure LastFailure { get; set; }

    public IReadOnlyList<GatewayAttempt> Attempts => (IReadOnlyList<GatewayAttempt>?)_attempts ?? [];

    public int AttemptCount => _attempts?.Count ?? 0;

    /// <summary>True when this request already made an attempt at the deployment.</summary>
    public bool HasTried(Deployment deployment)
    {
        var attempts = _attempts;
        if (attempts is null)
        {
            return false;
        }

        foreach (var a in attempts)
        {
            if (ReferenceEquals(a.Deployment, deployment))
            {
                return true;
            }
        }

        return false;
    }

    public void AddAttempt(Deployment deployment, GatewayAttempt attempt)
    {
        // Only the owning stage adds attempts; the lock guards against a concurrent snapshot
        // taken by a cancellation callback on another thread.
        lock (this)
        {
            attempt.Deployment = deployment;
            (_attempts ??= new List<GatewayAttempt>(2)).Add(attempt);
        }
    }

    /// <summary>
    /// The attempt list itself, for a request that just succeeded: nothing appends to it after that,
    /// so no copy is needed on the hot path.
    /// </summary>
    public IReadOnlyList<GatewayAttempt> FinalAttempts => (IReadOnlyList<GatewayAttempt>?)_attempts ?? [];

    /// <summary>A copy of the attempt list that later attempts cannot change.</summary>
    public IReadOnlyList<GatewayAttempt> SnapshotAttempts()
    {
        lock (this)
        {
            return _attempts is null ? [] : _attempts.ToArray();
        }
    }

    /// <summary>
    /// Answers the caller, once. The caller's continuation is queued to the thread pool, so no caller code runs on a
    /// stage's thread — except when <paramref name="fromWorker"/> (a provider worker, one of many, holding nothing:
    /// its concurrency permit is already released) and the caller asked for <see cref="InlineSuccessContinuation"/>:
    /// then it runs here, which saves a thread-pool hand-off (a wake-up of another thread) per request.
    /// </summary>
    public bool TryComplete(ChatCompletionResponse response, bool fromWorker = false)
    {
        if (Interlocked.Exchange(ref _completed, 1) != 0)
        {
            return false;
        }

        ReleaseRegistrations();
        Observer?.OnCompleted(this, response, null);
        if (Chunks is null)
        {
            _response.RunContinuationsAsynchronously = !(fromWorker && InlineSuccessContinuation);
            _response.SetResult(response);
        }
        else
        {
            Chunks.Writer.TryComplete();
        }

        return true;
    }

    public bool TryFail(Exception error)
    {
        if (Interlocked.Exchange(ref _completed, 1) != 0)
        {
            return false;
        }

        ReleaseRegistrations();
        Failure = error;
        Observer?.OnCompleted(this, null, error);
        if (Chunks is null)
        {
            // Failures may come from a stage's loop or a cancellation callback: the caller never runs there.
            _response.RunContinuationsAsynchronously = true;
            _response.SetException(error);
        }
        else
        {
            // The stream reader sees the end of the channel, then rethrows Failure as it is
            // (a channel completed with an OperationCanceledException would lose its type).
            Chunks!.Writer.TryComplete();
        }

        return true;
    }

    /// <summary>Ends the request early: the upstream call (if any) is cancelled and the caller answered.</summary>
    public void Cancel(CancelReason reason)
    {
        Interlocked.CompareExchange(ref _cancelReason, (int)reason, 0);
        try
        {
            _cts.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Completed and cleaned up concurrently: nothing left to cancel.
        }
    }

    /// <summary>Why the token fired (deadline when nothing else said).</summary>
    public CancelReason Reason => (CancelReason)Volatile.Read(ref _cancelReason) is var r && r != CancelReason.None ? r : CancelReason.Deadline;

    /// <summary>The typed failure matching why the request was cancelled.</summary>
    public Exception CancellationError() => Reason switch
    {
        CancelReason.Caller => new RequestCancelledException(SnapshotAttempts(), CallerToken),
        CancelReason.Shutdown => new GatewayUnavailableException("The gateway shut down before the request completed."),
        _ => new DeadlineExceededException(Timeout, SnapshotAttempts()),
    };

    private void OnCancelled()
    {
        Interlocked.CompareExchange(ref _cancelReason, (int)CancelReason.Deadline, 0);
        TryFail(CancellationError());
    }

    private void ReleaseRegistrations()
    {
        // Unregister without waiting: we may be running inside one of these callbacks.
        _callerRegistration.Unregister();
        _cancelRegistration.Unregister();
    }

    ChatCompletionResponse IValueTaskSource<ChatCompletionResponse>.GetResult(short token) => _response.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<ChatCompletionResponse>.GetStatus(short token) => _response.GetStatus(token);

    void IValueTaskSource<ChatCompletionResponse>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _response.OnCompleted(continuation, state, token, flags);

    private ITimer? _retryTimer;

    /// <summary>Runs <paramref name="requeue"/> after <paramref name="delay"/> on the injected clock (a backoff).</summary>
    public void ScheduleRetry(TimeProvider time, TimeSpan delay, Action<WorkItem> requeue)
    {
        _retryTimer?.Dispose();
        _retryTimer = time.CreateTimer(
            static s =>
            {
                var (item, action) = ((WorkItem, Action<WorkItem>))s!;
                action(item);
            },
            (this, requeue),
            delay,
            System.Threading.Timeout.InfiniteTimeSpan);
    }

    /// <summary>Called by the owning stage when it lets go of the item for good.</summary>
    public void DisposeResources()
    {
        _retryTimer?.Dispose();
        _callerRegistration.Dispose();
        _cancelRegistration.Unregister();
        _cts.Dispose();
    }
}

internal enum CancelReason
{
    None = 0,
    Deadline = 1,
    Caller = 2,
    Shutdown = 3,
}

/// <summary>A failed attempt as a value, handed from a worker to the dead-letter stage.</summary>
internal readonly record struct ProviderFailure(AttemptOutcome Outcome, int? StatusCode, TimeSpan? RetryAfter, string Message)
{
    /// <summary>The upstream's error type, code, param and own message (redacted), when it said.</summary>
    public string? ErrorType { get; init; }

    public string? ErrorCode { get; init; }

    public string? Param { get; init; }

    public string? UpstreamMessage { get; init; }

    /// <summary>The attempt this failure describes, as the caller sees it.</summary>
    public GatewayAttempt ToAttempt(string provider, string model, TimeSpan latency) =>
        new(provider, model, Outcome, latency, StatusCode, Message) { ErrorType = ErrorType, ErrorCode = ErrorCode, Param = Param, RetryAfter = RetryAfter };
}
