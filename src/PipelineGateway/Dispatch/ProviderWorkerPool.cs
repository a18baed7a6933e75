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
    private long _inFlight;

    public ProviderWorkerPool(ILlmProvider provider, int workers, int queueCapacity, ILogger logger)
    {
        Provider = provider;
        _workers = workers;
        QueueCapacity = queueCapacity;
        _logger = logger;
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
    public long InFlight => Interlocked.Read(ref _inFlight);

    public ChannelWriter<WorkItem> Writer => _queue.Writer;

    public void Start(GatewayPipeline pipeline, CancellationToken stop)
    {
        _pipeline = pipeline;
        _running = new Task[_workers];
        for (var i = 0; i < _workers; i++)
        {
            _running[i] = Task.Run(() => WorkerLoopAsync(stop), CancellationToken.None);
        }
    }

    public Task Completion => Task.WhenAll(_running);

    private async Task WorkerLoopAsync(CancellationToken stop)
    {
        var reader = _queue.Reader;
        try
        {
            while (await reader.WaitToReadAsync(stop).ConfigureAwait(false))
            {
                while (reader.TryRead(out var item))
                {
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
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async ValueTask AttemptAsync(WorkItem item)
    {
        var pipeline = _pipeline!;
        if (item.IsCompleted)
        {
            pipeline.Retire(item);
            return;
        }

        if (pipeline.IsFailingRemaining)
        {
            // Shutdown's grace period is over: start nothing new upstream.
            item.Cancel(CancelReason.Shutdown);
            pipeline.FailAndRetire(item, item.CancellationError());
            return;
        }

        var deployment = item.Current!;
        var time = pipeline.Time;

        // A request whose deadline passed while it waited in the queue is never sent upstream.
        if (time.GetUtcNow() >= item.Deadline)
        {
            item.Cancel(CancelReason.Deadline);
            pipeline.FailAndRetire(item, item.CancellationError());
            return;
        }

        var started = time.GetTimestamp();
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (item.IsStream)
            {
                await StreamAttemptAsync(item, deployment, started).ConfigureAwait(false);
            }
            else
            {
                var response = await Provider.CompleteAsync(new ProviderRequest(item.Request, deployment.Model), item.Token).ConfigureAwait(false);
                var latency = time.GetElapsedTime(started);
                Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, latency));
                pipeline.CompleteSuccess(item, deployment, response);
            }
        }
        catch (Exception ex)
        {
            OnAttemptFailed(item, deployment, started, ex);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private async ValueTask StreamAttemptAsync(WorkItem item, Deployment deployment, long started)
    {
        var pipeline = _pipeline!;
        var writer = item.Chunks!.Writer;
        var first = true;
        await foreach (var chunk in Provider.StreamAsync(new ProviderRequest(item.Request, deployment.Model), item.Token).ConfigureAwait(false))
        {
            if (first)
            {
                // From here on the caller has seen output: no fallback can be invisible any more.
                Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, pipeline.Time.GetElapsedTime(started)));
                chunk.Gateway = pipeline.Metrics.Describe(item, deployment, cached: false);
                item.StreamStarted = true;
                first = false;
            }

            if (!writer.TryWrite(chunk))
            {
                await writer.WriteAsync(chunk, item.Token).ConfigureAwait(false);
            }
        }

        if (first)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, "The provider ended the stream without any chunk.");
        }

        item.TryComplete(EmptyResponse);
        pipeline.Retire(item);
    }

    /// <summary>Stands in for the response of a finished stream: streams hand their data over as chunks.</summary>
    private static readonly ChatCompletionResponse EmptyResponse = new();

    private void OnAttemptFailed(WorkItem item, Deployment deployment, long started, Exception ex)
    {
        var pipeline = _pipeline!;
        var latency = pipeline.Time.GetElapsedTime(started);
        var failure = Classify(item, ex);

        if (item.StreamStarted)
        {
            // Output already reached the caller: the stream ends with an error, no fallback.
            if (failure.Outcome != AttemptOutcome.Cancelled)
            {
                item.TryFail(new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), $"the stream from '{Name}' broke after it started: {failure.Message}"));
            }

            pipeline.Retire(item);
            return;
        }

        Record(item, deployment, new GatewayAttempt(Name, deployment.Model, failure.Outcome, latency, failure.StatusCode, failure.Message));
        item.LastFailure = failure;

        // Never waits: the dead-letter channel holds MaxInFlight items (see GatewayPipeline).
        if (!pipeline.DeadLetter.Writer.TryWrite(item))
        {
            pipeline.FailAndRetire(item, item.IsCompleted ? item.Failure! : new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    private void Record(WorkItem item, Deployment deployment, GatewayAttempt attempt)
    {
        item.AddAttempt(deployment, attempt);
        _pipeline!.Metrics.OnAttempt(attempt);
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
