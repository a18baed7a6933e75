using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Dispatch;

/// <summary>
/// One provider's waiting room (<see cref="ProviderQueue"/>) and its workers. Each worker makes one attempt at a
/// time, so the number of workers is the provider's maximum concurrency. A success answers the caller here; a
/// failure becomes a value on the item and goes to the dead-letter stage, which decides what next.
/// </summary>
internal sealed partial class ProviderWorkerPool
{
    private readonly ProviderQueue _queue;
    private readonly int _workers;
    private readonly ILogger _logger;
    private GatewayPipeline? _pipeline;
    private Task[] _running = [];

    private readonly int? _requestsPerMinute;
    private readonly int? _tokensPerMinute;

    public ProviderWorkerPool(ILlmProvider provider, int workers, int queueCapacity, ILogger logger, Hosting.FairnessOptions fairness, TimeProvider time, int? requestsPerMinute = null, int? tokensPerMinute = null)
    {
        _requestsPerMinute = requestsPerMinute;
        _tokensPerMinute = tokensPerMinute;
        Provider = provider;
        _workers = workers;
        QueueCapacity = queueCapacity;
        _logger = logger;
        _permits = new SemaphoreSlim(workers, workers);
        _queue = new ProviderQueue(queueCapacity, workers, fairness, time);
        Limits = new ProviderRateLimiter(requestsPerMinute, tokensPerMinute, time);
    }

    public string Name => Provider.Name;

    public ILlmProvider Provider { get; }

    public int QueueCapacity { get; }

    public int Workers => _workers;

    public int QueueDepth => _queue.Count;

    /// <summary>Attempts running against the provider right now.</summary>
    public long InFlight => _workers - _permits.CurrentCount;

    /// <summary>The provider's RPM/TPM limits.</summary>
    internal ProviderRateLimiter Limits { get; }

    /// <summary>How long a request arriving now would wait before a worker takes it (for metrics).</summary>
    public TimeSpan ExpectedWait => _pipeline is null ? TimeSpan.Zero : _queue.ExpectedWait(_pipeline.Selector.Health.PausedFor(Name), Limits.RequestInterval, Stalled);

    /// <summary>How long every concurrency permit has been held with none given back (zero while one is free).</summary>
    private TimeSpan Stalled => _permits.CurrentCount == 0 ? _pipeline!.Time.GetElapsedTime(Volatile.Read(ref _lastRelease)) : TimeSpan.Zero;

    private long _lastRelease;

    /// <summary>How long the provider must not be called yet (a 429's pause, owned by the health tracker).</summary>
    public TimeSpan PausedFor => _pipeline?.Selector.Health.PausedFor(Name) ?? TimeSpan.Zero;

    /// <summary>How long requests waited in this provider's queue before a worker took them.</summary>
    public (double P50Ms, double P99Ms, double MaxMs) QueueWaits => _queue.Waits;

    /// <summary>The measured time a worker is occupied per request.</summary>
    public TimeSpan ServiceTime => _queue.ServiceTime;

    /// <summary>
    /// Offers a request to this provider's queue: taken if its expected wait is at most <paramref name="maxWait"/>
    /// (counting a 429 pause and the requests-per-minute limit), refused at once otherwise. Never waits.
    /// </summary>
    public QueueOffer Offer(WorkItem item, TimeSpan maxWait, out WorkItem? pushedOut) =>
        _queue.Offer(item, maxWait, _pipeline!.Selector.Health.PausedFor(Name), Limits.RequestInterval, Stalled, out pushedOut);

    public void Start(GatewayPipeline pipeline, CancellationToken stop)
    {
        _pipeline = pipeline;
        _lastRelease = pipeline.Time.GetTimestamp();
        _running = new Task[_workers];
        for (var i = 0; i < _workers; i++)
        {
            _running[i] = Task.Run(WorkerLoopAsync, CancellationToken.None);
        }

        stop.UnsafeRegister(static s => ((ProviderWorkerPool)s!).Stop(), this);
    }

    public Task Completion => Task.WhenAll(_running);

    /// <summary>Stops the workers once they finish what they hold; requests still queued are answered as shut out.</summary>
    private void Stop()
    {
        foreach (var item in _queue.Stop())
        {
            _pipeline!.FailAndRetire(item, new GatewayUnavailableException("The gateway shut down before the request reached its provider."));
        }
    }

    private async Task WorkerLoopAsync()
    {
        // Each worker parks its own reusable signal while idle, and a request is handed to exactly one parked worker
        // (no thundering herd of wake-ups, no allocation per wait: docs/benchmarks.md).
        var signal = new WorkerSignal();
        while (await NextAsync(signal).ConfigureAwait(false) is { } item)
        {
            TimeSpan? service = null;
            try
            {
                service = await AttemptAsync(item).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                LogWorkerError(_logger, ex, Name);
                _pipeline!.FailAndRetire(item, new GatewayUnavailableException("The gateway failed while handling the request."));
            }
            finally
            {
                if (_queue.Done(item, service) is { } refused)
                {
                    RefuseLate(refused);
                }
            }
        }
    }

    /// <summary>Requests taken in blind at start that the first measurement shows would wait past their allowed wait.</summary>
    private void RefuseLate(List<WorkItem> refused)
    {
        var service = _queue.ServiceTime;
        foreach (var item in refused)
        {
            var deployment = item.Current;
            if (item.ReleaseDeployment())
            {
                deployment?.State.OnNeutral();
            }

            _pipeline!.Metrics.OnOverloaded();
            _pipeline.FailAndRetire(item, new ProviderOverloadedException(item.Request.Model, service, service * refused.Count / Workers, item.SnapshotAttempts(),
                $"The provider of model '{item.Request.Model}' turned out slower than the request may wait (its first answers took {service.TotalSeconds:F1} s); retry after {service.TotalSeconds:F1} s."));
        }
    }

    private ValueTask<WorkItem?> NextAsync(WorkerSignal signal)
    {
        var next = _queue.NextAsync(signal, out var unparked);
        if (unparked is not null)
        {
            // Room was freed: a waiting caller's request parked for it goes back to the router (with a slot again).
            _pipeline!.Resume(unparked, this);
        }

        return next;
    }

    /// <summary>A request unparked for room here did not take it: the next parked one gets the chance.</summary>
    public void PassRoomOn()
    {
        if (_queue.UnparkNext() is { } next)
        {
            _pipeline!.Resume(next, this);
        }
    }

    /// <summary>
    /// Parks a waiting caller's request that found this provider's queue full: it gives its in-flight slot back and
    /// waits here until the queue has room. False when the queue has room again (offer again) or stopped.
    /// </summary>
    public bool Park(WorkItem item) => _queue.Park(item);

    /// <summary>Requests parked for room in this provider's queue.</summary>
    public int Parked => _queue.Parked;

    /// <summary>True while the queue is full or requests are parked for it.</summary>
    public bool IsSaturated => _queue.IsSaturated;

    /// <summary>Completes when the queue stops being saturated.</summary>
    public Task RoomAsync() => _queue.RoomAsync();

    /// <summary>Makes the request's attempt here; returns how long it occupied the provider (null: none was sent).</summary>
    private async ValueTask<TimeSpan?> AttemptAsync(WorkItem item)
    {
        var pipeline = _pipeline!;
        var deployment = item.Current!;
        try
        {
            if (item.IsCompleted)
            {
                deployment.State.OnNeutral();
                pipeline.Retire(item);
                return null;
            }

            if (pipeline.IsFailingRemaining)
            {
                // Shutdown's grace period is over: start nothing new upstream.
                item.Cancel(CancelReason.Shutdown);
                deployment.State.OnNeutral();
                pipeline.FailAndRetire(item, item.CancellationError());
                return null;
            }

            // A request whose deadline passed while it waited in the queue is never sent upstream.
            if (pipeline.Time.GetUtcNow() >= item.Deadline)
            {
                item.Cancel(CancelReason.Deadline);
                deployment.State.OnNeutral();
                pipeline.FailAndRetire(item, item.CancellationError());
                return null;
            }

            return item.Group.Hedging is { } hedging && !item.IsStream
                ? await HedgedAttemptAsync(item, deployment, hedging.Delay).ConfigureAwait(false)
                : await SingleAttemptAsync(item, deployment).ConfigureAwait(false);
        }
        finally
        {
            item.ReleaseDeployment();
        }
    }

    /// <summary>One attempt, holding one of this provider's concurrency permits.</summary>
    private async ValueTask<TimeSpan?> SingleAttemptAsync(WorkItem item, Deployment deployment)
    {
        var pipeline = _pipeline!;
        var started = pipeline.Time.GetTimestamp();
        var sent = false;
        ProviderRateLimiter.Charge? charge = null;
        ChatCompletionResponse? response = null;
        try
        {
            // Rate first (holding no concurrency permit while waiting), then a concurrency permit.
            charge = await AcquireRateAsync(item).ConfigureAwait(false);
            await AcquirePermitAsync(item.Token).ConfigureAwait(false);
            try
            {
                started = pipeline.Time.GetTimestamp();
                sent = true;
                if (item.IsStream)
                {
                    await StreamAttemptAsync(item, deployment, started).ConfigureAwait(false);
                    Limits.Settle(charge, item.StreamUsage?.TotalTokens ?? charge?.Tokens ?? 0);
                }
                else
                {
                    response = await Provider.CompleteAsync(new ProviderRequest(item.Request, deployment.Model), item.Token).ConfigureAwait(false);
                    Limits.Settle(charge, response.Usage?.TotalTokens ?? charge?.Tokens ?? 0);
                    Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, pipeline.Time.GetElapsedTime(started)), null);
                }
            }
            finally
            {
                ReleasePermit();
            }
        }
        catch (Exception ex)
        {
            Limits.Settle(charge, 0);
            var service = sent ? pipeline.Time.GetElapsedTime(started) : (TimeSpan?)null;
            OnAttemptFailed(item, deployment, started, ex);
            return service;
        }

        var took = pipeline.Time.GetElapsedTime(started);
        if (response is not null)
        {
            // After the permit is back: the caller may be resumed on this thread (see WorkItem.TryComplete).
            pipeline.CompleteSuccess(item, deployment, response);
        }

        return took;
    }

    /// <summary>
    /// Hedging: if the first attempt has not answered after <paramref name="delay"/>, a second goes to another
    /// healthy deployment (holding a permit of that provider, so its concurrency limit still holds). The first
    /// success answers the caller and the other attempt is cancelled; if both fail, the later failure goes to
    /// the dead-letter stage with both attempts listed.
    /// </summary>
    private async ValueTask<TimeSpan?> HedgedAttemptAsync(WorkItem item, Deployment primary, TimeSpan delay)
    {
        var pipeline = _pipeline!;
        var started = pipeline.Time.GetTimestamp();
        using var primaryCts = CancellationTokenSource.CreateLinkedTokenSource(item.Token);

        // The hedge clock starts before the first attempt does.
        var timer = Task.Delay(delay, pipeline.Time, primaryCts.Token);
        var primaryTask = RunAsync(this, primary, item, ownPermit: true, primaryCts.Token);
        if (await Task.WhenAny(primaryTask, timer).ConfigureAwait(false) == primaryTask)
        {
            await primaryCts.CancelAsync().ConfigureAwait(false); // stops the hedge timer; the attempt is over
            await FinishAsync(item, primaryTask.Result, null).ConfigureAwait(false);
            return primaryTask.Result.Latency;
        }

        // Where the hedge goes is Routing's decision; it comes back with room reserved at that provider, or not at all.
        if (pipeline.Hedges.TryChoose(item, primary) is not var (other, reservation))
        {
            // Nowhere to hedge to right now: wait for the first attempt.
            var only = await primaryTask.ConfigureAwait(false);
            await FinishAsync(item, only, null).ConfigureAwait(false);
            return only.Latency;
        }

        pipeline.Metrics.OnHedge();
        other.State.Enter();
        using var hedgeCts = CancellationTokenSource.CreateLinkedTokenSource(item.Token);
        var hedgeTask = other.Pool.RunReservedAsync(other, item, reservation, hedgeCts.Token);
        try
        {
            var first = await Task.WhenAny(primaryTask, hedgeTask).ConfigureAwait(false);
            var second = first == primaryTask ? hedgeTask : primaryTask;
            var firstResult = await first.ConfigureAwait(false);
            if (firstResult.Response is not null)
            {
                // The winner answers; the loser is cancelled and listed as such.
                await (first == primaryTask ? hedgeCts : primaryCts).CancelAsync().ConfigureAwait(false);
                var loser = await second.ConfigureAwait(false);
                await FinishAsync(item, firstResult, loser).ConfigureAwait(false);
                return pipeline.Time.GetElapsedTime(started);
            }

            var secondResult = await second.ConfigureAwait(false);
            await FinishAsync(item, secondResult, firstResult).ConfigureAwait(false);
            return pipeline.Time.GetElapsedTime(started);
        }
        finally
        {
            other.State.Exit();
        }
    }

    /// <summary>The outcome of one hedged leg, as a value.</summary>
    internal readonly record struct Leg(Deployment Deployment, string Provider, ChatCompletionResponse? Response, Exception? Error, TimeSpan Latency);

    private static Task<Leg> RunAsync(ProviderWorkerPool pool, Deployment deployment, WorkItem item, bool ownPermit, CancellationToken token) =>
        pool.RunLegAsync(deployment, item, null, ownPermit, token);

    /// <summary>Runs a hedge leg on room reserved here by <see cref="TryReserve"/>.</summary>
    public Task<Leg> RunReservedAsync(Deployment deployment, WorkItem item, ProviderReservation reservation, CancellationToken token) =>
        RunLegAsync(deployment, item, reservation.Charge, ownPermit: false, token);

    /// <summary>
    /// Reserves room for a hedge now — a concurrency permit and the rate limits' charge — or nothing: a hedge never
    /// waits and never passes the provider's limits, and no hedge goes to a provider paused by a 429.
    /// </summary>
    public bool TryReserve(WorkItem item, out ProviderReservation reservation)
    {
        reservation = default;
        if (_pipeline!.Selector.Health.PausedFor(Name) > TimeSpan.Zero
            || Limits.TryAcquire(Limits.CountsTokens ? item.EstimatedTokens : 0, out var charge) != TimeSpan.Zero)
        {
            return false;
        }

        if (!_permits.Wait(0, CancellationToken.None))
        {
            Limits.Settle(charge, 0);
            return false;
        }

        reservation = new ProviderReservation(charge);
        return true;
    }

    private async Task<Leg> RunLegAsync(Deployment deployment, WorkItem item, ProviderRateLimiter.Charge? reservedCharge, bool ownPermit, CancellationToken token)
    {
        var charge = reservedCharge;
        var time = _pipeline!.Time;
        var started = time.GetTimestamp();
        var holding = !ownPermit; // a hedge leg's permit was reserved by the router
        try
        {
            if (ownPermit)
            {
                charge = await AcquireRateAsync(item).ConfigureAwait(false);
                await AcquirePermitAsync(token).ConfigureAwait(false);
                holding = true;
                started = time.GetTimestamp();
            }

            var response = await Provider.CompleteAsync(new ProviderRequest(item.Request, deployment.Model), token).ConfigureAwait(false);
            Limits.Settle(charge, response.Usage?.TotalTokens ?? charge?.Tokens ?? 0);
            return new Leg(deployment, Name, response, null, time.GetElapsedTime(started));
        }
        catch (Exception ex)
        {
            Limits.Settle(charge, 0);
            return new Leg(deployment, Name, null, ex, time.GetElapsedTime(started));
        }
        finally
        {
            if (holding)
            {
                ReleasePermit();
            }
        }
    }

    private ValueTask FinishAsync(WorkItem item, Leg result, Leg? other)
    {
        var pipeline = _pipeline!;
        if (result.Response is { } response)
        {
            if (other is { } loser)
            {
                // A leg cancelled because the other won says nothing about its provider's health.
                var lost = loser.Error is OperationCanceledException && !item.Token.IsCancellationRequested;
                var failure = lost ? new ProviderFailure(AttemptOutcome.Cancelled, null, null, "hedge lost: the other attempt answered first") : Classify(item, loser.Error!);
                Record(item, loser.Deployment, failure.ToAttempt(loser.Provider, loser.Deployment.Model, loser.Latency), failure.RetryAfter);
            }

            Record(item, result.Deployment, new GatewayAttempt(result.Provider, result.Deployment.Model, AttemptOutcome.Success, result.Latency), null);
            pipeline.CompleteSuccess(item, result.Deployment, response);
            return ValueTask.CompletedTask;
        }

        if (other is { } earlier)
        {
            var f = Classify(item, earlier.Error!);
            Record(item, earlier.Deployment, f.ToAttempt(earlier.Provider, earlier.Deployment.Model, earlier.Latency), f.RetryAfter);
        }

        OnAttemptFailedAfter(item, result.Deployment, result.Provider, result.Latency, result.Error!);
        return ValueTask.CompletedTask;
    }

    private readonly SemaphoreSlim _permits;

    private ValueTask<ProviderRateLimiter.Charge?> AcquireRateAsync(WorkItem item)
    {
        // The synchronous try covers the common case (no pause, no limit, or room now) without an async state machine.
        var tokens = Limits.CountsTokens ? item.EstimatedTokens : 0;
        ProviderRateLimiter.Charge? charge = null;
        return _pipeline!.Selector.Health.PausedFor(Name) == TimeSpan.Zero && Limits.TryAcquire(tokens, out charge) == TimeSpan.Zero
            ? ValueTask.FromResult(charge)
            : WaitForRateAsync(tokens, item.Token);
    }

    /// <summary>Waits out a 429 pause (the health tracker's) and the provider's RPM/TPM limits, on the injected clock.</summary>
    private async ValueTask<ProviderRateLimiter.Charge?> WaitForRateAsync(long tokens, CancellationToken token)
    {
        var time = _pipeline!.Time;
        while (true)
        {
            var paused = _pipeline.Selector.Health.PausedFor(Name);
            ProviderRateLimiter.Charge? charge = null;
            var wait = paused > TimeSpan.Zero ? paused : Limits.TryAcquire(tokens, out charge);
            if (wait == TimeSpan.Zero)
            {
                return charge;
            }

            // Counted once the timer exists: a test that moves a fake clock on this signal must not move it before.
            var delay = Task.Delay(wait, time, token);
            Interlocked.Increment(ref _waitingForRate);
            try
            {
                await delay.ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _waitingForRate);
            }
        }
    }

    private int _waitingForRate;

    /// <summary>Workers waiting out a 429 pause or the provider's RPM/TPM limit right now (an explicit signal for tests and metrics).</summary>
    internal int WaitingForRate => Volatile.Read(ref _waitingForRate);

    private ValueTask AcquirePermitAsync(CancellationToken token) =>
        _permits.Wait(0, CancellationToken.None) ? ValueTask.CompletedTask : new ValueTask(_permits.WaitAsync(token));

    private void ReleasePermit()
    {
        Volatile.Write(ref _lastRelease, _pipeline!.Time.GetTimestamp());
        _permits.Release();
    }

    /// <summary>
    /// Streams one attempt to the caller. Chunks that carry no content (the role-only opening, an empty delta, usage)
    /// are held back until the first content-bearing one (text, a tool call, a refusal): until then nothing reached the
    /// caller and a failure — an upstream's error event right after its opening, say — can still fall back to another
    /// deployment. The attempt is recorded when it ends, with its real outcome.
    /// </summary>
    private async ValueTask StreamAttemptAsync(WorkItem item, Deployment deployment, long started)
    {
        var pipeline = _pipeline!;
        var writer = item.Chunks!.Writer;
        List<ChatCompletionChunk>? held = null;
        var any = false;
        var firstToken = TimeSpan.Zero;
        var replay = item.CacheKey is not null ? new Caching.StreamReplay() : null; // a finished stream is cached whole
        ChatCompletionChunk? usageChunk = null;
        ChatCompletionChunk? pendingLast = null;
        await foreach (var chunk in Provider.StreamAsync(new ProviderRequest(item.Request, deployment.Model), item.Token).ConfigureAwait(false))
        {
            any = true;
            if (chunk.Usage is { } usage)
            {
                item.StreamUsage = usage;
            }

            replay?.Add(chunk);
            if (chunk.Choices.Count == 0 && chunk.Usage is not null)
            {
                // The usage-only chunk (the stream's last): held, to go out last with the request's cost on it.
                usageChunk = chunk;
                continue;
            }

            if (!item.StreamStarted)
            {
                if (!CarriesContent(chunk))
                {
                    (held ??= new List<ChatCompletionChunk>(2)).Add(chunk);
                    continue;
                }

                // From here on the caller has seen output: no fallback can be invisible any more.
                firstToken = pipeline.Time.GetElapsedTime(started);
                pipeline.Metrics.OnFirstToken(pipeline.Time.GetElapsedTime(item.StartTimestamp));
                await ReleaseHeldAsync(item, deployment, held, chunk, firstToken).ConfigureAwait(false);
                held = null;
                continue;
            }

            if (pendingLast is not null)
            {
                await WriteAsync(writer, pendingLast, item.Token).ConfigureAwait(false);
                pendingLast = null;
            }

            if (chunk.Choices.Exists(static c => c.FinishReason is not null))
            {
                // The finishing chunk: held until the stream ends (nothing is delayed by it), to carry the cost.
                pendingLast = chunk;
                continue;
            }

            await WriteAsync(writer, chunk, item.Token).ConfigureAwait(false);
        }

        if (!any)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, "The provider ended the stream without any chunk.");
        }

        if (!item.StreamStarted)
        {
            // A whole answer without content (an empty completion): what was held is the answer.
            firstToken = pipeline.Time.GetElapsedTime(started);
            await ReleaseHeldAsync(item, deployment, held, null, firstToken).ConfigureAwait(false);
        }

        // Recorded now that it ended well; its latency is the time to the first token (what LowestLatency ranks).
        Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, firstToken), null);

        // The caller has had the chunks; this whole answer carries the usage and cost for metrics (and the cache).
        var whole = replay?.ToResponse() ?? new ChatCompletionResponse { Model = deployment.Model, Usage = item.StreamUsage };
        whole.Gateway = ResponseInfo.Answered(item, deployment, whole.Usage, pipeline.Pricing, pipeline.Time);
        if (replay is not null)
        {
            // Only a stream that ended normally is stored; a broken one never reaches here.
            pipeline.Cache.Store(item, whole);
        }

        // The last chunk the caller gets carries the usage and what the request cost (the opening chunk could not):
        // the upstream's usage chunk, else its finishing chunk, else (a stream that ended without either) a closing one.
        if (usageChunk is not null && pendingLast is not null)
        {
            await WriteAsync(writer, pendingLast, item.Token).ConfigureAwait(false);
            pendingLast = null;
        }

        var last = usageChunk ?? pendingLast ?? new ChatCompletionChunk { Id = whole.Id, Created = whole.Created, Model = whole.Model, Choices = [], Usage = whole.Usage };
        last.Gateway = whole.Gateway;
        await WriteAsync(writer, last, item.Token).ConfigureAwait(false);

        item.TryComplete(whole);
        pipeline.Retire(item);
    }

    /// <summary>
    /// The stream starts for the caller: the held chunks, then <paramref name="first"/>. The opening chunk carries the
    /// gateway's info, listing the attempts so far and this one as answering (its final outcome is recorded at the end).
    /// </summary>
    private async ValueTask ReleaseHeldAsync(WorkItem item, Deployment deployment, List<ChatCompletionChunk>? held, ChatCompletionChunk? first, TimeSpan firstToken)
    {
        item.StreamStarted = true;
        var writer = item.Chunks!.Writer;
        if ((held is { Count: > 0 } ? held[0] : first) is { } opening)
        {
            opening.Gateway = ResponseInfo.Answered(item, deployment, null, _pipeline!.Pricing, _pipeline.Time, [.. item.SnapshotAttempts(), new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, firstToken)]);
        }

        foreach (var chunk in held ?? [])
        {
            if (!writer.TryWrite(chunk))
            {
                await writer.WriteAsync(chunk, item.Token).ConfigureAwait(false);
            }
        }

        if (first is not null && !writer.TryWrite(first))
        {
            await writer.WriteAsync(first, item.Token).ConfigureAwait(false);
        }
    }

    private static ValueTask WriteAsync(System.Threading.Channels.ChannelWriter<ChatCompletionChunk> writer, ChatCompletionChunk chunk, CancellationToken token) =>
        writer.TryWrite(chunk) ? ValueTask.CompletedTask : writer.WriteAsync(chunk, token);

    /// <summary>Text, a tool call or a refusal: what a caller has seen once it is sent.</summary>
    private static bool CarriesContent(ChatCompletionChunk chunk)
    {
        foreach (var choice in chunk.Choices)
        {
            var d = choice.Delta;
            if (!string.IsNullOrEmpty(d.Content) || d.ToolCalls is { Count: > 0 } || !string.IsNullOrEmpty(d.Refusal))
            {
                return true;
            }
        }

        return false;
    }

    private void OnAttemptFailed(WorkItem item, Deployment deployment, long started, Exception ex) =>
        OnAttemptFailedAfter(item, deployment, Name, _pipeline!.Time.GetElapsedTime(started), ex);

    private void OnAttemptFailedAfter(WorkItem item, Deployment deployment, string provider, TimeSpan latency, Exception ex)
    {
        var pipeline = _pipeline!;
        var failure = Classify(item, ex);

        if (item.StreamStarted)
        {
            // Output already reached the caller: the stream ends with an error, no fallback. The attempt is listed with
            // its real outcome.
            item.AddAttempt(deployment, failure.ToAttempt(provider, deployment.Model, latency));
            pipeline.Metrics.OnAttempt(item.FinalAttempts[^1]);
            pipeline.Selector.Health.Report(deployment, failure.Outcome, latency, failure.RetryAfter);
            // A cancellation can reach us before the item's own cancellation callback has run (callbacks run
            // in reverse order, and continuations may run inline): answer with the cancellation ourselves.
            item.TryFail(failure.Outcome == AttemptOutcome.Cancelled
                ? item.CancellationError()
                : new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), $"the stream from '{provider}' broke after it started: {failure.Message}"));

            pipeline.Retire(item);
            return;
        }

        Record(item, deployment, failure.ToAttempt(provider, deployment.Model, latency), failure.RetryAfter);
        item.LastFailure = failure;

        // Never waits: the dead-letter channel holds MaxInFlight items (see GatewayPipeline).
        if (!pipeline.DeadLetter.Writer.TryWrite(item))
        {
            pipeline.FailAndRetire(item, item.IsCompleted ? item.Failure! : new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    /// <summary>Adds the attempt to the request, and reports it to metrics and to the health tracker (which owns 429 pauses).</summary>
    private void Record(WorkItem item, Deployment deployment, GatewayAttempt attempt, TimeSpan? retryAfter)
    {
        if (ReferenceEquals(item.Current, deployment))
        {
            item.ReleaseDeployment();
        }

        item.AddAttempt(deployment, attempt);
        _pipeline!.Metrics.OnAttempt(attempt);
        _pipeline.Selector.Health.Report(deployment, attempt.Outcome, attempt.Latency, retryAfter, attempt.StatusCode is { } s ? $"{s}: {attempt.Error}" : attempt.Error);
    }

    private static ProviderFailure Classify(WorkItem item, Exception ex) => FailureClassifier.Classify(item, ex);

    [LoggerMessage(EventId = 20, Level = LogLevel.Error, Message = "Worker of provider {Provider} failed while handling a request.")]
    private static partial void LogWorkerError(ILogger logger, Exception exception, string provider);
}

/// <summary>Room reserved at a provider for a hedge: a concurrency permit held, and the rate limits' charge.</summary>
internal readonly record struct ProviderReservation(ProviderRateLimiter.Charge? Charge);

/// <summary>Every provider's worker pool, by name.</summary>
internal sealed class ProviderPools(IReadOnlyList<ProviderWorkerPool> pools)
{
    private readonly Dictionary<string, ProviderWorkerPool> _byName = pools.ToDictionary(p => p.Name, StringComparer.Ordinal);

    public IReadOnlyList<ProviderWorkerPool> All { get; } = pools;

    public bool TryGet(string name, out ProviderWorkerPool pool) => _byName.TryGetValue(name, out pool!);
}
