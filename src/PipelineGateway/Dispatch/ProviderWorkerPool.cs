using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Routing.Health;

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
    private WorkerServices? _services;
    private readonly HealthTracker _health;
    private readonly TimeProvider _time;
    private Task[] _running = [];

    private readonly int? _requestsPerMinute;
    private readonly int? _tokensPerMinute;

    public ProviderWorkerPool(ILlmProvider provider, int workers, int queueCapacity, ILogger logger, Hosting.FairnessOptions fairness, TimeProvider time, HealthTracker health, int? requestsPerMinute = null, int? tokensPerMinute = null)
    {
        _health = health;
        _time = time;
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
    public TimeSpan ExpectedWait => _queue.ExpectedWait(_health.PausedFor(Name), Limits.RequestInterval, Stalled);

    /// <summary>How long every concurrency permit has been held with none given back (zero while one is free).</summary>
    private TimeSpan Stalled => _permits.CurrentCount == 0 ? _time.GetElapsedTime(Volatile.Read(ref _lastRelease)) : TimeSpan.Zero;

    private long _lastRelease;

    /// <summary>How long the provider must not be called yet (a 429's pause, owned by the health tracker).</summary>
    public TimeSpan PausedFor => _health.PausedFor(Name);

    /// <summary>How long requests waited in this provider's queue before a worker took them.</summary>
    public (double P50Ms, double P99Ms, double MaxMs) QueueWaits => _queue.Waits;

    /// <summary>The measured time a worker is occupied per request.</summary>
    public TimeSpan ServiceTime => _queue.ServiceTime;

    /// <summary>
    /// Offers a request to this provider's queue: taken if its expected wait is at most <paramref name="maxWait"/>
    /// (counting a 429 pause and the requests-per-minute limit), refused at once otherwise. Never waits.
    /// </summary>
    public QueueOffer Offer(WorkItem item, TimeSpan maxWait, out WorkItem? pushedOut) =>
        _queue.Offer(item, maxWait, _health.PausedFor(Name), Limits.RequestInterval, Stalled, out pushedOut);

    /// <summary>Starts the workers; <paramref name="services"/> is where their requests go next and what they report to.</summary>
    public void Start(WorkerServices services, CancellationToken stop)
    {
        _services = services;
        _lastRelease = _time.GetTimestamp();
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
            _services!.Lifecycle.FailAndRetire(item, new GatewayUnavailableException("The gateway shut down before the request reached its provider."));
        }
    }

    private async Task WorkerLoopAsync()
    {
        // Each worker parks its own reusable signal while idle, and a request is handed to exactly one parked worker
        // (no thundering herd of wake-ups, no allocation per wait: docs/benchmarks.md).
        var signal = new WorkerSignal();
        while (await NextAsync(signal).ConfigureAwait(false) is { } item)
        {
            // Past the attempt the item may be another stage's (dead-letter) or, retired, another request's: what the
            // queue needs back from it is taken now.
            var lane = ProviderQueue.TakeLane(item);
            TimeSpan? service = null;
            try
            {
                service = await AttemptAsync(item).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                LogWorkerError(_logger, ex, Name);
                _services!.Lifecycle.FailAndRetire(item, new GatewayUnavailableException("The gateway failed while handling the request."));
            }
            finally
            {
                if (_queue.Done(lane, service) is { } refused)
                {
                    RefuseLate(refused);
                }
            }

            if (WorkerSignal.OnLentThread)
            {
                await Task.Yield(); // the front door's thread is given back after one attempt (WorkerSignal)
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

            _services!.Metrics.OnOverloaded();
            _services!.Lifecycle.FailAndRetire(item, new ProviderOverloadedException(item.Request.Model, service, service * refused.Count / Workers, item.SnapshotAttempts(),
                $"The provider of model '{item.Request.Model}' turned out slower than the request may wait (its first answers took {service.TotalSeconds:F1} s); retry after {service.TotalSeconds:F1} s."));
        }
    }

    private ValueTask<WorkItem?> NextAsync(WorkerSignal signal)
    {
        var next = _queue.NextAsync(signal, out var unparked);
        if (unparked is not null)
        {
            // Room was freed: a waiting caller's request parked for it goes back to the router (with a slot again).
            _services!.Lifecycle.Resume(unparked, this);
        }

        return next;
    }

    /// <summary>A request unparked for room here did not take it: the next parked one gets the chance.</summary>
    public void PassRoomOn()
    {
        if (_queue.UnparkNext() is { } next)
        {
            _services!.Lifecycle.Resume(next, this);
        }
    }

    /// <summary>
    /// Parks a waiting caller's request that found this provider's queue full: it gives its in-flight slot back and
    /// waits here until the queue has room. False when the queue has room again (offer again) or stopped.
    /// </summary>
    public bool Park(WorkItem item) => _queue.Park(item);

    /// <summary>Requests parked for room in this provider's queue.</summary>
    public int Parked => _queue.Parked;

    /// <summary>Workers parked with nothing to do.</summary>
    public int IdleWorkers => _queue.IdleWorkers;

    /// <summary>True while the queue is full or requests are parked for it.</summary>
    public bool IsSaturated => _queue.IsSaturated;

    /// <summary>Completes when the queue stops being saturated.</summary>
    public Task RoomAsync() => _queue.RoomAsync();

    /// <summary>Makes the request's attempt here; returns how long it occupied the provider (null: none was sent).</summary>
    /// <remarks>
    /// Not async itself: the checks before sending are synchronous, and the attempt's own async method (which releases
    /// the deployment when it ends) is returned as it is — one async state machine per request fewer (~170 B).
    /// </remarks>
    private ValueTask<TimeSpan?> AttemptAsync(WorkItem item)
    {
        var deployment = item.Current!;
        bool send;
        try
        {
            send = ReadyToSend(item, deployment);
        }
        catch
        {
            item.ReleaseDeployment();
            throw;
        }

        if (!send)
        {
            return new ValueTask<TimeSpan?>((TimeSpan?)null);
        }

        return item.Group.Hedging is { } hedging && !item.IsStream
            ? HedgedAttemptAsync(item, deployment, hedging.Delay)
            : SingleAttemptAsync(item, deployment);
    }

    /// <summary>
    /// False when the request must not be sent (already answered, shutdown's grace over, deadline passed): it then leaves
    /// the deployment's load and is retired here.
    /// </summary>
    private bool ReadyToSend(WorkItem item, Deployment deployment)
    {
        var services = _services!;
        if (item.IsCompleted)
        {
            LeaveUnsent(item, deployment);
            services.Lifecycle.Retire(item);
            return false;
        }

        if (services.Lifecycle.IsFailingRemaining)
        {
            // Shutdown's grace period is over: start nothing new upstream.
            item.Cancel(CancelReason.Shutdown);
            LeaveUnsent(item, deployment);
            services.Lifecycle.FailAndRetire(item, item.CancellationError());
            return false;
        }

        // A request whose deadline passed while it waited in the queue is never sent upstream. (Its due timestamp, the
        // one the deadline timers use: a monotonic read, not the wall clock's.)
        if (_time.GetTimestamp() >= item.DeadlineDue)
        {
            item.Cancel(CancelReason.Deadline);
            LeaveUnsent(item, deployment);
            services.Lifecycle.FailAndRetire(item, item.CancellationError());
            return false;
        }

        return true;
    }

    /// <summary>A request not sent after all leaves the deployment's load, neither a success nor a failure of it.</summary>
    private static void LeaveUnsent(WorkItem item, Deployment deployment)
    {
        item.ReleaseDeployment();
        deployment.State.OnNeutral();
    }

    /// <summary>One attempt, holding one of this provider's concurrency permits.</summary>
    private async ValueTask<TimeSpan?> SingleAttemptAsync(WorkItem item, Deployment deployment)
    {
        var handedOn = false;
        try
        {
            var services = _services!;
            var started = _time.GetTimestamp();
            var ended = 0L;
            var sent = false;
            ProviderRateLimiter.Charge? charge = null;
            ChatCompletionResponse? response = null;
            try
            {
                // Rate first (holding no concurrency permit while waiting), then a concurrency permit. The attempt's time
                // starts when both are held: read again only if either had to wait (clock reads were ~20% of the
                // in-process path's samples, docs/benchmarks.md).
                var rate = AcquireRateAsync(item);
                var waited = !rate.IsCompleted;
                charge = await rate.ConfigureAwait(false);
                var permit = AcquirePermitAsync(item.Token);
                waited |= !permit.IsCompleted;
                await permit.ConfigureAwait(false);
                try
                {
                    if (waited)
                    {
                        started = _time.GetTimestamp();
                    }

                    sent = true;
                    item.Sending(deployment, started);
                    var span = services.Tracing.StartAttempt(item, Name, deployment, hedge: false);
                    try
                    {
                        if (item.IsStream)
                        {
                            await StreamAttemptAsync(item, deployment, started).ConfigureAwait(false);
                            Limits.Settle(charge, item.StreamUsage?.TotalTokens ?? charge?.Tokens ?? 0);
                        }
                        else
                        {
                            response = ProviderAnswer.Accept(await CompleteAsync(item, deployment, item.Token).ConfigureAwait(false), Name);
                            ended = _time.GetTimestamp(); // the attempt's latency, the service time and the permit's release
                            Limits.Settle(charge, response.Usage?.TotalTokens ?? charge?.Tokens ?? 0);
                            Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, _time.GetElapsedTime(started, ended)), null);
                        }

                        Tracing.GatewayTracing.EndAttempt(span, response, null);
                    }
                    catch (Exception ex)
                    {
                        Tracing.GatewayTracing.EndAttempt(span, null, ex);
                        throw;
                    }
                }
                finally
                {
                    ReleasePermit(ended);
                }
            }
            catch (Exception ex)
            {
                Limits.Settle(charge, 0);
                var service = sent ? _time.GetElapsedTime(started) : (TimeSpan?)null;
                item.ReleaseDeployment();
                handedOn = true;
                OnAttemptFailed(item, deployment, started, ex);
                return service;
            }

            var took = _time.GetElapsedTime(started, _time.OrNow(ended));
            item.ReleaseDeployment();
            handedOn = true;
            if (response is not null)
            {
                // After the permit is back: the caller may be resumed on this thread (see WorkItem.TryComplete).
                Answer(item, deployment, response, ended);
            }

            return took;
        }
        finally
        {
            // The deployment's load is let go of once the attempt ends, however it ends (idempotent: usually done
            // already) — before the item moves on: past that it may be another stage's, or another request's.
            if (!handedOn)
            {
                item.ReleaseDeployment();
            }
        }
    }

    /// <summary>
    /// One whole answer from the provider: a chat completion, or for another API's request (<see cref="ChatCompletionRequest.Operation"/>:
    /// embeddings, moderations) its answer, checked (<see cref="Operations.Accept"/>); a provider without such APIs refuses it.
    /// </summary>
    private ValueTask<ChatCompletionResponse> CompleteAsync(WorkItem item, Deployment deployment, CancellationToken token)
    {
        var request = new ProviderRequest(item.Request, deployment.Model) { Deadline = item.Deadline };
        if (TextCompletions.Refusal(Provider, item.Request, deployment.Model) is { } refusal)
        {
            return ValueTask.FromException<ChatCompletionResponse>(refusal); // a text completion only a native route can serve
        }

        return item.Request.Operation is null ? Provider.CompleteAsync(request, token) : SendAsync(request, token);
    }

    private async ValueTask<ChatCompletionResponse> SendAsync(ProviderRequest request, CancellationToken token) =>
        Provider is IOperationProvider operations
            ? Operations.Accept(await operations.SendAsync(request, token).ConfigureAwait(false), request.Request, Name)
            : throw Operations.NotServed(Name, request.Request.Operation!, request.Request.Model);

    private void OnAttemptFailed(WorkItem item, Deployment deployment, long started, Exception ex) =>
        OnAttemptFailedAfter(item, deployment, Name, _time.GetElapsedTime(started), ex);

    private void OnAttemptFailedAfter(WorkItem item, Deployment deployment, string provider, TimeSpan latency, Exception ex)
    {
        var services = _services!;
        var failure = Classify(item, deployment, ex);

        if (item.StreamStarted)
        {
            // Output already reached the caller: the stream ends with an error, no fallback. The attempt is listed with
            // its real outcome.
            item.AddAttempt(deployment, failure.ToAttempt(provider, deployment.Model, latency));
            services.Metrics.OnAttempt(item.FinalAttempts[^1]);
            _health.Report(deployment, failure.Outcome, latency, failure.RetryAfter);
            // A cancellation can reach us before the item is answered (WorkItem.Cancel fires the token first, and
            // continuations may run inline): answer with the cancellation ourselves.
            item.TryFail(failure.Outcome == AttemptOutcome.Cancelled
                ? item.CancellationError()
                : new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), $"the stream from '{provider}' broke after it started: {failure.Message}"));

            services.Lifecycle.Retire(item);
            return;
        }

        Record(item, deployment, failure.ToAttempt(provider, deployment.Model, latency), failure.RetryAfter);
        item.LastFailure = failure;

        // Never waits: the dead-letter channel holds MaxInFlight items (see GatewayPipeline).
        if (!services.DeadLetter.TryWrite(item))
        {
            services.Lifecycle.FailAndRetire(item, item.IsCompleted ? item.Failure! : new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    /// <summary>Adds the attempt to the request, and reports it to metrics and to the health tracker (which owns 429 pauses).</summary>
    private void Record(WorkItem item, Deployment deployment, GatewayAttempt attempt, TimeSpan? retryAfter)
    {
        if (ReferenceEquals(item.Current, deployment))
        {
            item.ReleaseDeployment();
        }

        if (attempt.Outcome == AttemptOutcome.Success)
        {
            deployment.Owner.Establish(); // a name a wildcard took is a model once an upstream answered it (before it is counted)
        }

        item.AddAttempt(deployment, attempt);
        _services!.Metrics.OnAttempt(attempt);
        _health.Report(deployment, attempt.Outcome, attempt.Latency, retryAfter, attempt.StatusCode is { } s ? $"{s}: {attempt.Error}" : attempt.Error);
    }

    /// <summary>
    /// A provider answered: describe how, fill the cache, answer the caller, let go. This worker holds no permit any
    /// more, so a caller that asked for it is resumed right here (<see cref="WorkItem.TryComplete"/>).
    /// </summary>
    /// <param name="ended">When the upstream's answer came (a timestamp, 0: read one): the request's latency ends there.</param>
    private void Answer(WorkItem item, Deployment deployment, ChatCompletionResponse response, long ended = 0)
    {
        var services = _services!;
        ProviderAnswer.Fill(response, item, deployment.Model, _time);
        if (response.Usage is null)
        {
            response.Usage = Admission.TokenCounter.EstimateUsage(item.Request, response, 0, deployment.Model, item.PromptTokensIfCounted);
            response.DropUpstreamJson(); // the estimate is written: the upstream's bytes had none (kept bytes always have one)
        }

        response.Gateway = ResponseInfo.Answered(item, deployment, response.Usage, services.Pricing, _time, now: ended);
        services.Cache.Store(item, response);
        item.TryComplete(response, fromWorker: true);
        services.Lifecycle.Retire(item);
    }

    private static ProviderFailure Classify(WorkItem item, Deployment deployment, Exception ex)
    {
        var failure = FailureClassifier.Classify(item, ex);
        if (failure is { Outcome: AttemptOutcome.DeploymentUnavailable, StatusCode: 404 } && deployment.Owner.Wildcard is not null && SaysNoSuchModel(failure))
        {
            // Through a wildcard the caller chose the upstream model: a 404 saying no such model is the caller's mistake,
            // not the deployment's (its other models are fine, so it stays in rotation), answered 404 with the upstream's
            // words once no other deployment knows the model (DeadLetterStage).
            return failure with { Outcome = AttemptOutcome.NonRetryableError, UnknownModel = true };
        }

        return failure;
    }

    /// <summary>
    /// A 404 about the model (OpenAI's <c>model_not_found</c>; vLLM's, Ollama's and Anthropic's words name the model) —
    /// not one about the path (<c>{"detail":"Not Found"}</c>, an HTML page: a wrong <c>BaseUrl</c>, the gateway's
    /// configuration, which takes the deployment out of rotation as for a configured one).
    /// </summary>
    private static bool SaysNoSuchModel(ProviderFailure failure) =>
        failure.ErrorCode == "model_not_found" || failure.UpstreamMessage?.Contains("model", StringComparison.OrdinalIgnoreCase) == true;

    [LoggerMessage(EventId = 20, Level = LogLevel.Error, Message = "Worker of provider {Provider} failed while handling a request.")]
    private static partial void LogWorkerError(ILogger logger, Exception exception, string provider);
}
