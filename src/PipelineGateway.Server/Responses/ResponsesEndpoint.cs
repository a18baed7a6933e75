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
internal sealed class ResponsesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ResponsesStore store, Routing.ModelCatalog catalog, BackgroundResponses background, Pipeline.GatewayPipeline pipeline, Conversations conversations, ILogger<ResponsesEndpoint> logger)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var scope = ResponsesStore.ScopeOf(caller.Key);
        var (read, turn) = await ReadAsync(ctx, caller, scope, holdTurn: true);
        if (read is not { } input)
        {
            return;
        }

        try
        {
            await AnswerAsync(ctx, caller, scope, input, turn);
        }
        finally
        {
            if (turn is { HandedOver: false })
            {
                await turn.DisposeAsync(); // no turn added (a failure, a cancel): the conversation takes the next response
            }
        }
    }

    private async Task AnswerAsync(HttpContext ctx, GatewayCaller caller, string scope, ResponsesCodec.Input input, Conversations.Turn? turn)
    {
        var aborted = ctx.RequestAborted;
        var request = input.Request;
        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        await ToolCallRecall.RecallAsync(store, scope, request, aborted); // function_call items have no place for a call's extra members
        if (input.Background)
        {
            await StartBackgroundAsync(ctx, scope, input, turn);
            return;
        }

        var keep = input.Store && store.Enabled;
        var writer = new ResponsesWriter(request, ResponsesStore.NewResponseId(), time.GetUtcNow().ToUnixTimeSeconds(), keep, input.PreviousResponseId, conversationId: input.ConversationId)
        {
            Finished = keep || input.ConversationId is not null ? (w, json) => KeepAsync(scope, input, w, json, keep, turn: turn) : null,
        };
        if (request.Stream == true)
        {
            await NamedEventStream.WriteAsync(ctx, queue, request, writer, options, time, headers, ToolCallRecall.Gather(store, scope, request), aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            await ToolCallRecall.RememberAsync(store, scope, request, response);
            var json = writer.Whole(response);
            await writer.FinishedAsync(); // kept before the caller can refer to it
            if (writer.NotKept)
            {
                json = writer.Final(); // it says store: false
            }
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
    /// A finished response kept — stored (<paramref name="stored"/>), and its turn added to its conversation when it has
    /// one — before its last event or its body goes out.
    /// </summary>
    /// <returns>Whether a response to be stored was kept (true when it was not to be).</returns>
    private async Task<bool> KeepAsync(string scope, ResponsesCodec.Input input, ResponsesWriter writer, byte[] json, bool stored, int? lastSequence = null, Conversations.Turn? turn = null)
    {
        var output = writer.OutputItems();
        var kept = !stored || await store.SaveAsync(scope, writer.Id, json, input.Earlier, input.Items, output, lastSequence);

        await conversations.AddTurnAsync(scope, input.ConversationId, input.Items, output);
        if (turn is not null)
        {
            // Let go as soon as the turn is added — before the answer's body or last event goes out — so the caller's
            // next turn, sent the moment it has this answer, finds the conversation free.
            await turn.DisposeAsync();
        }

        return kept;
    }

    /// <summary>
    /// A background response (<see cref="BackgroundResponses"/>): refused now for what would only fail it later (nothing
    /// kept, a model no provider serves, the gateway stopping, too many at once), else answered at once as
    /// <c>queued</c> — or, asked with <c>stream</c>, its events as they are made (going away leaves it running).
    /// </summary>
    private async Task StartBackgroundAsync(HttpContext ctx, string scope, ResponsesCodec.Input input, Conversations.Turn? turn)
    {
        var request = input.Request;
        if (!store.Enabled)
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "unsupported_parameter", "background: this gateway keeps no responses (Server:StoredResponsesTtl is zero), so a background response could not be polled.", "background");
            return;
        }

        if (!catalog.TryResolve(request.Model, out _))
        {
            await RouteErrors.WriteAsync(ctx, catalog.NotFound(request.Model));
            return;
        }

        if (!pipeline.IsAccepting)
        {
            await RouteErrors.WriteAsync(ctx, new GatewayUnavailableException("The gateway is not accepting requests (shutting down)."));
            return;
        }

        var writer = new ResponsesWriter(request, ResponsesStore.NewResponseId(), time.GetUtcNow().ToUnixTimeSeconds(), store: true, input.PreviousResponseId, background: true, input.ConversationId)
        {
            // Kept with the sequence number of the event made next: its last (response.completed or .incomplete).
            Finished = (w, json) => KeepAsync(scope, input, w, json, stored: true, w.LastSequence + 1, turn),
        };
        var stream = request.Stream == true;
        BackgroundResponses.Started started;
        try
        {
            started = await background.StartAsync(scope, input, writer);
        }
        catch (StoreUnavailableException ex)
        {
            await StoreUnavailableAsync(ctx, ex);
            return;
        }

        if (started.KeyFull)
        {
            await RouteErrors.WriteAsync(ctx, 429, "rate_limit_error", "too_many_background_responses", $"This key has {options.MaxBackgroundResponsesPerKey} background responses queued or in progress here (Server:MaxBackgroundResponsesPerKey); retry when one ends.", retryAfter: TimeSpan.FromSeconds(1));
            return;
        }

        if (started is not { Json: { } json, Run: { } run })
        {
            await RouteErrors.WriteAsync(ctx, 503, "api_error", "too_many_background_responses", $"This gateway is making {options.MaxBackgroundResponses} background responses already (Server:MaxBackgroundResponses); retry shortly.", retryAfter: TimeSpan.FromSeconds(1));
            return;
        }

        turn?.HandTo(run.Completion); // the conversation is held until the run has added its turn, not until this answer

        if (stream)
        {
            await background.StreamAsync(ctx, run, after: -1, time);
            return;
        }

        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(json, ctx.RequestAborted);
    }

    /// <summary>
    /// <c>POST /v1/responses/{id}/cancel</c>: a background response queued or in progress is cancelled (its state
    /// <c>cancelled</c>, kept); the response as it then stands is the answer — a second cancel, or one of a response already
    /// done, answers it as it is (OpenAI's: cancelling is idempotent). A response not made in the background is a 400.
    /// </summary>
    public async Task CancelAsync(HttpContext ctx, string id)
    {
        var scope = ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key);
        var here = await background.CancelAsync(scope, id, ctx.RequestAborted);
        if (await LookUpAsync(ctx, id) is not { } stored)
        {
            return;
        }

        if (!IsBackground(stored))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "Only a background response can be cancelled ('background': true).", "response_id");
            return;
        }

        if (!here && stored.Running && store.Shared)
        {
            // Another instance of the fleet makes it: asked through the store, and its end waited for (it looks every
            // second) — up to CancelWait; then answered as it stands.
            try
            {
                await store.RequestCancelAsync(scope, id);
                for (var waited = TimeSpan.Zero; stored.Running && waited < CancelWait; waited += CancelPollInterval)
                {
                    await Task.Delay(CancelPollInterval, time, ctx.RequestAborted);
                    stored = await store.ResponseAsync(scope, id, ctx.RequestAborted) is { } now ? await SettleAsync(scope, id, now, ctx.RequestAborted) : stored;
                }
            }
            catch (StoreUnavailableException ex)
            {
                await StoreUnavailableAsync(ctx, ex);
                return;
            }
        }

        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(stored.Response, ctx.RequestAborted);
    }

    /// <summary>How long a cancel waits for another instance to end the run it asked it to cancel (it looks every <see cref="BackgroundResponses.CancelPoll"/>).</summary>
    private static readonly TimeSpan CancelWait = TimeSpan.FromSeconds(10);

    private static readonly TimeSpan CancelPollInterval = TimeSpan.FromMilliseconds(250);

    private static bool IsBackground(ResponsesStore.Stored stored)
    {
        using var doc = JsonDocument.Parse(stored.Response);
        return doc.RootElement.TryGetProperty("background", out var b) && b.ValueKind == JsonValueKind.True;
    }

    /// <summary>
    /// <c>POST /v1/responses/input_tokens</c>: what the request's input would count, by the gateway's tokenizer for the
    /// model group's first deployment (<c>x-gateway-token-count: tokenizer</c>) — the same body as a response's, its
    /// stored references included; nothing is sent upstream.
    /// </summary>
    public async Task InputTokensAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        if ((await ReadAsync(ctx, caller, ResponsesStore.ScopeOf(caller.Key))).Input is not { Request: var request })
        {
            return;
        }

        if (!catalog.TryResolve(request.Model, out var group))
        {
            await RouteErrors.WriteAsync(ctx, catalog.NotFound(request.Model));
            return;
        }

        var tokens = Admission.TokenCounter.CountPrompt(request, group.DeploymentArray[0].Model);
        ctx.Response.Headers["x-gateway-token-count"] = "tokenizer";
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync($$"""{"object":"response.input_tokens","input_tokens":{{tokens}}}""", ctx.RequestAborted);
    }

    /// <summary>The body read (its references fetched from the store) and the key's model checked; null once the error is written.</summary>
    /// <remarks>
    /// With <paramref name="holdTurn"/>, a request on a conversation holds it (<see cref="Conversations.BeginTurnAsync"/>)
    /// before its items are read — the caller lets it go — or is refused with a 409 <c>conversation_locked</c> while
    /// another response is made on it.
    /// </remarks>
    private async Task<(ResponsesCodec.Input? Input, Conversations.Turn? Turn)> ReadAsync(HttpContext ctx, GatewayCaller caller, string scope, bool holdTurn = false)
    {
        var aborted = ctx.RequestAborted;
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ResponsesCodec.Input input;
        Conversations.Turn? turn = null;
        try
        {
            var body = await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => body.ToArray(), aborted);
            var references = ResponsesCodec.References(body);
            if (holdTurn && references.Conversation is { } conversation)
            {
                turn = await conversations.BeginTurnAsync(scope, conversation);
            }

            var stored = await Stored.FetchAsync(store, scope, references, aborted);
            input = ResponsesCodec.Parse(body, stored);
            if (!keys.MayUse(caller.Key, input.Request.Model))
            {
                await ReleaseAsync(turn);
                await RouteErrors.ModelNotAllowedAsync(ctx, input.Request.Model);
                return (null, null);
            }

            return (input, turn);
        }
        catch (ConversationLockedException ex)
        {
            await RouteErrors.WriteAsync(ctx, 409, "invalid_request_error", "conversation_locked", ex.Message, "conversation", TimeSpan.FromSeconds(1));
        }
        catch (ResponsesCodec.NotFoundException ex)
        {
            await ReleaseAsync(turn);
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", ex.Code, ex.Message, ex.Param);
        }
        catch (StoreUnavailableException ex)
        {
            await ReleaseAsync(turn);
            await StoreUnavailableAsync(ctx, ex);
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex))
        {
            await ReleaseAsync(turn);
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
        }
        catch
        {
            await ReleaseAsync(turn);
            throw;
        }

        return (null, null);

        static ValueTask ReleaseAsync(Conversations.Turn? turn) => turn?.DisposeAsync() ?? ValueTask.CompletedTask;
    }

    /// <summary>
    /// <c>GET /v1/responses/{id}</c>: a stored response, as it was answered — a background response as it stands. With
    /// <c>stream=true</c> (a background response only), its events after <c>starting_after</c> (a sequence number; all when
    /// absent): from its run while this instance makes it, else — done, or made by another instance of a fleet (its state
    /// read every second until it is done) — the event that ended it, carrying the whole response.
    /// </summary>
    public async Task GetAsync(HttpContext ctx, string id)
    {
        var query = ctx.Request.Query;
        var stream = query["stream"].ToString();
        if (stream.Length > 0 && stream is not ("true" or "false"))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "stream: must be true or false.", "stream");
            return;
        }

        var after = -1;
        if (query["starting_after"].ToString() is { Length: > 0 } cursor
            && (!int.TryParse(cursor, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out after)))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "starting_after: must be an event's sequence number (an integer, 0 or more).", "starting_after");
            return;
        }

        if (stream != "true")
        {
            if (await LookUpAsync(ctx, id) is { } whole)
            {
                ctx.Response.ContentType = "application/json";
                await ctx.Response.Body.WriteAsync(whole.Response, ctx.RequestAborted);
            }

            return;
        }

        var scope = ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key);
        if (background.Find(scope, id) is { } run)
        {
            await background.StreamAsync(ctx, run, after, time);
            return;
        }

        if (await LookUpAsync(ctx, id) is not { } stored)
        {
            return;
        }

        if (!IsBackground(stored))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "stream: only a background response ('background': true) can be streamed again.", "stream");
            return;
        }

        await StreamEndAsync(ctx, scope, id, stored, after);
    }

    /// <summary>
    /// A background response this instance does not make (or no longer holds the events of), streamed: in a fleet the
    /// events its making instance shares through the store, as they come (every <see cref="BackgroundResponses.SharePoll"/>);
    /// its state read every second (keep-alive comments meanwhile) until it is done, then the event that ended it —
    /// <c>response.completed</c>, <c>.incomplete</c> or <c>.failed</c> with the response, at its own sequence number —
    /// unless the caller already had it; a cancelled response's stream just ends, as does one no longer kept.
    /// </summary>
    private async Task StreamEndAsync(HttpContext ctx, string scope, string id, ResponsesStore.Stored stored, int after)
    {
        var aborted = ctx.RequestAborted;
        BackgroundResponses.StartStream(ctx);
        await ctx.Response.BodyWriter.FlushAsync(aborted);
        try
        {
            // In a fleet the making instance shares its events (BackgroundResponses.SharePoll): they are written as they
            // come; the state is read every second.
            var shared = new SharedCursor(after);
            await WriteSharedAsync(ctx, scope, id, shared);
            var waited = TimeSpan.Zero;
            var read = TimeSpan.Zero;
            var poll = store.Shared ? BackgroundResponses.SharePoll : TimeSpan.FromSeconds(1);
            while (stored.Running)
            {
                await Task.Delay(poll, time, aborted);
                waited = await WriteSharedAsync(ctx, scope, id, shared) ? TimeSpan.Zero : waited + poll;
                if (waited >= options.StreamKeepAlive)
                {
                    waited = TimeSpan.Zero;
                    await ctx.Response.Body.WriteAsync(BackgroundResponses.KeepAlive, aborted);
                }

                read += poll;
                if (read < TimeSpan.FromSeconds(1))
                {
                    continue;
                }

                read = TimeSpan.Zero;
                if (await store.ResponseAsync(scope, id, aborted) is not { } now)
                {
                    return; // deleted, or no longer kept
                }

                stored = await SettleAsync(scope, id, now, aborted);
            }

            // The making instance shares its last events just after it kept the response done: looked for once more (and,
            // when it shared any, once again a turn later), then the event that ended it is written from the kept
            // response when the caller does not have it yet.
            if (store.Shared && shared.After < stored.LastSequence)
            {
                await WriteSharedAsync(ctx, scope, id, shared);
                if (shared.After < stored.LastSequence && shared.Batch > 0)
                {
                    await Task.Delay(BackgroundResponses.SharePoll, time, aborted);
                    await WriteSharedAsync(ctx, scope, id, shared);
                }
            }

            after = shared.After;

            var name = stored.Status switch
            {
                "completed" => "response.completed",
                "incomplete" => "response.incomplete",
                "failed" => "response.failed",
                _ => null,
            };
            if (name is null || stored.LastSequence <= after)
            {
                return;
            }

            var buffer = new System.Buffers.ArrayBufferWriter<byte>(stored.Response.Length + 96);
            using (var w = new Utf8JsonWriter(buffer))
            {
                w.WriteStartObject();
                w.WriteString("type", name);
                w.WriteNumber("sequence_number", stored.LastSequence);
                w.WritePropertyName("response");
                w.WriteRawValue(stored.Response, skipInputValidation: true);
                w.WriteEndObject();
            }

            Providers.Anthropic.AnthropicStreamWriter.Write(ctx.Response.BodyWriter, (name, buffer.WrittenSpan.ToArray()));
            await ctx.Response.BodyWriter.FlushAsync(aborted);
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            // The caller went away.
        }
        catch (StoreUnavailableException)
        {
            // The shared store went away mid-stream: the stream ends without its last event; the caller may resume.
        }
    }

    /// <summary>Where a stream of another instance's run stands: the next batch of shared events to read, the last event the caller has.</summary>
    private sealed class SharedCursor(int after)
    {
        public int Batch { get; set; }

        public int After { get; set; } = after;
    }

    /// <summary>
    /// Writes the events the instance making a background response has shared since <paramref name="cursor"/> (those
    /// after the caller's last), in order; true when any was written. Nothing without a shared store.
    /// </summary>
    private async Task<bool> WriteSharedAsync(HttpContext ctx, string scope, string id, SharedCursor cursor)
    {
        if (!store.Shared)
        {
            return false;
        }

        var wrote = false;
        while (await store.SharedEventsAsync(scope, id, cursor.Batch, ctx.RequestAborted) is { } batch)
        {
            cursor.Batch++;
            for (var i = 0; i < batch.Events.Count; i++)
            {
                if (batch.First + i > cursor.After)
                {
                    Providers.Anthropic.AnthropicStreamWriter.Write(ctx.Response.BodyWriter, batch.Events[i]);
                    cursor.After = batch.First + i;
                    wrote = true;
                }
            }
        }

        if (wrote)
        {
            await ctx.Response.BodyWriter.FlushAsync(ctx.RequestAborted);
        }

        return wrote;
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
        await ctx.Response.Body.WriteAsync(Conversations.ItemList(page, hasMore: start + page.Count < end), ctx.RequestAborted);
    }

    private static string? ItemId(JsonElement item) => Conversations.ItemId(item);

    /// <summary>
    /// <c>DELETE /v1/responses/{id}</c>: forgets a stored response and its output items — a background response this
    /// instance is still making is cancelled first (else its next state would keep it again).
    /// </summary>
    public async Task DeleteAsync(HttpContext ctx, string id)
    {
        bool deleted;
        try
        {
            var scope = ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key);
            await background.CancelAsync(scope, id, ctx.RequestAborted);
            deleted = await store.DeleteAsync(scope, id, ctx.RequestAborted);
            background.Forget(scope, id); // its events too
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
            var scope = ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key);
            if (await store.ResponseAsync(scope, id, ctx.RequestAborted) is { } stored)
            {
                return await SettleAsync(scope, id, stored, ctx.RequestAborted);
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

    /// <summary>
    /// A background response a fleet's instance left running when it stopped (killed: its lease lapsed and stayed missing
    /// past <see cref="BackgroundResponses.LeaseGrace"/>, and no instance makes it) is kept, and answered, as failed — its callers would otherwise poll a response no one makes until it
    /// expires. Anything else as it is.
    /// </summary>
    /// <exception cref="StoreUnavailableException">Redis could not be read.</exception>
    private async Task<ResponsesStore.Stored> SettleAsync(string scope, string id, ResponsesStore.Stored stored, CancellationToken cancellationToken)
    {
        if (!stored.Running || !store.Shared || background.Find(scope, id) is not null || await store.HasLeaseAsync(scope, id, cancellationToken))
        {
            return stored;
        }

        // Missing once is not enough: a Redis partition longer than the lease leaves a live run without one until its
        // instance renews it (within a renewal period). Settled only when it stayed missing past the grace.
        var now = time.GetUtcNow();
        if (now - await store.LeaseMissingSinceAsync(scope, id, now, cancellationToken) < BackgroundResponses.LeaseGrace)
        {
            return stored;
        }

        var response = System.Text.Json.Nodes.JsonNode.Parse(stored.Response)!;
        response["status"] = "failed";
        response["error"] = new System.Text.Json.Nodes.JsonObject { ["code"] = "server_error", ["message"] = BackgroundResponses.LeaseLapsed };
        var json = System.Text.Encoding.UTF8.GetBytes(response.ToJsonString());
        using var input = JsonDocument.Parse(stored.Input);
        // Its response.failed event, were it streamed, is the next one.
        await store.SaveAsync(scope, id, json, earlier: null, [.. input.RootElement.EnumerateArray().Select(static i => i.Clone())], output: null, stored.LastSequence + 1);
        return stored with { Response = json, Status = "failed", LastSequence = stored.LastSequence + 1 };
    }

    private static Task NotFoundAsync(HttpContext ctx, string id) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", $"Response with id '{Providers.ProviderException.Quoted(id)}' not found.", "response_id");

    internal static Task StoreUnavailableAsync(HttpContext ctx, StoreUnavailableException ex) =>
        RouteErrors.WriteAsync(ctx, 503, "api_error", "store_unavailable", ex.Message, retryAfter: TimeSpan.FromSeconds(1));

    /// <summary>What a request refers to, fetched from the store before it is read (the store may be Redis), in the caller's scope.</summary>
    private sealed class Stored : ResponsesCodec.IStored
    {
        private readonly Dictionary<string, JsonElement> _items = [];
        private string? _previous;
        private JsonElement? _conversation;
        private string? _conversationId;
        private JsonElement? _conversationItems;

        public static async ValueTask<Stored> FetchAsync(ResponsesStore store, string scope, (string? Previous, List<string> Items, string? Conversation) references, CancellationToken cancellationToken)
        {
            var stored = new Stored();
            if (references.Conversation is { } conversationId && await store.ConversationAsync(scope, conversationId, cancellationToken) is { } conversation)
            {
                stored._conversationId = conversationId;
                stored._conversationItems = conversation.Items;
            }

            if (references.Previous is { } previous && await store.ResponseAsync(scope, previous, cancellationToken) is { } response)
            {
                if (response.Conversation.ValueKind != JsonValueKind.Array)
                {
                    // A background response not done (or failed, or cancelled): there is no answer to continue from.
                    throw new ResponsesCodec.NotFoundException("previous_response_id", "invalid_value", $"Previous response with id '{Providers.ProviderException.Quoted(previous)}' is {response.Status}: only a completed or incomplete response can be continued.");
                }

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

        public JsonElement? ConversationItems(string conversationId) => conversationId == _conversationId ? _conversationItems : null;
    }
}
