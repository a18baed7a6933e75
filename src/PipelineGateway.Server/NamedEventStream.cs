using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>
/// What a route with named SSE events (<c>event: NAME</c> / <c>data: JSON</c>) makes of a canonical stream; an event with
/// an empty name is a plain <c>data:</c> event (<c>/v1/completions</c>).
/// </summary>
internal interface INamedEventWriter
{
    /// <summary>The events before the first chunk's (none for Anthropic's, whose opening comes with the first chunk).</summary>
    IEnumerable<(string Name, byte[] Json)> Start();

    IEnumerable<(string Name, byte[] Json)> OnChunk(ChatCompletionChunk chunk);

    /// <summary>The closing events, once the stream ended normally.</summary>
    IEnumerable<(string Name, byte[] Json)> Finish();

    /// <summary>What must be done before the closing events go out (they are written, not yet flushed): keeping the answer.</summary>
    ValueTask FinishedAsync() => ValueTask.CompletedTask;

    /// <summary>The last events, made once <see cref="FinishedAsync"/> is done (what they say may depend on it).</summary>
    IEnumerable<(string Name, byte[] Json)> Last() => [];

    /// <summary>The event saying the stream failed after it started (its HTTP status already sent).</summary>
    (string Name, byte[] Json) Error(int status, Exception error, string message);
}

/// <summary>
/// The streaming loop of the routes with named SSE events (<c>/v1/messages</c>, <c>/v1/responses</c>): the chat route's
/// (keep-alives until the first chunk, a flush where a burst of the upstream's chunks ends) — which stays written out
/// in the chat route itself, the benchmarked one, where a helper between the enumerator and the loop is one more async
/// state machine per event. A failure before any output is the route's error answer; after, an error event.
/// </summary>
internal static class NamedEventStream
{
    /// <param name="calls">What keeps the stream's calls' extra members and reasoning for the next step (<see cref="ToolCallRecall"/>); null: nothing is kept.</param>
    public static async Task WriteAsync(HttpContext ctx, IGatewayQueue queue, ChatCompletionRequest request, INamedEventWriter writer, ServerOptions options, TimeProvider time, GatewayResponseHeaders headers, ToolCallRecall.Gatherer? calls, CancellationToken aborted)
    {
        var flushEach = !ServerSubmit.MarksBursts(queue);
        var wrote = false; // events are in the response pipe, perhaps not flushed yet
        var started = false; // the writer's opening events are written
        await using var chunks = ServerSubmit.Feed(queue, request, aborted);
        var first = true;
        try
        {
            while (true)
            {
                if (!chunks.TryRead(out var chunk))
                {
                    bool more;
                    if (first)
                    {
                        // Until the first chunk, SSE comments keep idle proxies from cutting a long-thinking model.
                        (more, _) = await SseWriter.FirstAsync(ctx, chunks.WaitToReadAsync(), options.StreamKeepAlive, time, static (c, s) => StartSse(c, s.Request, null, s.Headers), (Request: request, Headers: headers));
                        first = false;
                    }
                    else
                    {
                        more = await chunks.WaitToReadAsync();
                    }

                    if (more)
                    {
                        continue;
                    }

                    chunks.End(); // a failure throws here
                    break;
                }

                if (ReferenceEquals(chunk, Pipeline.WorkItem.BurstEnd))
                {
                    // The upstream's next chunk is not here yet: what was written goes out now, in one flush.
                    await ctx.Response.BodyWriter.FlushAsync(aborted);
                    continue;
                }

                calls?.Add(chunk);
                StartSse(ctx, request, chunk.Gateway, headers);
                wrote |= WriteAll(ctx, started ? [] : writer.Start());
                started = true;
                wrote |= WriteAll(ctx, writer.OnChunk(chunk));
                if (flushEach)
                {
                    await ctx.Response.BodyWriter.FlushAsync(aborted);
                }
            }

            StartSse(ctx, request, null, headers);
            WriteAll(ctx, started ? [] : writer.Start());
            WriteAll(ctx, writer.Finish());
            if (calls is not null)
            {
                await calls.RememberAsync(); // before the closing events go out: the next step may come at once
            }

            await writer.FinishedAsync();
            WriteAll(ctx, writer.Last());
            await ctx.Response.BodyWriter.FlushAsync(aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (aborted.IsCancellationRequested)
            {
                return; // the client went away; the upstream call was cancelled with it
            }

            if (!ctx.Response.HasStarted && !wrote)
            {
                headers.WriteRateLimitHeaders(ctx, request, ex);
                await RouteErrors.WriteAsync(ctx, ex);
                return;
            }

            // Output already went out or is written (an event, or a keep-alive): the error travels in the stream, after it.
            var (status, error, _) = OpenAIErrors.Map(ex);
            StartSse(ctx, request, null, headers);
            WriteAll(ctx, [writer.Error(status, ex, error.Message)]);
            await ctx.Response.BodyWriter.FlushAsync(aborted);
        }
    }

    private static bool WriteAll(HttpContext ctx, IEnumerable<(string Name, byte[] Json)> events)
    {
        var any = false;
        foreach (var e in events)
        {
            if (e.Name.Length == 0)
            {
                SseWriter.WriteData(ctx.Response.BodyWriter, e.Json); // an unnamed event (the Completions stream's)
            }
            else
            {
                Providers.Anthropic.AnthropicStreamWriter.Write(ctx.Response.BodyWriter, e);
            }
            any = true;
        }

        return any;
    }

    /// <summary>The stream's headers, once: the gateway's too (who answered, attempts, rate limits) when the first chunk, which carries them, starts it.</summary>
    private static void StartSse(HttpContext ctx, ChatCompletionRequest request, GatewayResponseInfo? info, GatewayResponseHeaders headers)
    {
        if (!ctx.Response.HasStarted)
        {
            ctx.Response.ContentType = "text/event-stream";
            ctx.Response.Headers.CacheControl = "no-cache";
            ctx.Response.Headers["x-accel-buffering"] = "no";
            headers.WriteGatewayHeaders(ctx, request, info, streaming: true);
        }
    }
}
