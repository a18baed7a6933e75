using System.Buffers;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// OpenAI's Conversations API (<c>/v1/conversations</c>): a conversation is a list of items — messages, function calls
/// and their outputs, reasoning items — that <c>/v1/responses</c> with <c>conversation</c> puts before its input and adds
/// each turn to (its input items, then its output items), so a caller keeps no history of its own (the Agents SDK's
/// conversation sessions). Kept with the stored responses (<see cref="ResponsesStore"/>: per gateway key, in the
/// instance's memory or in Redis, for <see cref="ServerOptions.StoredResponsesTtl"/> from its last change). A
/// conversation is written whole at each change, one change (or delete) at a time per conversation — in an instance by
/// its gate, across a fleet sharing Redis by a hold on it there (<see cref="ResponsesStore.HoldConversationAsync"/>).
/// </summary>
internal sealed partial class Conversations(ResponsesStore store, ServerOptions options, TimeProvider time, ILogger<Conversations> logger)
{
    /// <summary>Items one create or one add may carry (OpenAI's bound).</summary>
    public const int MaxItemsAtOnce = 20;

    private static readonly string[] Roles = ["user", "assistant", "system", "developer"];
    private static readonly string[] Types = ["message", "function_call", "function_call_output", "reasoning"];

    /// <summary>How long a change asked over HTTP waits for another instance's change to the same conversation: then a 409.</summary>
    internal static readonly TimeSpan ChangeWait = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long a response's turn waits to be added: past a hold left by an instance that stopped
    /// (<see cref="ResponsesStore.ConversationHoldExpiry"/>), since a turn not added is lost.
    /// </summary>
    internal static readonly TimeSpan TurnWait = ResponsesStore.ConversationHoldExpiry + TimeSpan.FromSeconds(5);

    // Conversations a response of this instance is being made on (OpenAI's: one response at a time on a conversation).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> _turns = new(StringComparer.Ordinal);

    // One change at a time per conversation (striped: a conversation's changes share its stripe's lock).
    private readonly SemaphoreSlim[] _locks = [.. Enumerable.Range(0, 64).Select(static _ => new SemaphoreSlim(1, 1))];

    /// <summary>
    /// Adds a response's turn to its conversation — its input items, then its output items — once the response is done.
    /// Never throws: a store that cannot be written is logged (the answer still goes out).
    /// </summary>
    public async Task AddTurnAsync(string scope, string? conversationId, IReadOnlyList<JsonElement> input, IReadOnlyList<(string Id, byte[] Json)> output)
    {
        if (conversationId is null)
        {
            return;
        }

        try
        {
            await ChangeAsync(scope, conversationId, (_, items) =>
            {
                items.AddRange(input.Select(WithId));
                items.AddRange(output.Select(static o => Parse(o.Json)));
                return null;
            }, TurnWait, CancellationToken.None);
        }
        catch (Exception ex) when (ex is StoreUnavailableException or InvalidOperationException or ConversationTooLargeException or ConversationLockedException)
        {
            LogNotAdded(logger, conversationId, ex.GetType().Name);
        }
    }

    /// <summary>
    /// Holds a conversation for one response — from before its items are read until its turn is added (or the response
    /// ends without one) — as OpenAI does: a second response on it meanwhile is refused (<c>conversation_locked</c>),
    /// never made from items that miss the first one's turn and added after it. Within the instance by a set of the
    /// conversations held, across a fleet sharing Redis by a renewed hold there (<see cref="ResponsesStore.HoldTurnAsync"/>).
    /// Items added or deleted meanwhile are not refused (they wait for one change at a time, as always).
    /// </summary>
    /// <exception cref="ConversationLockedException">Another response is being made on it.</exception>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    public async Task<Turn> BeginTurnAsync(string scope, string id)
    {
        var key = scope + "\n" + id;
        if (!_turns.TryAdd(key, 0))
        {
            throw new ConversationLockedException(ConversationLockedException.Turn);
        }

        try
        {
            return new Turn(this, key, await store.HoldTurnAsync(scope, id));
        }
        catch
        {
            _turns.TryRemove(key, out _);
            throw;
        }
    }

    /// <summary>A response's hold on its conversation (<see cref="BeginTurnAsync"/>): let go when disposed, or when the run it was handed to ends.</summary>
    internal sealed class Turn(Conversations owner, string key, IAsyncDisposable? fleet) : IAsyncDisposable
    {
        private int _released;

        /// <summary>Handed to a background response's run: let go when <paramref name="run"/> ends, not by its request.</summary>
        public bool HandedOver { get; private set; }

        public void HandTo(Task run)
        {
            HandedOver = true;
            _ = ReleaseAfterAsync(run);
        }

        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
            {
                return;
            }

            try
            {
                if (fleet is not null)
                {
                    await fleet.DisposeAsync();
                }
            }
            finally
            {
                owner._turns.TryRemove(key, out _);
            }
        }

        private async Task ReleaseAfterAsync(Task run)
        {
            try
            {
                await run;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A run's every end is kept as its state (BackgroundResponses); the hold goes either way.
            }
            finally
            {
                await DisposeAsync();
            }
        }
    }

    /// <summary><c>POST /v1/conversations</c>: <c>items</c> (up to 20) and <c>metadata</c> (up to 16 strings), both optional.</summary>
    public async Task CreateAsync(HttpContext ctx)
    {
        if (await ReadAsync(ctx) is not { } body)
        {
            return;
        }

        using (body)
        {
            var root = body.RootElement;
            List<JsonElement> items;
            Dictionary<string, string> metadata;
            try
            {
                Only(root, "items", "metadata");
                items = Items(root, required: false);
                metadata = Metadata(root) ?? [];
            }
            catch (InvalidRequestException ex)
            {
                await RouteErrors.WriteAsync(ctx, ex);
                return;
            }

            var id = ResponsesStore.NewConversationId();
            var conversation = Object(id, time.GetUtcNow().ToUnixTimeSeconds(), metadata);
            try
            {
                await store.SaveConversationAsync(Scope(ctx), id, conversation, items.Select(WithId));
            }
            catch (StoreUnavailableException ex)
            {
                await ResponsesEndpoint.StoreUnavailableAsync(ctx, ex);
                return;
            }
            catch (ConversationTooLargeException ex)
            {
                await TooLargeAsync(ctx, ex);
                return;
            }

            await WriteAsync(ctx, conversation);
        }
    }

    /// <summary><c>GET /v1/conversations/{id}</c>.</summary>
    public async Task GetAsync(HttpContext ctx, string id)
    {
        if (await FindAsync(ctx, id) is { } conversation)
        {
            await WriteAsync(ctx, conversation.Json);
        }
    }

    /// <summary><c>POST /v1/conversations/{id}</c>: its <c>metadata</c> replaced.</summary>
    public async Task UpdateAsync(HttpContext ctx, string id)
    {
        if (await ReadAsync(ctx) is not { } body)
        {
            return;
        }

        using (body)
        {
            Dictionary<string, string> metadata;
            try
            {
                Only(body.RootElement, "metadata");
                metadata = Metadata(body.RootElement) ?? throw new InvalidRequestException("metadata", "metadata: required (an object of up to 16 strings).");
            }
            catch (InvalidRequestException ex)
            {
                await RouteErrors.WriteAsync(ctx, ex);
                return;
            }

            await ChangeAndAnswerAsync(ctx, id, (conversation, _) =>
            {
                using var doc = JsonDocument.Parse(conversation);
                return Object(id, doc.RootElement.GetProperty("created_at").GetInt64(), metadata);
            });
        }
    }

    /// <summary><c>DELETE /v1/conversations/{id}</c>: the conversation and its items forgotten.</summary>
    public async Task DeleteAsync(HttpContext ctx, string id)
    {
        if (await FindAsync(ctx, id) is null)
        {
            return;
        }

        try
        {
            // Under the conversation's hold: a change read before the delete would otherwise write it back after.
            await using var hold = await HoldAsync(Scope(ctx), id, ChangeWait, ctx.RequestAborted);
            await store.DeleteConversationAsync(Scope(ctx), id, ctx.RequestAborted);
        }
        catch (StoreUnavailableException ex)
        {
            await ResponsesEndpoint.StoreUnavailableAsync(ctx, ex);
            return;
        }
        catch (ConversationLockedException ex)
        {
            await LockedAsync(ctx, ex);
            return;
        }

        await WriteAsync(ctx, Json(w =>
        {
            w.WriteStartObject();
            w.WriteString("id", id);
            w.WriteString("object", "conversation.deleted");
            w.WriteBoolean("deleted", true);
            w.WriteEndObject();
        }));
    }

    /// <summary><c>POST /v1/conversations/{id}/items</c>: <c>items</c> (1 to 20) added at its end; answers them as a list, with their ids.</summary>
    public async Task AddItemsAsync(HttpContext ctx, string id)
    {
        if (await ReadAsync(ctx) is not { } body)
        {
            return;
        }

        using (body)
        {
            List<JsonElement> items;
            try
            {
                Only(body.RootElement, "items");
                items = Items(body.RootElement, required: true);
            }
            catch (InvalidRequestException ex)
            {
                await RouteErrors.WriteAsync(ctx, ex);
                return;
            }

            var added = items.Select(WithId).ToList();
            if (await TryChangeAsync(ctx, id, (_, all) =>
            {
                all.AddRange(added);
                return null;
            }))
            {
                await WriteAsync(ctx, ItemList(added, hasMore: false));
            }
        }
    }

    /// <summary><c>GET /v1/conversations/{id}/items</c>: <c>limit</c> (1–100, 20), <c>order</c> (<c>desc</c> by default), <c>after</c> (an item's id).</summary>
    public async Task ListItemsAsync(HttpContext ctx, string id)
    {
        if (await ListPage.ReadAsync(ctx, 100, 20) is not { } page || await FindAsync(ctx, id) is not { } conversation)
        {
            return;
        }

        var items = conversation.Items.EnumerateArray().ToList();
        if (!page.Ascending)
        {
            items.Reverse();
        }

        var start = 0;
        if (page.After.Length > 0)
        {
            start = items.FindIndex(i => ItemId(i) == page.After) + 1;
            if (start == 0)
            {
                await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "'after' names no item of this conversation.", "after");
                return;
            }
        }

        var shown = items.Skip(start).Take(page.Limit).ToList();
        await WriteAsync(ctx, ItemList(shown, hasMore: start + shown.Count < items.Count));
    }

    /// <summary><c>GET /v1/conversations/{id}/items/{item}</c>.</summary>
    public async Task GetItemAsync(HttpContext ctx, string id, string itemId)
    {
        if (await FindAsync(ctx, id) is not { } conversation)
        {
            return;
        }

        if (conversation.Items.EnumerateArray().FirstOrDefault(i => ItemId(i) == itemId) is { ValueKind: JsonValueKind.Object } item)
        {
            await WriteAsync(ctx, Json(item.WriteTo));
            return;
        }

        await ItemNotFoundAsync(ctx, itemId);
    }

    /// <summary><c>DELETE /v1/conversations/{id}/items/{item}</c>: the item taken out; answers the conversation.</summary>
    public async Task DeleteItemAsync(HttpContext ctx, string id, string itemId)
    {
        var found = true;
        await ChangeAndAnswerAsync(ctx, id, (_, items) =>
        {
            found = items.RemoveAll(i => ItemId(i) == itemId) > 0;
            return null;
        }, () => found ? null : ItemNotFoundAsync(ctx, itemId));
    }

    /// <summary>
    /// A change to a kept conversation, one at a time per conversation: <paramref name="change"/> gets its object's JSON and
    /// its items (to change in place) and returns the object's new JSON, or null to keep it.
    /// </summary>
    /// <exception cref="InvalidOperationException">No such conversation (expired, deleted, another key's).</exception>
    /// <exception cref="ConversationLockedException">Another instance of the fleet held it for all of <paramref name="wait"/>.</exception>
    private async Task<byte[]> ChangeAsync(string scope, string id, Func<byte[], List<JsonElement>, byte[]?> change, TimeSpan wait, CancellationToken cancellationToken)
    {
        await using var hold = await HoldAsync(scope, id, wait, cancellationToken);
        var conversation = await store.ConversationAsync(scope, id, cancellationToken) ?? throw new InvalidOperationException("no such conversation");
        var items = conversation.Items.EnumerateArray().ToList();
        var json = change(conversation.Json, items) ?? conversation.Json;
        await store.SaveConversationAsync(scope, id, json, items);
        return json;
    }

    /// <summary>A conversation held for one change: the instance's gate for it, then the fleet's hold (none in memory).</summary>
    /// <remarks>
    /// The fleet's hold first: a change waiting for another instance's (up to <paramref name="wait"/>, a stopped
    /// instance's for seconds) holds no gate meanwhile — the gates are striped, and the other conversations of its stripe
    /// waited behind it. The gate is then only ever held for a read and a write.
    /// </remarks>
    private async Task<IAsyncDisposable> HoldAsync(string scope, string id, TimeSpan wait, CancellationToken cancellationToken)
    {
        var fleet = await store.HoldConversationAsync(scope, id, wait, cancellationToken);
        var gate = _locks[Stripe(scope, id)];
        try
        {
            await gate.WaitAsync(cancellationToken);
        }
        catch
        {
            if (fleet is not null)
            {
                await fleet.DisposeAsync();
            }

            throw;
        }

        return new Hold(gate, fleet);
    }

    /// <summary>The gate stripe a conversation's changes share within the instance.</summary>
    internal int Stripe(string scope, string id) => (int)((uint)StringComparer.Ordinal.GetHashCode(scope + "\n" + id) % (uint)_locks.Length);

    private sealed class Hold(SemaphoreSlim gate, ResponsesStore.ConversationHold? fleet) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            try
            {
                if (fleet is not null)
                {
                    await fleet.DisposeAsync();
                }
            }
            finally
            {
                gate.Release();
            }
        }
    }

    /// <summary>A change asked over HTTP; false once its error is answered (404, 503).</summary>
    private async Task<bool> TryChangeAsync(HttpContext ctx, string id, Func<byte[], List<JsonElement>, byte[]?> change)
    {
        try
        {
            await ChangeAsync(Scope(ctx), id, change, ChangeWait, ctx.RequestAborted);
            return true;
        }
        catch (InvalidOperationException)
        {
            await NotFoundAsync(ctx, id);
        }
        catch (ConversationLockedException ex)
        {
            await LockedAsync(ctx, ex);
        }
        catch (StoreUnavailableException ex)
        {
            await ResponsesEndpoint.StoreUnavailableAsync(ctx, ex);
        }
        catch (ConversationTooLargeException ex)
        {
            await TooLargeAsync(ctx, ex);
        }

        return false;
    }

    /// <summary>A change asked over HTTP, answered with the conversation as it then is (or what <paramref name="instead"/> answers).</summary>
    private async Task ChangeAndAnswerAsync(HttpContext ctx, string id, Func<byte[], List<JsonElement>, byte[]?> change, Func<Task?>? instead = null)
    {
        byte[]? json = null;
        if (await TryChangeAsync(ctx, id, (c, items) => json = change(c, items) ?? c))
        {
            if (instead?.Invoke() is { } other)
            {
                await other;
                return;
            }

            await WriteAsync(ctx, json!);
        }
    }

    private async Task<ResponsesStore.Conversation?> FindAsync(HttpContext ctx, string id)
    {
        try
        {
            if (await store.ConversationAsync(Scope(ctx), id, ctx.RequestAborted) is { } conversation)
            {
                return conversation;
            }
        }
        catch (StoreUnavailableException ex)
        {
            await ResponsesEndpoint.StoreUnavailableAsync(ctx, ex);
            return null;
        }

        await NotFoundAsync(ctx, id);
        return null;
    }

    /// <summary>The body as JSON (an object; none at all is an empty object), or null once the refusal is answered.</summary>
    private async Task<JsonDocument?> ReadAsync(HttpContext ctx)
    {
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        try
        {
            if (ctx.Request.ContentLength == 0)
            {
                return JsonDocument.Parse("{}");
            }

            var doc = await JsonBody.ReadAsync(ctx.Request.BodyReader, static b => JsonDocument.Parse(b.ToArray(), new JsonDocumentOptions { MaxDepth = 64 }), ctx.RequestAborted);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                doc.Dispose();
                throw new InvalidRequestException(null, "The request body must be a JSON object.");
            }

            return doc;
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex))
        {
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
            return null;
        }
    }

    private static void Only(JsonElement root, params string[] known)
    {
        foreach (var member in root.EnumerateObject())
        {
            if (!known.Contains(member.Name))
            {
                throw new InvalidRequestException(member.Name, $"Unknown parameter: '{Providers.ProviderException.Quoted(member.Name)}'.");
            }
        }
    }

    /// <summary>
    /// The <c>items</c>: input items as <c>/v1/responses</c> takes them — a message (a <c>role</c> of user, assistant, system
    /// or developer), a function call, its output, a reasoning item — up to <see cref="MaxItemsAtOnce"/>.
    /// </summary>
    private static List<JsonElement> Items(JsonElement root, bool required)
    {
        if (!root.TryGetProperty("items", out var items) || items.ValueKind == JsonValueKind.Null)
        {
            return required ? throw new InvalidRequestException("items", "items: required (a list of 1 to 20 items).") : [];
        }

        if (items.ValueKind != JsonValueKind.Array || items.GetArrayLength() > MaxItemsAtOnce || (required && items.GetArrayLength() == 0))
        {
            throw new InvalidRequestException("items", $"items: expected a list of {(required ? 1 : 0)} to {MaxItemsAtOnce} items.");
        }

        var list = new List<JsonElement>();
        var i = 0;
        foreach (var item in items.EnumerateArray())
        {
            var at = $"items[{i++}]";
            var role = item.ValueKind == JsonValueKind.Object && item.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString() : null;
            var type = item.ValueKind == JsonValueKind.Object && item.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (item.ValueKind != JsonValueKind.Object || (type is null ? !Roles.Contains(role) : !Types.Contains(type) || (type == "message" && !Roles.Contains(role))))
            {
                throw new InvalidRequestException(at, $"{at}: expected a message (role user, assistant, system or developer), a function_call, a function_call_output or a reasoning item.");
            }

            if (type is "message" or null && !item.TryGetProperty("content", out _))
            {
                throw new InvalidRequestException($"{at}.content", $"{at}.content: required.");
            }

            list.Add(item.Clone());
        }

        return list;
    }

    /// <summary>The <c>metadata</c>: up to 16 string values, keys up to 64 characters, values up to 512 (null: not given).</summary>
    private static Dictionary<string, string>? Metadata(JsonElement root)
    {
        if (!root.TryGetProperty("metadata", out var metadata) || metadata.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (metadata.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException("metadata", "metadata: expected an object of up to 16 strings.");
        }

        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in metadata.EnumerateObject())
        {
            if (pair.Value.ValueKind != JsonValueKind.String || pair.Name.Length > 64 || pair.Value.GetString()!.Length > 512)
            {
                throw new InvalidRequestException($"metadata.{pair.Name}", "metadata: each key up to 64 characters, each value a string of up to 512.");
            }

            map[pair.Name] = pair.Value.GetString()!;
        }

        return map.Count <= 16 ? map : throw new InvalidRequestException("metadata", "metadata: at most 16 keys.");
    }

    private static byte[] Object(string id, long createdAt, Dictionary<string, string> metadata) => Json(w =>
    {
        w.WriteStartObject();
        w.WriteString("id", id);
        w.WriteString("object", "conversation");
        w.WriteNumber("created_at", createdAt);
        w.WriteStartObject("metadata");
        foreach (var (key, value) in metadata)
        {
            w.WriteString(key, value);
        }

        w.WriteEndObject();
        w.WriteEndObject();
    });

    /// <summary>Items as OpenAI lists them (<c>object</c> list, <c>data</c>, <c>first_id</c>, <c>last_id</c>, <c>has_more</c>): a conversation's, or a response's input items.</summary>
    internal static byte[] ItemList(List<JsonElement> items, bool hasMore) => Json(w =>
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var item in items)
        {
            item.WriteTo(w);
        }

        w.WriteEndArray();
        w.WriteString("first_id", items.Count > 0 ? ItemId(items[0]) : null);
        w.WriteString("last_id", items.Count > 0 ? ItemId(items[^1]) : null);
        w.WriteBoolean("has_more", hasMore);
        w.WriteEndObject();
    });

    /// <summary>An item as a conversation keeps it: with an id (its own, or a new one) and a message's content as a list, as OpenAI lists them.</summary>
    private static JsonElement WithId(JsonElement item) => Parse(Json(w => ResponsesStore.WriteInputItem(w, item)));

    /// <summary>An item's id (null: it has none).</summary>
    internal static string? ItemId(JsonElement item) =>
        item.ValueKind == JsonValueKind.Object && item.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String ? id.GetString() : null;

    private static string Scope(HttpContext ctx) => ResponsesStore.ScopeOf(ctx.Features.Get<GatewayCaller>()!.Key);

    private static async Task WriteAsync(HttpContext ctx, byte[] json)
    {
        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(json, ctx.RequestAborted);
    }

    private static Task NotFoundAsync(HttpContext ctx, string id) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", $"Conversation with id '{Providers.ProviderException.Quoted(id)}' not found.", "conversation_id");

    private static Task TooLargeAsync(HttpContext ctx, ConversationTooLargeException ex) =>
        RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "conversation_too_large", ex.Message, "items");

    private static Task LockedAsync(HttpContext ctx, ConversationLockedException ex) =>
        RouteErrors.WriteAsync(ctx, 409, "invalid_request_error", "conversation_locked", ex.Message, "conversation_id", retryAfter: TimeSpan.FromSeconds(1));

    private static Task ItemNotFoundAsync(HttpContext ctx, string itemId) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", $"Item with id '{Providers.ProviderException.Quoted(itemId)}' not found in this conversation.", "item_id");

    private static JsonElement Parse(byte[] json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.Clone();
    }

    private static byte[] Json(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            write(w);
        }

        return buffer.WrittenSpan.ToArray();
    }

    [LoggerMessage(EventId = 132, Level = LogLevel.Warning, Message = "A response's turn was not added to conversation {ConversationId} ({Error}): it is not kept, or the store could not be written.")]
    private static partial void LogNotAdded(ILogger logger, string conversationId, string error);
}
