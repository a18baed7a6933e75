using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace PipelineGateway.Pipeline;

/// <summary>
/// Validates a request on the caller's thread (so bad input never takes queue room), resolves its model
/// group, stamps its deadline and writes it into the admission channel.
/// </summary>
internal sealed class GatewayQueue(GatewayPipeline pipeline) : IGatewayQueue
{

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
        WorkItem item;
        try
        {
            item = Create(request, stream: false, cancellationToken);
            item.Mode = mode;
            item.InlineSuccessContinuation = inlineSuccessContinuation;
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            return ValueTask.FromException<ChatCompletionResponse>(ex);
        }

        if (pipeline.Admission.Writer.TryWrite(item))
        {
            return item.Response;
        }

        return EnqueueSlowAsync(item, mode);
    }

    private async ValueTask<ChatCompletionResponse> EnqueueSlowAsync(WorkItem item, SubmitMode mode)
    {
        await WaitForRoomAsync(item, mode).ConfigureAwait(false);
        return await item.Response.ConfigureAwait(false);
    }

    public IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
        StreamAsync(request, SubmitMode.Wait, cancellationToken);

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, SubmitMode mode, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var item = Create(request, stream: true, cancellationToken);
        item.Mode = mode;
        if (!pipeline.Admission.Writer.TryWrite(item))
        {
            await WaitForRoomAsync(item, mode).ConfigureAwait(false);
        }

        var reader = item.Chunks!.Reader;
        try
        {
            while (await reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
            {
                while (reader.TryRead(out var chunk))
                {
                    yield return chunk;
                }
            }
        }
        finally
        {
            if (!item.IsCompleted)
            {
                // The caller stopped reading early: cancel the upstream call.
                item.Cancel(CancelReason.Caller);
            }
        }

        if (item.Failure is { } failure)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>The queue was full on the first try: wait for room, or refuse at once.</summary>
    private async Task WaitForRoomAsync(WorkItem item, SubmitMode mode)
    {
        if (mode == SubmitMode.FailFast || !pipeline.IsAccepting)
        {
            pipeline.Metrics.OnShed();
            pipeline.FailAndRetire(item, pipeline.IsAccepting
                ? new QueueFullException(pipeline.Options.Pipeline.QueueFullRetryAfter)
                : new GatewayUnavailableException("The gateway is not accepting requests (not started, or shutting down)."));
            return;
        }

        try
        {
            // The item's token fires on the caller's cancellation and on the deadline.
            await pipeline.Admission.Writer.WriteAsync(item, item.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (item.Token.IsCancellationRequested)
        {
            pipeline.FailAndRetire(item, item.CancellationError());
        }
        catch (ChannelClosedException)
        {
            pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    private WorkItem Create(ChatCompletionRequest request, bool stream, CancellationToken cancellationToken)
    {
        RequestValidator.Validate(request);
        cancellationToken.ThrowIfCancellationRequested();
        if (!pipeline.Catalog.TryResolve(request.Model, out var group))
        {
            throw new ModelNotFoundException(request.Model);
        }

        var timeout = request.Gateway?.Timeout ?? pipeline.Options.Pipeline.DefaultTimeout;
        return new WorkItem(request, group, stream, timeout, pipeline.Time, cancellationToken, pipeline, RequestIds.Next());
    }
}
