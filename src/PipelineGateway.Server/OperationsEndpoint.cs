using System.Buffers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Server;

/// <summary>
/// <c>POST /v1/embeddings</c>, <c>/v1/moderations</c>, <c>/v1/images/generations</c>, <c>/v1/audio/speech</c> (streamed:
/// <see cref="SpeakAsync"/>) and <c>/v1/rerank</c>: OpenAI's APIs in and out. The request goes through the same
/// pipeline as a chat request (<see cref="Operations"/>): keys and their model lists, rate and token limits, budgets, the
/// cache and single flight, routing with failover to the group's other deployments and its fallbacks, cost, metrics and
/// the request log. The answer's list (vectors as numbers or base64, moderation results) is written as the upstream sent
/// it, never parsed into objects.
/// </summary>
internal sealed class OperationsEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, ILogger<OperationsEndpoint> logger)
{
    public Task EmbeddingsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Embeddings, deployment: null);

    public Task ModerationsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Moderations, deployment: null);

    public Task ImagesAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Images, deployment: null);

    public Task SpeechAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Speech, deployment: null);

    public Task RerankAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Rerank, deployment: null);

    /// <summary>Azure OpenAI's speech route (<c>/openai/deployments/{deployment}/audio/speech</c>): the deployment is the model.</summary>
    public Task AzureSpeechAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Speech, ctx.Request.RouteValues["deployment"] as string);

    /// <summary>Azure OpenAI's image route (<c>/openai/deployments/{deployment}/images/generations</c>): the deployment is the model.</summary>
    public Task AzureImagesAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Images, ctx.Request.RouteValues["deployment"] as string);

    /// <summary>Azure OpenAI's embeddings route (<c>/openai/deployments/{deployment}/embeddings</c>): the deployment is the model.</summary>
    public Task AzureEmbeddingsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Embeddings, ctx.Request.RouteValues["deployment"] as string);

    private async Task HandleAsync(HttpContext ctx, OperationKind kind, string? deployment)
    {
        // Key, content type, size and x-gateway-* headers were checked by the front door.
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        if (await ReadAsync(ctx, caller, body => Operations.Read(kind, body, deployment), keys, options, logger) is not { } request)
        {
            return;
        }

        if (kind == OperationKind.Speech || Images.Streams(request.Operation!))
        {
            await StreamAsync(ctx, queue, headers, request, aborted);
            return;
        }

        await AnswerAsync(ctx, queue, headers, request, aborted);
    }

    /// <summary>
    /// Speech, streamed as OpenAI streams it: the audio's bytes as the upstream sends them (chunked, the format's media
    /// type), so the caller may play it before it is all made — or, asked so, its events; and a streamed image
    /// generation's or edit's events (partial images, then the image) — through the streams' machinery (failover until
    /// the first bytes, a flush where a burst of them ends). A failure before the first bytes is the route's error answer; after
    /// them the connection is reset, so the caller sees a broken transfer, never a short file taken for a whole one.
    /// </summary>
    internal static async Task StreamAsync(HttpContext ctx, IGatewayQueue queue, GatewayResponseHeaders headers, ChatCompletionRequest request, CancellationToken aborted)
    {
        var flushEach = !ServerSubmit.MarksBursts(queue);
        // Speech's stream_format "sse", or an image generation or edit: the upstream's events (speech.audio.*,
        // image_generation.*, image_edit.*), each a data: line.
        var events = Speech.AsEvents(request.Operation!) || Images.Streams(request.Operation!);
        var started = false;
        await using var chunks = ServerSubmit.Feed(queue, request, aborted);
        try
        {
            while (true)
            {
                if (!chunks.TryRead(out var chunk))
                {
                    if (await chunks.WaitToReadAsync())
                    {
                        continue;
                    }

                    chunks.End(); // a failure throws here
                    break;
                }

                if (ReferenceEquals(chunk, Pipeline.WorkItem.BurstEnd))
                {
                    await ctx.Response.BodyWriter.FlushAsync(aborted);
                    continue;
                }

                if (!started)
                {
                    ctx.Response.ContentType = events ? "text/event-stream" : Speech.MediaType(Speech.Format(request.Operation!.Body));
                    if (events)
                    {
                        ctx.Response.Headers.CacheControl = "no-cache";
                        ctx.Response.Headers["x-accel-buffering"] = "no";
                    }

                    // Speech's cost too (known from its characters); an image's only at its end (the request log has it).
                    headers.WriteGatewayHeaders(ctx, request, chunk.Gateway, streaming: request.Operation!.Kind != OperationKind.Speech);
                    started = true;
                }

                if (chunk.TakeEventJson(out var audio, out var length))
                {
                    // The upstream's bytes (audio, or an event's JSON), copied into Kestrel's buffer; the rented block goes
                    // back (this is its one taker).
                    if (events && chunk.Gateway is { } final && chunk.Usage is not null && Images.Streams(request.Operation!))
                    {
                        // An image's completed event, the stream's last: its usage says what the request cost (as a chat
                        // stream's last chunk does, usage.cost), since the headers went out before the cost was known.
                        SseWriter.WriteData(ctx.Response.BodyWriter, UsageWithCost(audio.AsSpan(0, length), final.Cost));
                    }
                    else if (events)
                    {
                        SseWriter.WriteData(ctx.Response.BodyWriter, audio.AsSpan(0, length));
                    }
                    else
                    {
                        ctx.Response.BodyWriter.Write(audio.AsSpan(0, length));
                    }

                    System.Buffers.ArrayPool<byte>.Shared.Return(audio);
                }

                if (flushEach)
                {
                    await ctx.Response.BodyWriter.FlushAsync(aborted);
                }
            }

            await ctx.Response.BodyWriter.FlushAsync(aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (aborted.IsCancellationRequested)
            {
                return; // the client went away; the upstream call was cancelled with it
            }

            if (!started && !ctx.Response.HasStarted)
            {
                headers.WriteRateLimitHeaders(ctx, request, ex);
                await OpenAIErrors.WriteAsync(ctx, ex);
                return;
            }

            if (events)
            {
                // Events: the failure is one more, in OpenAI's error shape (the SDKs raise it).
                await SseWriter.WriteDataAsync(ctx.Response, JsonSerializer.SerializeToUtf8Bytes(new OpenAIErrorBody { Error = OpenAIErrors.Map(ex).Error }, ServerJsonContext.Default.OpenAIErrorBody), aborted);
                return;
            }

            ctx.Abort(); // audio already went out: cut, never ended as if whole
        }
    }

    /// <summary>Submits an operation and writes its answer (<see cref="WriteAsync"/>), or its error in OpenAI's shape.</summary>
    internal static async Task AnswerAsync(HttpContext ctx, IGatewayQueue queue, GatewayResponseHeaders headers, ChatCompletionRequest request, CancellationToken aborted)
    {
        ChatCompletionResponse response;
        try
        {
            response = await ServerSubmit.SubmitAsync(queue, request, aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await OpenAIErrors.WriteAsync(ctx, ex);
            return;
        }

        headers.WriteGatewayHeaders(ctx, request, response.Gateway);
        await WriteAsync(ctx.Response, response, aborted);
    }

    /// <summary>
    /// Reads a request body of a route whose request is checked by hand (<paramref name="parse"/>: embeddings,
    /// moderations, completions), then the key's model, and gives the pipeline's request its per-request options and id;
    /// null once the route's error is written (invalid JSON, a refused member, a body too large or cut, a model the key
    /// may not use).
    /// </summary>
    internal static async Task<ChatCompletionRequest?> ReadAsync(HttpContext ctx, GatewayCaller caller, Func<byte[], ChatCompletionRequest> parse, GatewayKeys keys, ServerOptions options, ILogger logger)
    {
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ChatCompletionRequest request;
        try
        {
            request = parse(await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => body.ToArray(), ctx.RequestAborted));
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex) || ex is InvalidOperationException or ArgumentException or DecoderFallbackException)
        {
            // The last three: a string with an escape no character can be made of (a lone surrogate) — not valid JSON.
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
            return null;
        }

        return await AdmitAsync(ctx, caller, keys, request) ? request : null;
    }

    /// <summary>The key's model checked (false once the 403 is written), then the request's per-request options and id.</summary>
    internal static async Task<bool> AdmitAsync(HttpContext ctx, GatewayCaller caller, GatewayKeys keys, ChatCompletionRequest request)
    {
        if (!keys.MayUse(caller.Key, request.Model))
        {
            await RouteErrors.ModelNotAllowedAsync(ctx, request.Model);
            return false;
        }

        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        return true;
    }

    /// <summary>The largest piece of the vectors written before waiting for the client to take it.</summary>
    private const int Piece = 64 * 1024;

    /// <summary>
    /// The answer with its length, the upstream's <c>data</c> bytes written a piece at a time, each flushed: the client's
    /// pace holds the writing back, so an answer of tens of MB is never copied whole into the response's buffers.
    /// </summary>
    internal static async Task WriteAsync(HttpResponse http, ChatCompletionResponse response, CancellationToken aborted)
    {
        var (head, tail) = Operations.Frame(response);
        var data = response.Operation!.List;
        http.ContentType = response.Operation.MediaType; // JSON, or speech's audio
        http.ContentLength = head.Length + data.Length + tail.Length;
        await http.BodyWriter.WriteAsync(head, aborted);
        for (var at = 0; at < data.Length; at += Piece)
        {
            await http.BodyWriter.WriteAsync(data.Slice(at, Math.Min(Piece, data.Length - at)), aborted);
        }

        await http.BodyWriter.WriteAsync(tail, aborted);
    }
    /// <summary>
    /// An event's JSON with <c>cost</c> (US dollars) added to its <c>usage</c> object, every other member as it came (one
    /// line, for a <c>data:</c> line); as it came when it has no usage object (or is JSON this reader refuses: nested
    /// deeper than 64, say — the upstream's event is passed on, never a stream broken for a cost).
    /// </summary>
    internal static byte[] UsageWithCost(ReadOnlySpan<byte> json, decimal cost)
    {
        JsonDocument doc;
        try
        {
            var reader = new Utf8JsonReader(json);
            doc = JsonDocument.ParseValue(ref reader);
        }
        catch (JsonException)
        {
            return json.ToArray();
        }

        using var _ = doc;
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("usage", out var usage) || usage.ValueKind != JsonValueKind.Object)
        {
            return json.ToArray();
        }

        var buffer = new ArrayBufferWriter<byte>(json.Length + 32);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            foreach (var member in root.EnumerateObject())
            {
                if (!member.NameEquals("usage"))
                {
                    member.WriteTo(w);
                    continue;
                }

                w.WriteStartObject(member.Name);
                Serialization.WireJson.WriteMembersExcept(w, member.Value, "cost");
                w.WriteNumber("cost", cost);
                w.WriteEndObject();
            }

            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }
}
