using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using PipelineGateway.Admission;
using PipelineGateway.Serialization;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server;

/// <summary><c>POST /v1/chat/completions</c>: OpenAI format in and out, SSE when <c>stream: true</c>.</summary>
internal sealed partial class ChatCompletionsEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, Responses.ResponsesStore store, ILogger<ChatCompletionsEndpoint> logger)
{
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();

    public Task HandleAsync(HttpContext ctx) => HandleAsync(ctx, deployment: null);

    /// <summary>
    /// Azure OpenAI's route (<c>/openai/deployments/{deployment}/chat/completions</c>), what the Azure OpenAI SDKs call:
    /// the deployment in the path is the model (a model group or alias), whatever the body says.
    /// </summary>
    public Task HandleAzureAsync(HttpContext ctx) => HandleAsync(ctx, ctx.Request.RouteValues["deployment"] as string);

    private async Task HandleAsync(HttpContext ctx, string? deployment)
    {
        // Key, content type, size and x-gateway-* headers were checked by the front door.
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted; // read once: Kestrel takes a lock on every read of it
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ChatCompletionRequest? request;
        try
        {
            // The common request is read by hand; anything else (and every refusal, with its JSON path) by the serializer.
            request = await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => RequestJson.TryRead(body) ?? JsonSerializer.Deserialize(body, FrontDoorJsonContext.Default.ChatCompletionRequest), aborted);
        }
        catch (JsonException ex)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(Serialization.JsonProblems.PathOf(ex)?.TrimStart('$', '.') is { Length: > 0 } param ? param : null, JsonFailure(ex)));
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
        catch (Exception ex) when (ex is InvalidOperationException or ArgumentException or DecoderFallbackException or NotSupportedException)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not valid JSON: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
            return;
        }

        if (request is null)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, "The request body is empty."));
            return;
        }

        if (deployment is not null)
        {
            request.Model = deployment;
        }

        if (!keys.MayUse(caller.Key, request.Model ?? string.Empty))
        {
            await RouteErrors.ModelNotAllowedAsync(ctx, request.Model);
            return;
        }

        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        var scope = Responses.ResponsesStore.ScopeOf(caller.Key);
        if (ThinkingRecall.Asked(request))
        {
            await ThinkingRecall.RecallAsync(store, scope, request, aborted); // a tool loop's thinking, given back to Claude
        }

        await ToolCallRecall.RecallAsync(store, scope, request, aborted); // what a client dropped: Gemini's signatures, a thinking model's reasoning

        // An upstream answer or chunk in the gateway's own shape is written as it came (the gateway's own queue only:
        // one of the user's in between may change the objects).
        request.Gateway.KeepsUpstreamJson = ServerSubmit.WritesUpstreamJson(queue);
        if (request.Stream == true)
        {
            await StreamAsync(ctx, request, scope, aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            await ThinkingRecall.RememberAsync(store, scope, request, response); // before the answer goes out: the next step may come at once
            await ToolCallRecall.RememberAsync(store, scope, request, response);
            headers.WriteGatewayHeaders(ctx, request, response.Gateway);
            if (response.TakeUpstreamJson(out var upstream, out var length))
            {
                await JsonBody.WriteUpstreamAsync(ctx.Response, upstream, length, aborted);
            }
            else
            {
                await JsonBody.WriteAsync(ctx.Response, response, GatewayJsonContext.Default.ChatCompletionResponse, aborted);
            }
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await OpenAIErrors.WriteAsync(ctx, ex);
        }
    }

    /// <summary>
    /// A serializer failure in a caller's words: a value of the wrong type says what was expected there ("expected a
    /// whole number from …"), never the .NET type it was read into (<c>System.Nullable`1[System.Int32]</c>); malformed
    /// JSON keeps the reader's own description.
    /// </summary>
    internal static string JsonFailure(JsonException ex)
    {
        var at = Serialization.JsonProblems.PathOf(ex) is { } path ? $" (at {path})" : string.Empty;
        if (!Serialization.JsonProblems.IsConversion(ex))
        {
            return $"The request body is not valid JSON for a chat completion{at}: {Serialization.JsonProblems.FirstSentence(ex.Message)}";
        }

        if (Serialization.JsonProblems.IsLoneSurrogate(ex))
        {
            return $"Invalid value{at}: {Serialization.JsonProblems.LoneSurrogate}.";
        }

        var type = Serialization.JsonProblems.ConvertedTo(ex);
        var expected = type switch
        {
            _ when type.Contains("System.Int32", StringComparison.Ordinal) => "a whole number from -2147483648 to 2147483647",
            _ when type.Contains("System.Int64", StringComparison.Ordinal) => "a whole number from -9223372036854775808 to 9223372036854775807",
            _ when type.Contains("System.Double", StringComparison.Ordinal) || type.Contains("System.Single", StringComparison.Ordinal) || type.Contains("System.Decimal", StringComparison.Ordinal) => "a number",
            _ when type.Contains("System.Boolean", StringComparison.Ordinal) => "true or false",
            "System.String" => "a string",
            _ when type.StartsWith("System.Collections.Generic.List`1", StringComparison.Ordinal) || type.EndsWith("[]", StringComparison.Ordinal) => "a list",
            _ when type.StartsWith("System.Collections.Generic.Dictionary`2", StringComparison.Ordinal) => "an object",
            _ when type.EndsWith(".MessageContent", StringComparison.Ordinal) => "a string or a list of content parts",
            _ when type.EndsWith(".StopSequences", StringComparison.Ordinal) => "a string or a list of strings",
            _ when type.StartsWith("PipelineGateway.", StringComparison.Ordinal) => "an object",
            _ => "a value of another type",
        };
        return $"Invalid value{at}: expected {expected}.";
    }

    private async Task StreamAsync(HttpContext ctx, ChatCompletionRequest request, string scope, CancellationToken aborted)
    {
        var thinking = ThinkingRecall.Asked(request) && store.Enabled ? new ThinkingRecall.Gatherer() : null;
        var calls = ToolCallRecall.Gather(store, scope, request);
        var includeUsage = request.StreamOptions?.IncludeUsage == true;
        var continuousUsage = ContinuousUsage(request);
        var flushEach = !ServerSubmit.MarksBursts(queue);
        await using var chunks = ServerSubmit.Feed(queue, request, aborted);
        var started = false;
        try
        {
            var body = ctx.Response.BodyWriter; // once: each read of it walks the response's feature cache (SseWriter.WriteData)
            using var json = new Utf8JsonWriter(body, new JsonWriterOptions { Encoder = WireJson.Encoder, SkipValidation = true });
            while (true)
            {
                if (!chunks.TryRead(out var chunk))
                {
                    bool more;
                    if (!started)
                    {
                        (more, started) = await SseWriter.FirstAsync(ctx, chunks.WaitToReadAsync(), options.StreamKeepAlive, time, static (c, s) => s.Endpoint.StartSse(c, s.Request, null), (Endpoint: this, Request: request));
                    }
                    else
                    {
                        more = await chunks.WaitToReadAsync(); // no task per chunk once the stream runs
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
                    // The upstream's next event is not here yet: what was written goes out now, in one flush.
                    await body.FlushAsync(aborted);
                    continue;
                }

                thinking?.Add(chunk);
                calls?.Add(chunk);

                if (!started || chunk.Gateway is not null)
                {
                    StartSse(ctx, request, chunk.Gateway);
                    started = true;
                }

                if (chunk.Usage is { } usage && WrittenUsage(chunk, includeUsage, continuousUsage) is var written && !ReferenceEquals(written, usage))
                {
                    if (written is null && chunk.HasNoChoices)
                    {
                        continue; // a usage-only chunk the caller did not ask for
                    }

                    chunk.Usage = written;
                    chunk.DropEventJson(); // changed: no longer what the upstream's bytes say
                }

                if (chunk.TakeEventJson(out var verbatim, out var length))
                {
                    // The upstream's bytes say what writing the chunk would: copied into Kestrel's buffer, then the
                    // rented buffer goes back (this endpoint is its one writer; the chunk let go of it).
                    SseWriter.WriteData(body, verbatim.AsSpan(0, length));
                    ArrayPool<byte>.Shared.Return(verbatim);
                }
                else
                {
                    SseWriter.WriteData(body, json, chunk, GatewayJsonContext.Default.ChatCompletionChunk);
                }

                if (flushEach)
                {
                    await body.FlushAsync(aborted);
                }
            }

            if (thinking is not null)
            {
                await thinking.RememberAsync(store, scope); // before the stream's end goes out: the next step may come at once
            }

            if (calls is not null)
            {
                await calls.RememberAsync();
            }

            await ctx.Response.Body.WriteAsync(Done, aborted);
            await ctx.Response.Body.FlushAsync(aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (aborted.IsCancellationRequested)
            {
                return; // the client went away; the upstream call was cancelled with it
            }

            if (!ctx.Response.HasStarted && !started)
            {
                headers.WriteRateLimitHeaders(ctx, request, ex);
                await OpenAIErrors.WriteAsync(ctx, ex);
                return;
            }

            // Output already went out or is written, perhaps not flushed yet (chunks, or a keep-alive): the error
            // travels in the stream, after it, as OpenAI does.
            var (_, error, _) = OpenAIErrors.Map(ex);
            await SseWriter.WriteDataAsync(ctx.Response, JsonSerializer.SerializeToUtf8Bytes(new OpenAIErrorBody { Error = error }, ServerJsonContext.Default.OpenAIErrorBody), aborted);
        }
    }

    /// <summary>
    /// The usage a stream's chunk is written with over OpenAI's wire: none unless the caller asked for usage
    /// (<c>stream_options.include_usage</c>); then once, on the stream's last chunk (the one with the gateway's final
    /// info: a usage-only chunk or the finishing one), with what the request cost. A usage an upstream put on a chunk
    /// before — one in the middle of the stream, or on the finishing chunk when a usage-only chunk follows — is not
    /// written: a client that adds up the chunks' usage (OpenAI's shape has it once) counted it twice. Unless the
    /// caller asked every chunk to carry one (vLLM's <c>stream_options.continuous_usage_stats</c>, passed upstream).
    /// </summary>
    internal static TokenUsage? WrittenUsage(ChatCompletionChunk chunk, bool includeUsage, bool continuous) =>
        !includeUsage || chunk.Usage is not { } usage ? null
        : chunk.Gateway is { } final && (chunk.Finishes || chunk.HasNoChoices) ? WithCost(usage, final.Cost)
        : continuous ? usage
        : null;

    /// <summary>Whether the caller asked for a usage on every chunk (vLLM's <c>stream_options.continuous_usage_stats</c>).</summary>
    internal static bool ContinuousUsage(ChatCompletionRequest request) =>
        request.StreamOptions?.AdditionalProperties is { } options && options.TryGetValue("continuous_usage_stats", out var asked) && asked.ValueKind == JsonValueKind.True;

    /// <summary>The stream's usage with what the request cost (<c>usage.cost</c>, OpenRouter's member).</summary>
    internal static TokenUsage WithCost(TokenUsage usage, decimal cost) => new()
    {
        PromptTokens = usage.PromptTokens,
        CompletionTokens = usage.CompletionTokens,
        TotalTokens = usage.TotalTokens,
        AdditionalProperties = new Dictionary<string, JsonElement>(usage.AdditionalProperties ?? [])
        {
            ["cost"] = JsonSerializer.SerializeToElement(cost, GatewayJsonContext.Default.Decimal),
        },
    };

    private void StartSse(HttpContext ctx, ChatCompletionRequest request, GatewayResponseInfo? info)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["x-accel-buffering"] = "no";
        headers.WriteGatewayHeaders(ctx, request, info, streaming: true);
    }
}
