using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// <c>POST /v1/responses</c>: OpenAI's Responses API (the OpenAI SDKs' responses clients, the Agents SDK, Codex), stateless,
/// through the same pipeline to any provider — the request read by <see cref="ResponsesCodec"/> into the canonical form,
/// the answer written back by <see cref="ResponsesWriter"/>, whole or as the API's SSE events. Errors in OpenAI's shape.
/// </summary>
internal sealed class ResponsesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ILogger<ResponsesEndpoint> logger)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ChatCompletionRequest request;
        try
        {
            request = await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => ResponsesCodec.Parse(body), aborted);
        }
        catch (JsonException ex)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not valid JSON: {ChatCompletionsEndpoint.FirstSentence(ex.Message)}"));
            return;
        }
        catch (BadHttpRequestException ex)
        {
            await JsonBody.WriteBodyFailureAsync(ctx, ex, options, logger);
            return;
        }
        catch (InvalidRequestException ex)
        {
            await RouteErrors.WriteAsync(ctx, ex);
            return;
        }

        if (!keys.MayUse(caller.Key, request.Model))
        {
            await RouteErrors.WriteAsync(ctx, 403, "permission_error", "model_not_allowed", $"This key may not use the model '{Providers.ProviderException.Quoted(request.Model)}'.", "model");
            return;
        }

        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        var writer = new ResponsesWriter(request, "resp_" + request.Gateway.RequestSequence.ToString("x16", System.Globalization.CultureInfo.InvariantCulture), time.GetUtcNow().ToUnixTimeSeconds());
        if (request.Stream == true)
        {
            await StreamAsync(ctx, request, writer, aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            headers.WriteGatewayHeaders(ctx, request, response.Gateway);
            ctx.Response.ContentType = "application/json";
            await ctx.Response.Body.WriteAsync(writer.Whole(response), aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await RouteErrors.WriteAsync(ctx, ex);
        }
    }

    private async Task StreamAsync(HttpContext ctx, ChatCompletionRequest request, ResponsesWriter writer, CancellationToken aborted)
    {
        var flushEach = !ServerSubmit.MarksBursts(queue);
        var wrote = false;
        await using var chunks = ServerSubmit.StreamAsync(queue, request, aborted).GetAsyncEnumerator(aborted);
        var first = true;
        try
        {
            while (true)
            {
                bool more;
                if (first)
                {
                    // Until the first chunk, SSE comments keep idle proxies from cutting a long-thinking model.
                    (more, _) = await SseWriter.FirstAsync(ctx, chunks.MoveNextAsync(), options.StreamKeepAlive, time, static (c, s) => s.Endpoint.StartSse(c, s.Request, null), (Endpoint: this, Request: request));
                }
                else
                {
                    more = await chunks.MoveNextAsync();
                }

                if (!more)
                {
                    break;
                }

                var chunk = chunks.Current;
                if (ReferenceEquals(chunk, Pipeline.WorkItem.BurstEnd))
                {
                    await ctx.Response.BodyWriter.FlushAsync(aborted);
                    continue;
                }

                StartSse(ctx, request, chunk.Gateway);
                if (first)
                {
                    first = false;
                    foreach (var e in writer.Start())
                    {
                        Write(ctx, e);
                    }
                }

                foreach (var e in writer.OnChunk(chunk))
                {
                    Write(ctx, e);
                    wrote = true;
                }

                if (flushEach)
                {
                    await ctx.Response.BodyWriter.FlushAsync(aborted);
                }
            }

            if (first)
            {
                StartSse(ctx, request, null);
                foreach (var e in writer.Start())
                {
                    Write(ctx, e);
                }
            }

            foreach (var e in writer.Finish())
            {
                Write(ctx, e);
            }

            await ctx.Response.BodyWriter.FlushAsync(aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (aborted.IsCancellationRequested)
            {
                return;
            }

            if (!ctx.Response.HasStarted && !wrote && first)
            {
                headers.WriteRateLimitHeaders(ctx, request, ex);
                await RouteErrors.WriteAsync(ctx, ex);
                return;
            }

            // The stream started: the failure travels in it, as the API's error event.
            var (_, error, _) = OpenAIErrors.Map(ex);
            StartSse(ctx, request, null);
            Write(ctx, writer.Error(error.Code ?? error.Type, error.Message));
            await ctx.Response.BodyWriter.FlushAsync(aborted);
        }
    }

    private static void Write(HttpContext ctx, (string Name, byte[] Json) e) =>
        Providers.Anthropic.AnthropicStreamWriter.Write(ctx.Response.BodyWriter, e); // event: NAME / data: JSON, the same framing

    private void StartSse(HttpContext ctx, ChatCompletionRequest request, GatewayResponseInfo? info)
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
