namespace PipelineGateway;

/// <summary>
/// The one way into the gateway: the library, the HTTP front door and the batch runner all submit here.
/// </summary>
public interface IGatewayQueue
{
    /// <summary>
    /// Submits a request and returns its answer. When the queue is full this waits for room
    /// (backpressure); failures are <see cref="GatewayException"/>s, cancellation a <see cref="RequestCancelledException"/>.
    /// </summary>
    /// <remarks>
    /// The answer is a <see cref="ValueTask{TResult}"/> backed by the request's own pipeline item (nothing else is
    /// allocated for it): await it once, or call <see cref="ValueTask{TResult}.AsTask"/> once to keep a task. The code
    /// after the await never runs on a pipeline thread.
    /// </remarks>
    ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default);

    /// <summary>
    /// Submits a request; with <see cref="SubmitMode.FailFast"/> a full queue fails at once with
    /// <see cref="QueueFullException"/> instead of waiting (for callers that shed load, such as HTTP).
    /// </summary>
    ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, SubmitMode mode, CancellationToken cancellationToken = default);

    /// <summary>
    /// Submits a request and streams the answer. Fallback to another provider stays possible until the
    /// first chunk arrives; the first chunk carries <see cref="ChatCompletionChunk.Gateway"/>.
    /// Breaking out of the enumeration cancels the upstream call.
    /// </summary>
    IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default);

    /// <inheritdoc cref="StreamAsync(ChatCompletionRequest, CancellationToken)"/>
    IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, SubmitMode mode, CancellationToken cancellationToken = default);
}

/// <summary>What a submission does when the queue is full.</summary>
public enum SubmitMode
{
    /// <summary>Wait for room (library callers, batches).</summary>
    Wait,

    /// <summary>Fail at once with <see cref="QueueFullException"/> (load shedding).</summary>
    FailFast,
}
