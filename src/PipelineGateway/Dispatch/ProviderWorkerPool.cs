using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Dispatch;

/// <summary>
/// One provider's bounded queue and its workers. Each worker makes one attempt at a time, so the
/// number of workers is the provider's maximum concurrency. A success answers the caller here; a
/// failure becomes a value on the item and goes to the dead-letter stage, which decides what next.
/// </summary>
internal sealed partial class ProviderWorkerPool
{
    private readonly Channel<WorkItem> _queue;
    private readonly int _workers;
    private readonly ILogger _logger;
    private GatewayPipeline? _pipeline;
    private Task[] _running = [];

    private readonly int? _requestsPerMinute;
    private readonly int? _tokensPerMinute;

    public ProviderWorkerPool(ILlmProvider provider, int workers, int queueCapacity, ILogger logger, int? requestsPerMinute = null, int? tokensPerMinute = null)
    {
        _requestsPerMinute = requestsPerMinute;
        _tokensPerMinute = tokensPerMinute;
        Provider = provider;
        _workers = workers;
        QueueCapacity = queueCapacity;
        _logger = logger;
        _permits = new SemaphoreSlim(workers, workers);
        _queue = Channel.CreateBounded<WorkItem>(new BoundedChannelOptions(queueCapacity)
        {
            FullMode = BoundedChannelFullMode.Wait,
            SingleReader = workers == 1,
            SingleWriter = true,
        });
    }

    public string Name => Provider.Name;

    public ILlmProvider Provider { get; }

    public int QueueCapacity { get; }

    public int Workers => _workers;

    public int QueueDepth => _queue.Reader.Count;

    /// <summary>Attempts running against the provider right now.</summary>
    public long InFlight => _workers - _permits.CurrentCount;

    public ChannelWriter<WorkItem> Writer => _queue.Writer;

    /// <summary>The provider's RPM/TPM limits and 429 pause.</summary>
    internal ProviderRateLimiter Limits { get; private set; } = null!;

    public void Start(GatewayPipeline pipeline, CancellationToken stop)
    {
        _pipeline = pipeline;
        Limits = new ProviderRateLimiter(_requestsPerMinute, _tokensPerMinute, pipeline.Time);
        _running = new Task[_workers];
        for (var i = 0; i < _workers; i++)
        {
            _running[i] = Task.Run(() => WorkerLoopAsync(stop), CancellationToken.None);
        }
    }

    public Task Completion => Task.WhenAll(_running);

    private async Task WorkerLoopAsync(CancellationToken stop)
    {
        // ReadAsync, not WaitToReadAsync + TryRead: the workers share one queue, and a written item completes every
        // reader waiting in WaitToReadAsync — with 256 idle workers, 256 wake-ups (and 255 fresh waits) for one
        // request. A waiting ReadAsync is handed exactly one item, so one item wakes one worker. Measured at
        // 2,000 req/s: the wake-ups were a third of all the gateway's allocations (docs/benchmarks.md).
        var reader = _queue.Reader;
        try
        {
            while (true)
            {
                if (!reader.TryRead(out var item))
                {
                    item = await reader.ReadAsync(stop).ConfigureAwait(false);
                }

                try
                {
                    await AttemptAsync(item).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    LogWorkerError(_logger, ex, Name);
                    _pipeline!.FailAndRetire(item, new GatewayUnavailableException("The gateway failed while handling the request."));
                }
            }
        }
        catch (ChannelClosedException)
        {
            // The queue was completed and drained: the pool is stopping.
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async ValueTask AttemptAsync(WorkItem item)
    {
        var pipeline = _pipeline!;
        var deployment = item.Current!;
        try
        {
            if (item.IsCompleted)
            {
                deployment.State.OnNeutral();
                pipeline.Retire(item);
                return;
            }

            if (pipeline.IsFailingRemaining)
            {
                // Shutdown's grace period is over: start nothing new upstream.
                item.Cancel(CancelReason.Shutdown);
                deployment.State.OnNeutral();
                pipeline.FailAndRetire(item, item.CancellationError());
                return;
            }

            // A request whose deadline passed while it waited in the queue is never sent upstream.
            if (pipeline.Time.GetUtcNow() >= item.Deadline)
            {
                item.Cancel(CancelReason.Deadline);
                deployment.State.OnNeutral();
                pipeline.FailAndRetire(item, item.CancellationError());
                return;
            }

            if (item.Group.Hedging is { } hedging && !item.IsStream)
            {
                await HedgedAttemptAsync(item, deployment, hedging.Delay).ConfigureAwait(false);
            }
            else
            {
                await SingleAttemptAsync(item, deployment).ConfigureAwait(false);
            }
        }
        finally
        {
            item.ReleaseDeployment();
        }
    }

    /// <summary>One attempt, holding one of this provider's concurrency permits.</summary>
    private async ValueTask SingleAttemptAsync(WorkItem item, Deployment deployment)
    {
        var pipeline = _pipeline!;
        var started = pipeline.Time.GetTimestamp();
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
            OnAttemptFailed(item, deployment, started, ex);
            return;
        }

        if (response is not null)
        {
            // After the permit is back: the caller may be resumed on this thread (see WorkItem.TryComplete).
            pipeline.CompleteSuccess(item, deployment, response);
        }
    }

    /// <summary>
    /// Hedging: if the first attempt has not answered after <paramref name="delay"/>, a second goes to another
    /// healthy deployment (holding a permit of that provider, so its concurrency limit still holds). The first
    /// success answers the caller and the other attempt is cancelled; if both fail, the later failure goes to
    /// the dead-letter stage with both attempts listed.
    /// </summary>
    private async ValueTask HedgedAttemptAsync(WorkItem item, Deployment primary, TimeSpan delay)
    {
        var pipeline = _pipeline!;
        using var primaryCts = CancellationTokenSource.CreateLinkedTokenSource(item.Token);

        // The hedge clock starts before the first attempt does.
        var timer = Task.Delay(delay, pipeline.Time, primaryCts.Token);
        var primaryTask = RunAsync(this, primary, item, ownPermit: true, primaryCts.Token);
        if (await Task.WhenAny(primaryTask, timer).ConfigureAwait(false) == primaryTask)
        {
            await primaryCts.CancelAsync().ConfigureAwait(false); // stops the hedge timer; the attempt is over
            await FinishAsync(item, primaryTask.Result, null).ConfigureAwait(false);
            return;
        }

        Deployment[] scratch = [];
        var other = pipeline.Selector.Select(item, item.Group, ref scratch, exclude: primary);
        ProviderRateLimiter.Charge? hedgeCharge = null;
        if (other is not null && (other.Pool.Limits.TryAcquire(other.Pool.Limits.CountsTokens ? item.EstimatedTokens : 0, out hedgeCharge) != TimeSpan.Zero || !other.Pool.TryAcquirePermit()))
        {
            other.Pool.Limits.Settle(hedgeCharge, 0); // a hedge is only sent if its provider has room right now
            other.State.OnNeutral(); // give back a half-open probe we will not use
            other = null;
        }

        if (other is null)
        {
            // Nowhere to hedge to right now: wait for the first attempt.
            await FinishAsync(item, await primaryTask.ConfigureAwait(false), null).ConfigureAwait(false);
            return;
        }

        pipeline.Metrics.OnHedge();
        other.State.Enter();
        using var hedgeCts = CancellationTokenSource.CreateLinkedTokenSource(item.Token);
        var hedgeTask = RunAsync(other.Pool, other, item, ownPermit: false, hedgeCts.Token, hedgeCharge);
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
                return;
            }

            var secondResult = await second.ConfigureAwait(false);
            await FinishAsync(item, secondResult, firstResult).ConfigureAwait(false);
        }
        finally
        {
            other.State.Exit();
        }
    }

    /// <summary>The outcome of one hedged leg, as a value.</summary>
    private readonly record struct Leg(Deployment Deployment, ProviderWorkerPool Pool, ChatCompletionResponse? Response, Exception? Error, TimeSpan Latency);

    private static async Task<Leg> RunAsync(ProviderWorkerPool pool, Deployment deployment, WorkItem item, bool ownPermit, CancellationToken token, ProviderRateLimiter.Charge? hedgeCharge = null)
    {
        var charge = hedgeCharge;
        var time = pool._pipeline!.Time;
        var started = time.GetTimestamp();
        var holding = !ownPermit; // a hedge leg's permit was taken by the caller
        try
        {
            if (ownPermit)
            {
                charge = await pool.AcquireRateAsync(item).ConfigureAwait(false);
                await pool.AcquirePermitAsync(token).ConfigureAwait(false);
                holding = true;
                started = time.GetTimestamp();
            }

            var response = await pool.Provider.CompleteAsync(new ProviderRequest(item.Request, deployment.Model), token).ConfigureAwait(false);
            pool.Limits.Settle(charge, response.Usage?.TotalTokens ?? charge?.Tokens ?? 0);
            return new Leg(deployment, pool, response, null, time.GetElapsedTime(started));
        }
        catch (Exception ex)
        {
            pool.Limits.Settle(charge, 0);
            return new Leg(deployment, pool, null, ex, time.GetElapsedTime(started));
        }
        finally
        {
            if (holding)
            {
                pool.ReleasePermit();
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
                loser.Pool.Record(item, loser.Deployment, new GatewayAttempt(loser.Pool.Name, loser.Deployment.Model, failure.Outcome, loser.Latency, failure.StatusCode, failure.Message), failure.RetryAfter);
            }

            result.Pool.Record(item, result.Deployment, new GatewayAttempt(result.Pool.Name, result.Deployment.Model, AttemptOutcome.Success, result.Latency), null);
            pipeline.CompleteSuccess(item, result.Deployment, response);
            return ValueTask.CompletedTask;
        }

        if (other is { } earlier)
        {
            var f = Classify(item, earlier.Error!);
            earlier.Pool.Record(item, earlier.Deployment, new GatewayAttempt(earlier.Pool.Name, earlier.Deployment.Model, f.Outcome, earlier.Latency, f.StatusCode, f.Message), f.RetryAfter);
        }

        result.Pool.OnAttemptFailedAfter(item, result.Deployment, result.Latency, result.Error!);
        return ValueTask.CompletedTask;
    }

    private readonly SemaphoreSlim _permits;

    private ValueTask<ProviderRateLimiter.Charge?> AcquireRateAsync(WorkItem item)
    {
        // The synchronous try covers the common case (no limit, or room now) without an async state machine.
        var tokens = Limits.CountsTokens ? item.EstimatedTokens : 0;
        return Limits.TryAcquire(tokens, out var charge) == TimeSpan.Zero
            ? ValueTask.FromResult(charge)
            : Limits.AcquireAsync(tokens, item.Token);
    }

    private ValueTask AcquirePermitAsync(CancellationToken token) =>
        _permits.Wait(0, CancellationToken.None) ? ValueTask.CompletedTask : new ValueTask(_permits.WaitAsync(token));

    /// <summary>Takes a concurrency permit without waiting (for a hedge borrowing this provider).</summary>
    internal bool TryAcquirePermit() => _permits.Wait(0, CancellationToken.None);

    private void ReleasePermit() => _permits.Release();

    private async ValueTask StreamAttemptAsync(WorkItem item, Deployment deployment, long started)
    {
        var pipeline = _pipeline!;
        var writer = item.Chunks!.Writer;
        var first = true;
        var replay = item.CacheKey is not null ? new Caching.StreamReplay() : null; // a finished stream is cached whole
        await foreach (var chunk in Provider.StreamAsync(new ProviderRequest(item.Request, deployment.Model), item.Token).ConfigureAwait(false))
        {
            if (first)
            {
                // From here on the caller has seen output: no fallback can be invisible any more.
                Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, pipeline.Time.GetElapsedTime(started)), null);
                chunk.Gateway = pipeline.Metrics.Describe(item, deployment, null);
                pipeline.Metrics.OnFirstToken(pipeline.Time.GetElapsedTime(item.StartTimestamp));
                item.StreamStarted = true;
                first = false;
            }

            if (chunk.Usage is { } usage)
            {
                item.StreamUsage = usage;
            }

            replay?.Add(chunk);

            if (!writer.TryWrite(chunk))
            {
                await writer.WriteAsync(chunk, item.Token).ConfigureAwait(false);
            }
        }

        if (first)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, "The provider ended the stream without any chunk.");
        }

        // The caller has had the chunks; this whole answer carries the usage and cost for metrics (and the cache).
        var whole = replay?.ToResponse() ?? new ChatCompletionResponse { Model = deployment.Model, Usage = item.StreamUsage };
        whole.Gateway = pipeline.Metrics.Describe(item, deployment, whole.Usage);
        if (replay is not null && item.CacheKey is { } key)
        {
            // Only a stream that ended normally is stored; a broken one never reaches here.
            pipeline.Cache.Set(key, whole, item.Request.Gateway?.CacheTtl);
        }

        item.TryComplete(whole);
        pipeline.Retire(item);
    }


    private void OnAttemptFailed(WorkItem item, Deployment deployment, long started, Exception ex) =>
        OnAttemptFailedAfter(item, deployment, _pipeline!.Time.GetElapsedTime(started), ex);

    private void OnAttemptFailedAfter(WorkItem item, Deployment deployment, TimeSpan latency, Exception ex)
    {
        var pipeline = _pipeline!;
        var failure = Classify(item, ex);

        if (item.StreamStarted)
        {
            // Output already reached the caller: the stream ends with an error, no fallback.
            pipeline.Selector.Health.Report(deployment, failure.Outcome, latency, failure.RetryAfter);
            // A cancellation can reach us before the item's own cancellation callback has run (callbacks run
            // in reverse order, and continuations may run inline): answer with the cancellation ourselves.
            item.TryFail(failure.Outcome == AttemptOutcome.Cancelled
                ? item.CancellationError()
                : new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), $"the stream from '{Name}' broke after it started: {failure.Message}"));

            pipeline.Retire(item);
            return;
        }

        Record(item, deployment, new GatewayAttempt(Name, deployment.Model, failure.Outcome, latency, failure.StatusCode, failure.Message), failure.RetryAfter);
        item.LastFailure = failure;

        // Never waits: the dead-letter channel holds MaxInFlight items (see GatewayPipeline).
        if (!pipeline.DeadLetter.Writer.TryWrite(item))
        {
            pipeline.FailAndRetire(item, item.IsCompleted ? item.Failure! : new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    /// <summary>Adds the attempt to the request, and reports it to metrics and to the health tracker.</summary>
    private void Record(WorkItem item, Deployment deployment, GatewayAttempt attempt, TimeSpan? retryAfter)
    {
        if (ReferenceEquals(item.Current, deployment))
        {
            item.ReleaseDeployment();
        }

        if (attempt.Outcome == AttemptOutcome.RateLimited)
        {
            // The provider said 429: the whole pool slows down until its Retry-After.
            Limits.Pause(retryAfter ?? _pipeline!.Selector.Health.Options.RateLimitCooldown);
        }

        item.AddAttempt(deployment, attempt);
        _pipeline!.Metrics.OnAttempt(attempt);
        _pipeline.Selector.Health.Report(deployment, attempt.Outcome, attempt.Latency, retryAfter);
    }

    private static ProviderFailure Classify(WorkItem item, Exception ex)
    {
        if (item.Token.IsCancellationRequested && ex is OperationCanceledException)
        {
            return new ProviderFailure(AttemptOutcome.Cancelled, null, null, item.Reason.ToString().ToLowerInvariant());
        }

        return ex switch
        {
            ProviderException p => new ProviderFailure(p.Outcome, p.StatusCode, p.RetryAfter, p.Message),

            // The provider's own timeout (HttpClient, resilience handler) rather than ours.
            OperationCanceledException or TimeoutException => new ProviderFailure(AttemptOutcome.Timeout, null, null, "The attempt timed out."),
            HttpRequestException h => new ProviderFailure(h.StatusCode is { } s ? ProviderException.Classify((int)s) : AttemptOutcome.RetryableError, (int?)h.StatusCode, null, "Connection to the provider failed."),
            _ => new ProviderFailure(AttemptOutcome.RetryableError, null, null, $"The provider failed unexpectedly ({ex.GetType().Name})."),
        };
    }

    [LoggerMessage(EventId = 20, Level = LogLevel.Error, Message = "Worker of provider {Provider} failed while handling a request.")]
    private static partial void LogWorkerError(ILogger logger, Exception exception, string provider);
}

/// <summary>Every provider's worker pool, by name.</summary>
internal sealed class ProviderPools(IReadOnlyList<ProviderWorkerPool> pools)
{
    private readonly Dictionary<string, ProviderWorkerPool> _byName = pools.ToDictionary(p => p.Name, StringComparer.Ordinal);

    public IReadOnlyList<ProviderWorkerPool> All { get; } = pools;

    public bool TryGet(string name, out ProviderWorkerPool pool) => _byName.TryGetValue(name, out pool!);
}
