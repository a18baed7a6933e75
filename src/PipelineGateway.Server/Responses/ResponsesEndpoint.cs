using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// <c>POST /v1/responses</c>: OpenAI's Responses API (the OpenAI SDKs' responses clients, the Agents SDK, Codex, the Vercel
/// AI SDK), its answers kept with <c>store</c> (<see cref="ResponsesStore"/>: <c>previous_response_id</c>,
/// <c>item_reference</c>, <c>GET</c>/<c>DELETE /v1/responses/{id}</c>, <c>input_items</c>, <c>input_tokens</c>), through
/// the same pipeline to any provider — the request read by <see cref="ResponsesCodec"/> into the canonical form, the
/// answer written back by <see cref="ResponsesWriter"/>, whole or as the API's SSE events. Errors in OpenAI's shape.
/// </summary>
internal sealed class ResponsesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ResponsesStore store, Routing.ModelCatalog catalog, ILogger<ResponsesEndpoint> logger)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        var scope = ResponsesStore.ScopeOf(caller.Key);
        if (await ReadAsync(ctx, caller, scope) is not { } input)
        {
            return;
        }

        var request = input.Request;
        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        var keep = input.Store && store.Enabled;
        var writer = new ResponsesWriter(request, ResponsesStore.NewResponseId(), time.GetUtcNow().ToUnixTimeSeconds(), keep, input.PreviousResponseId)
        {
            Finished = keep ? (w, json) => store.SaveAsync(scope, w.Id, json, input.Earlier, input.Items, w.OutputItems()) : null,
        };
        if (request.Stream == true)
        {
            await NamedEventStream.WriteAsync(ctx, queue, request, writer, options, time, headers, aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            var json = writer.Whole(response);
            await writer.FinishedAsync(); // kept before the caller can refer to it
            headers.WriteGatewayHeaders(ctx, request, response.Gateway);
            ctx.Response.ContentType = "application/json";
            await ctx.Response.Body.WriteAsync(json, aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await RouteErrors.WriteAsync(ctx, ex);
        }
    }

    /// <summary>
    /// <c>POST /v1/responses/input_tokens</c>: what the request's input would count, by the gateway's tokenizer for the
    /// model group's first deployment (<c>x-gateway-token-count: tokenizer</c>) — the same body as a response's, its
    /// stored references included; nothing is sent upstream.
    /// </summary>
    public async Task InputTokensAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        if (await ReadAsync(ctx, caller, ResponsesStore.ScopeOf(caller.Key)) is not { Request: var request })
        {
            return;
        }

        if (!catalog.TryResolve(request.Model, out var group))
        {
            await RouteErrors.WriteAsync(ctx, new ModelNotFoundException(request.Model));
            return;
        }

        var tokens = Admission.TokenCounter.CountPrompt(request, group.DeploymentArray[0].Model);
        ctx.Response.Headers["x-gateway-token-count"] = "tokenizer";
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync($$"""{"object":"response.input_tokens","input_tokens":{{tokens}}}""", ctx.RequestAborted);
    }

    /// <summary>The body read (its references fetched from the store) and the key's model checked; null once the error is written.</summary>
    private async Task<ResponsesCodec.Input?> ReadAsync(HttpContext ctx, GatewayCaller caller, string scope)
    {
        var aborted = ctx.RequestAborted;
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ResponsesCodec.Input input;
        try
        {
            var body = await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => body.ToArray(), aborted);
            var stored = await Stored.FetchAsync(store, scope, ResponsesCodec.References(body), aborted);
            input = ResponsesCodec.Parse(body, stored);
        }
        catch (ResponsesCodec.NotFoundException ex)
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", ex.Code, ex.Message, ex.Param);
            return null;
        }
        catch (StoreUnavailableException ex)
        {
            await StoreUnavailableAsync(ctx, ex);
            return null;
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex))
        {
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
            return null;
        }

        if (!keys.MayUse(caller.Key, input.Request.Model))
        {
            await RouteErrors.ModelNotAllowedAsync(ctx, input.Request.Model);
            return null;
        }

        return input;
    }

    /// <summary><c>GET /v1/responses/{id}</c>: a stored response, as it was answered.</summary>
    public async Task GetAsync(HttpContext ctx, string id)
    {
        if (await LookUpAsync(ctx, id) is { } stored)
        {
            ctx.Response.ContentType = "application/json";
            await ctx.Response.Body.WriteAsync(stored.Response, ctx.RequestAborted);
        }
    }

    /// <summary><c>GET /v1/responses/{id}/input_items</c>: a stored response's own input items (references replaced by what they stood for).</summary>
    public async Task InputItemsAsync(HttpContext ctx, string id)
    {
        // OpenAI's list parameters: order (desc by default: the newest first), limit (1-100, 20), after/before (an item id).
        var query = ctx.Request.Query;
        if (await ListPage.ReadAsync(ctx, 100, 20) is not { } asked)
        {
            return;
        }

        var limit = asked.Limit;
        if (await LookUpAsync(ctx, id) is not { } stored)
        {
            return;
        }

        using var doc = JsonDocument.Parse(stored.Input);
        var list = doc.RootElement.EnumerateArray().ToList();
        if (!asked.Ascending)
        {
            list.Reverse();
        }

        var start = 0;
        var end = list.Count;
        foreach (var (name, cursor) in new[] { ("after", query["after"].ToString()), ("before", query["before"].ToString()) })
        {
            if (cursor.Length == 0)
            {
                continue;
            }

            var at = list.FindIndex(i => ItemId(i) == cursor);
            if (at < 0)
            {
                await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", $"'{name}' names no input item of this response.", name);
                return;
            }

            (start, end) = name == "after" ? (Math.Max(start, at + 1), end) : (start, Math.Min(end, at));
        }

        var page = list.Skip(start).Take(Math.Max(0, Math.Min(limit, end - start))).ToList();
        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder });
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var item in page)
        {
            item.WriteTo(w);
        }

        w.WriteEndArray();
        w.WriteString("first_id", page.Count > 0 ? ItemId(page[0]) : null);
        w.WriteString("last_id", page.Count > 0 ? ItemId(page[^1]) : null);
        w.WriteBoolean("has_more", start + page.Count < end);
        w.WriteEndObject();
        await w.FlushAsync(ctx.RequestAborted);

        static string? ItemId(JsonElement item) =>
            item.ValueKind == JsonValueKind.Object && item.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String ? id.GetString() : null;
    }

    /// <summary><c>DELETE /v1/responses/{id}</c>: forgets a stored response and its output items.</summary>
    public async Task DeleteAsync(HttpContext ctx, string id)
    {
        bool deleted;
        try
        {
            deleted = await store.DeleteAsync(ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key), id, ctx.RequestAborted);
        }
        catch (StoreUnavailableException ex)
        {
            await StoreUnavailableAsync(ctx, ex);
            return;
        }

        if (!deleted)
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

    /// <summary>The caller's stored response, or null with the 404 (or 503) written.</summary>
    private async Task<ResponsesStore.Stored?> LookUpAsync(HttpContext ctx, string id)
    {
        try
        {
            if (await store.ResponseAsync(ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key), id, ctx.RequestAborted) is { } stored)
            {
                return stored;
            }
        }
        catch (StoreUnavailableException ex)
        {
            await StoreUnavailableAsync(ctx, ex);
            return null;
        }

        await NotFoundAsync(ctx, id);
        return null;
    }

    private static Task NotFoundAsync(HttpContext ctx, string id) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", $"Response with id '{Providers.ProviderException.Quoted(id)}' not found.", "response_id");

    private static Task StoreUnavailableAsync(HttpContext ctx, StoreUnavailableException ex) =>
        RouteErrors.WriteAsync(ctx, 503, "api_error", "store_unavailable", ex.Message, retryAfter: TimeSpan.FromSeconds(1));

    /// <summary>What a request refers to, fetched from the store before it is read (the store may be Redis), in the caller's scope.</summary>
    private sealed class Stored : ResponsesCodec.IStored
    {
        private readonly Dictionary<string, JsonElement> _items = [];
        private string? _previous;
        private JsonElement? _conversation;

        public static async ValueTask<Stored> FetchAsync(ResponsesStore store, string scope, (string? Previous, List<string> Items) references, CancellationToken cancellationToken)
        {
            var stored = new Stored();
            if (references.Previous is { } previous && await store.ResponseAsync(scope, previous, cancellationToken) is { } response)
            {
                stored._previous = previous;
                stored._conversation = response.Conversation;
            }

            // Every referenced item at once (a long conversation from the Vercel AI SDK refers to two items a turn): Redis
            // pipelines them.
            var ids = references.Items.Distinct().ToArray();
            var items = await Task.WhenAll(ids.Select(id => store.ItemAsync(scope, id, cancellationToken).AsTask()));
            for (var i = 0; i < ids.Length; i++)
            {
                if (items[i] is { } item)
                {
                    stored._items[ids[i]] = item;
                }
            }

            return stored;
        }

        public JsonElement? Item(string id) => _items.TryGetValue(id, out var item) ? item : null;

        public JsonElement? Conversation(string responseId) => responseId == _previous ? _conversation : null;
    }
}
