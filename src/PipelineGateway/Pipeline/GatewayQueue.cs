using System.Runtime.CompilerServices;
using PipelineGateway.Admission;
using PipelineGateway.Routing;

namespace PipelineGateway.Pipeline;

/// <summary>
/// Validates a request on the caller's thread (so bad input never takes queue room), resolves its model
/// group, lets it into admission's waiting room (or refuses it, or makes its caller wait at the door), stamps its
/// deadline and writes it into the admission channel.
/// </summary>
internal sealed class GatewayQueue(
    GatewayPipeline pipeline,
    PipelineChannels channels,
    ModelCatalog catalog,
    AdmissionGate gate,
    Metrics.GatewayMetrics metrics,
    Microsoft.Extensions.Options.IOptions<Hosting.GatewayOptions> options,
    TimeProvider time,
    AdmissionRateLimiter limiter,
    Caching.ResponseCache cache) : IGatewayQueue
{
    private readonly Hosting.PipelineOptions _options = options.Value.Pipeline;

    public ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
        SubmitAsync(request, SubmitMode.Wait, cancellationToken);

    public ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, SubmitMode mode, CancellationToken cancellationToken = default) =>
        SubmitAsync(request, mode, inlineSuccessContinuation: false, cancellationToken);

    /// <summary>
    /// For a caller whose continuation is the gateway's own short, non-blocking code (the HTTP front door writing its
    /// answer): a provider's answer resumes it on the worker's thread (<see cref="WorkItem.InlineSuccessContinuation"/>).
    /// Library callers never get this: their code after the await may block, and must not hold up a provider worker.
    /// </summary>
    internal ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, SubmitMode mode, bool inlineSuccessContinuation, CancellationToken cancellationToken)
    {
        ModelGroup group;
        try
        {
            group = Resolve(request);
        }
        catch (GatewayException ex)
        {
            return ValueTask.FromException<ChatCompletionResponse>(ex);
        }

        if (Enter(request, group, stream: false, mode, cancellationToken) is { } item)
        {
            item.InlineSuccessContinuation = inlineSuccessContinuation;
            Enqueue(item, lendThread: inlineSuccessContinuation);
            return item.Response;
        }

        return EnterSlowAsync(request, group, mode, inlineSuccessContinuation, cancellationToken);
    }

    private async ValueTask<ChatCompletionResponse> EnterSlowAsync(ChatCompletionRequest request, ModelGroup group, SubmitMode mode, bool inline, CancellationToken cancellationToken)
    {
        var item = await WaitAtDoorAsync(request, group, stream: false, mode, cancellationToken).ConfigureAwait(false);
        item.InlineSuccessContinuation = inline;
        Enqueue(item);
        return await item.Response.ConfigureAwait(false);
    }

    public IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
        StreamAsync(request, SubmitMode.Wait, cancellationToken);

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, SubmitMode mode, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var feed = new Feed(this, request, mode, inlineChunks: false, cancellationToken);
        await using (feed.ConfigureAwait(false))
        {
            while (true)
            {
                while (feed.TryRead(out var chunk))
                {
                    yield return chunk;
                }

                if (!await feed.WaitToReadAsync().ConfigureAwait(false))
                {
                    break;
                }
            }

            feed.End();
        }
    }

    /// <summary>
    /// A streamed request's chunks for the gateway's own SSE endpoints (<paramref name="inlineChunks"/>: they reach the
    /// endpoint on the provider worker's thread, <see cref="WorkItem.DeliverChunksInline"/>, with where each burst ends).
    /// The request is submitted by the first wait. Library callers never get this.
    /// </summary>
    internal ChunkFeed OpenFeed(ChatCompletionRequest request, SubmitMode mode, bool inlineChunks, CancellationToken cancellationToken) =>
        new Feed(this, request, mode, inlineChunks, cancellationToken);

    /// <summary>The chunks of one streamed request through this queue, read from its item's chunk channel.</summary>
    private sealed class Feed(GatewayQueue queue, ChatCompletionRequest request, SubmitMode mode, bool inlineChunks, CancellationToken cancellationToken) : ChunkFeed
    {
        private WorkItem? _item;
        private System.Threading.Channels.ChannelReader<ChatCompletionChunk>? _reader;

        public override bool TryRead([System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out ChatCompletionChunk chunk)
        {
            if (_reader is { } reader)
            {
                while (reader.TryRead(out chunk))
                {
                    if (!ReferenceEquals(chunk, WorkItem.BurstEnd))
                    {
                        return true;
                    }
                }

                // Caught up, about to wait: a burst that ended is flushed now (its marker only woke this reader, or
                // found the channel full and was never queued).
                if (inlineChunks && _item!.TakeFlushOwed())
                {
                    chunk = WorkItem.BurstEnd;
                    return true;
                }
            }

            chunk = null;
            return false;
        }

        public override ValueTask<bool> WaitToReadAsync() =>
            _reader is { } reader ? reader.WaitToReadAsync(CancellationToken.None) : SubmitAsync();

        private async ValueTask<bool> SubmitAsync()
        {
            var group = queue.Resolve(request);
            var item = queue.Enter(request, group, stream: true, mode, cancellationToken)
                ?? await queue.WaitAtDoorAsync(request, group, stream: true, mode, cancellationToken).ConfigureAwait(false);
            if (inlineChunks)
            {
                item.DeliverChunksInline();
            }

            _item = item;
            _reader = item.Chunks!.Reader;
            queue.Enqueue(item, lendThread: inlineChunks);
            return await _reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false);
        }

        public override void End()
        {
            if (_item?.Failure is { } failure)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
            }
        }

        public override ValueTask DisposeAsync()
        {
            if (_item is { IsCompleted: false } item)
            {
                // The reader stopped early: cancel the upstream call.
                item.Cancel(CancelReason.Caller);
            }

            return ValueTask.CompletedTask;
        }
    }

    private ModelGroup Resolve(ChatCompletionRequest request)
    {
        RequestValidator.Validate(request);
        var group = catalog.TryResolve(request.Model, out var resolved) ? resolved : throw catalog.NotFound(request.Model);
        request.RoutedModel = group.Name;
        return group;
    }

    /// <summary>
    /// The request enters admission's waiting room and gets its pipeline item — or, when there is no room, a fail-fast
    /// caller gets an item already answered with the refusal, and a waiting caller gets null (it waits at the door).
    /// A caller that already gave up, or a gateway not accepting, gets an item answered with that: every submission is
    /// counted and ends exactly once.
    /// </summary>
    private WorkItem? Enter(ChatCompletionRequest request, ModelGroup group, bool stream, SubmitMode mode, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return Refused(request, group, stream, mode, null, null, cancellationToken); // answered by its own cancellation
        }

        if (!pipeline.IsAccepting)
        {
            return Refused(request, group, stream, mode, new GatewayUnavailableException("The gateway is not accepting requests (not started, or shutting down)."), null, cancellationToken);
        }

        if (mode == SubmitMode.Wait && Saturated(group))
        {
            return null; // every provider of the model is full: wait at the door for room, holding nothing
        }

        var key = request.Gateway?.RateLimitKey ?? string.Empty;
        if (gate.TryEnter(key) is { } tenant)
        {
            var item = Create(request, group, stream, mode, null, cancellationToken);
            item.GateTenant = tenant;
            return item;
        }

        if (mode == SubmitMode.Wait)
        {
            return null;
        }

        metrics.OnShed();
        return Refused(request, group, stream, mode, gate.Refusal(key, _options.QueueFullRetryAfter), null, cancellationToken);
    }

    /// <summary>
    /// A waiting caller waits at the door (no pipeline item meanwhile): until a provider of its model has room, then
    /// for room in its tenant's share of admission's waiting room; then it enters.
    /// </summary>
    private async ValueTask<WorkItem> WaitAtDoorAsync(ChatCompletionRequest request, ModelGroup group, bool stream, SubmitMode mode, CancellationToken cancellationToken)
    {
        var submitted = time.GetTimestamp();
        var timeout = TimeoutOf(request);
        AdmissionGate.Tenant tenant;
        try
        {
            while (true)
            {
                await WaitForRoomAsync(group, timeout - time.GetElapsedTime(submitted), cancellationToken).ConfigureAwait(false);
                tenant = await gate.WaitAsync(request.Gateway?.RateLimitKey ?? string.Empty, timeout - time.GetElapsedTime(submitted), cancellationToken).ConfigureAwait(false);
                if (!Saturated(group))
                {
                    break;
                }

                // Its providers filled up while it waited for its tenant's turn: give the place back, wait for room.
                gate.Leave(tenant);
            }
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (ex is QueueFullException)
            {
                metrics.OnShed();
            }

            return Refused(request, group, stream, mode, ex is RequestCancelledException ? null : ex, submitted, cancellationToken);
        }

        var item = Create(request, group, stream, mode, submitted, cancellationToken);
        item.GateTenant = tenant;
        return item;
    }

    /// <summary>True when every provider that serves the model has a full queue (or requests parked for one).</summary>
    private static bool Saturated(ModelGroup group)
    {
        foreach (var d in group.DeploymentArray)
        {
            if (!d.Pool.IsSaturated)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Waits until some provider of the model has room (backpressure per model: other models pass freely).</summary>
    private async Task WaitForRoomAsync(ModelGroup group, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var started = time.GetTimestamp();
        while (Saturated(group))
        {
            var left = timeout - time.GetElapsedTime(started);
            if (left <= TimeSpan.Zero)
            {
                throw new DeadlineExceededException(timeout, [], $"The request waited at the gateway's door for its whole deadline of {timeout.TotalMilliseconds:F0} ms: every provider of model '{group.Name}' stayed full.");
            }

            var rooms = group.DeploymentArray.Select(d => d.Pool.RoomAsync());
            try
            {
                await Task.WhenAny(rooms).WaitAsync(left, time, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // Looked at again above: the deadline passed.
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw new RequestCancelledException([], cancellationToken);
            }

            if (!pipeline.IsAccepting)
            {
                throw new GatewayUnavailableException("The gateway is not accepting requests (shutting down).");
            }
        }
    }

    /// <summary>
    /// <see cref="Enqueue(WorkItem)"/>, and with <paramref name="lendThread"/> (the front door only) the calling thread
    /// goes on to the upstream call itself when an idle worker takes the request (<see cref="Dispatch.WorkerSignal"/>):
    /// one thread-pool hop fewer per request. Library callers' threads are never lent.
    /// </summary>
    private void Enqueue(WorkItem item, bool lendThread)
    {
        if (!lendThread || !Dispatch.WorkerSignal.Lend())
        {
            Enqueue(item);
            return;
        }

        try
        {
            Enqueue(item);
        }
        finally
        {
            Dispatch.WorkerSignal.EndLoan();
        }
    }

    /// <summary>Hands an item that entered to the admission stage (its channel always has room for whoever is inside).</summary>
    private void Enqueue(WorkItem item)
    {
        if (item.IsCompleted && item.GateTenant is null)
        {
            return; // refused before entering, already retired
        }

        if (limiter.CountsTokens)
        {
            // The prompt is counted here, on the submitting thread, not where a token rule reads the count: admission's
            // stage loop, which handles one request at a time — a 55 KB agent prompt not seen before took ~2 ms to
            // count, and every request of every tenant waited behind it (docs/benchmarks.md, "Agent-sized requests and
            // token limits").
            _ = item.EstimatedTokens;
        }

        if (cache.IsCacheable(item.Request))
        {
            // So is the cache key — the whole request written in a canonical form and hashed, ~0.2 ms for an agent's
            // 55 KB step — which the cache stage's loop computed one request at a time (docs/benchmarks.md, "Agent-sized
            // requests and token limits"). The stage takes it from the item.
            item.CacheKey = Caching.CacheKey.Compute(item.Group.Name, item.Request);
        }

        if (!channels.Admission.Writer.TryWrite(item))
        {
            pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    /// <summary>An item answered at once (no room, shutting down, or cancelled by its caller: <paramref name="error"/> null) and retired.</summary>
    private WorkItem Refused(ChatCompletionRequest request, ModelGroup group, bool stream, SubmitMode mode, Exception? error, long? submitted, CancellationToken cancellationToken)
    {
        var item = Create(request, group, stream, mode, submitted, cancellationToken);
        item.NeverReuse(); // the submitting code still looks at it after its retirement (rare: a refusal)
        if (error is not null)
        {
            item.TryFail(error);
        }

        pipeline.Retire(item);
        return item;
    }

    private WorkItem Create(ChatCompletionRequest request, ModelGroup group, bool stream, SubmitMode mode, long? submitted, CancellationToken cancellationToken)
    {
        var sequence = request.Gateway?.RequestSequence is > 0 and var drawn ? drawn : RequestIds.Next();
        WorkItem item;
        if (pipeline.Items?.Rent() is { } reused)
        {
            item = reused;
            item.Initialize(request, group, stream, TimeoutOf(request), pipeline.Deadlines, pipeline, sequence, submitted, cancellationToken);
        }
        else
        {
            item = new WorkItem(request, group, stream, TimeoutOf(request), pipeline.Deadlines, cancellationToken, pipeline, sequence, submitted, pipeline.Items);
        }

        item.Mode = mode;
        Tracing.GatewayTracing.StartRequest(item);
        return item;
    }

    private TimeSpan TimeoutOf(ChatCompletionRequest request) => request.Gateway?.Timeout ?? _options.DefaultTimeout;
}
