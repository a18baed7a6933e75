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
internal sealed class ResponsesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ResponsesStore store, ILogger<ResponsesEndpoint> logger)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        var scope = ResponsesStore.ScopeOf(caller.Key);
        var stored = new Stored(store, scope);
        ResponsesCodec.Input input;
        try
        {
            input = await JsonBody.ReadAsync(ctx.Request.BodyReader, body => ResponsesCodec.Parse(body, stored), aborted);
        }
        catch (ResponsesCodec.NotFoundException ex)
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", ex.Code, ex.Message, ex.Param);
            return;
        }
        catch (JsonException ex)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not valid JSON: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
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

        var request = input.Request;
        if (!keys.MayUse(caller.Key, request.Model))
        {
            await RouteErrors.WriteAsync(ctx, 403, "permission_error", "model_not_allowed", $"This key may not use the model '{Providers.ProviderException.Quoted(request.Model)}'.", "model");
            return;
        }

        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        var keep = input.Store && store.Enabled;
        var writer = new ResponsesWriter(request, ResponsesStore.NewResponseId(), time.GetUtcNow().ToUnixTimeSeconds(), keep, input.PreviousResponseId)
        {
            Finished = keep ? (w, json) => store.Save(scope, w.Id, json, input.Earlier, input.Items, w.OutputItems()) : null,
        };
        if (request.Stream == true)
        {
            await NamedEventStream.WriteAsync(ctx, queue, request, writer, options, time, headers, aborted);
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

    /// <summary><c>GET /v1/responses/{id}</c>: a stored response, as it was answered.</summary>
    public async Task GetAsync(HttpContext ctx, string id)
    {
        if (store.Response(ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key), id) is not { } json)
        {
            await NotFoundAsync(ctx, id);
            return;
        }

        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(json, ctx.RequestAborted);
    }

    /// <summary><c>GET /v1/responses/{id}/input_items</c>: a stored response's own input items (references replaced by what they stood for).</summary>
    public async Task InputItemsAsync(HttpContext ctx, string id)
    {
        if (store.InputItems(ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key), id) is not { } items)
        {
            await NotFoundAsync(ctx, id);
            return;
        }

        using var doc = JsonDocument.Parse(items);
        var list = doc.RootElement.EnumerateArray().ToList();
        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder });
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var item in list)
        {
            item.WriteTo(w);
        }

        w.WriteEndArray();
        WriteId(w, "first_id", list.Count > 0 ? list[0] : null);
        WriteId(w, "last_id", list.Count > 0 ? list[^1] : null);
        w.WriteBoolean("has_more", false);
        w.WriteEndObject();
        await w.FlushAsync(ctx.RequestAborted);

        static void WriteId(Utf8JsonWriter w, string name, JsonElement? item)
        {
            if (item is { ValueKind: JsonValueKind.Object } o && o.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String)
            {
                w.WriteString(name, id.GetString());
            }
            else
            {
                w.WriteNull(name);
            }
        }
    }

    /// <summary><c>DELETE /v1/responses/{id}</c>: forgets a stored response and its output items.</summary>
    public async Task DeleteAsync(HttpContext ctx, string id)
    {
        if (!store.Delete(ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key), id))
        {
            await NotFoundAsync(ctx, id);
            return;
        }

        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body);
        w.WriteStartObject();
        w.WriteString("id", id);
        w.WriteString("object", "response");
        w.WriteBoolean("deleted", true);
        w.WriteEndObject();
        await w.FlushAsync(ctx.RequestAborted);
    }

    private static Task NotFoundAsync(HttpContext ctx, string id) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", $"Response with id '{Providers.ProviderException.Quoted(id)}' not found.", "response_id");

    /// <summary>The store as the codec looks things up: in the caller's scope.</summary>
    private sealed class Stored(ResponsesStore store, string scope) : ResponsesCodec.IStored
    {
        public JsonElement? Item(string id) => store.Item(scope, id);

        public JsonElement? Conversation(string responseId) => store.Conversation(scope, responseId);
    }
}
