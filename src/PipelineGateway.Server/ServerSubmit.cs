using Microsoft.AspNetCore.Http;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Server;

/// <summary>How the endpoints hand a non-streamed request to the pipeline.</summary>
internal static class ServerSubmit
{
    /// <summary>
    /// Draws the request's id before it is submitted and puts it on the answer at once, as the route's own request-id
    /// header (<paramref name="header"/>: <c>x-request-id</c>, which the OpenAI SDKs expose as the response's request
    /// id; <c>request-id</c> on the Anthropic route) and as <c>x-gateway-request-id</c>: one id, the request log's
    /// <c>request_id</c> and the trace's <c>pgw.request_id</c>, on every answer the pipeline gives — an error too.
    /// </summary>
    public static void Identify(HttpContext ctx, ChatCompletionRequest request, string header)
    {
        var options = request.Gateway ??= new GatewayRequestOptions();
        options.RequestSequence = RequestIds.Next();
        var id = RequestIds.Format(options.RequestSequence);
        ctx.Response.Headers[header] = id;
        ctx.Response.Headers["x-gateway-request-id"] = id;
    }

    /// <summary>
    /// Fail-fast (the front door sheds load instead of queueing), and resumed on the provider worker's thread when the
    /// answer comes: what follows the await is the endpoint writing its answer into Kestrel's buffer, short and never
    /// blocking, so it is worth saving the thread-pool hand-off (measured: 20.8 → 10.3 µs for that step at 2,000 req/s,
    /// docs/benchmarks.md). A queue that is not the gateway's own (a test double) gets the public call.
    /// </summary>
    public static ValueTask<ChatCompletionResponse> SubmitAsync(IGatewayQueue queue, ChatCompletionRequest request, CancellationToken cancellationToken) =>
        queue is GatewayQueue own
            ? own.SubmitAsync(request, SubmitMode.FailFast, inlineSuccessContinuation: true, cancellationToken)
            : queue.SubmitAsync(request, SubmitMode.FailFast, cancellationToken);

    /// <summary>
    /// True when <see cref="Feed"/> marks where each burst of chunks ends (<c>WorkItem.BurstEnd</c>: the
    /// gateway's own queue): the endpoint then flushes once per burst; another queue's chunks are flushed one by one.
    /// </summary>
    public static bool MarksBursts(IGatewayQueue queue) => queue is GatewayQueue;

    /// <summary>
    /// True when the endpoint may write an upstream's bytes in place of the answer or chunk read from them
    /// (<see cref="GatewayRequestOptions.KeepsUpstreamJson"/>): the gateway's own queue, which drops them wherever it
    /// changes what it read. A queue of the user's own in between may change the objects; then they are written.
    /// </summary>
    public static bool WritesUpstreamJson(IGatewayQueue queue) => queue is GatewayQueue;

    /// <summary>
    /// A streamed request, fail-fast, its chunks handed to the endpoint on the worker's thread as they arrive (same
    /// reasoning), read from its chunk channel (<see cref="ChunkFeed"/>: no enumerator in between).
    /// </summary>
    public static ChunkFeed Feed(IGatewayQueue queue, ChatCompletionRequest request, CancellationToken cancellationToken) =>
        queue is GatewayQueue own
            ? own.OpenFeed(request, SubmitMode.FailFast, inlineChunks: true, cancellationToken)
            : ChunkFeed.Of(queue.StreamAsync(request, SubmitMode.FailFast, cancellationToken).GetAsyncEnumerator(cancellationToken));
}
