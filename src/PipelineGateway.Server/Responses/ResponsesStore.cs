using System.Buffers;
using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Caching;
using PipelineGateway.Redis;
using StackExchange.Redis;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// The <c>/v1/responses</c> answers asked with <c>store</c> (OpenAI's default): each response's output items, by id, for
/// the <c>item_reference</c> input items the Vercel AI SDK sends in place of its earlier turns (and of reasoning items),
/// the conversation so far for <c>previous_response_id</c> (the earlier input and output items, not the instructions,
/// as OpenAI carries them), and the response for <c>GET /v1/responses/{id}</c>. Kept for
/// <see cref="ServerOptions.StoredResponsesTtl"/>, per gateway key (another key's ids are not found), in the instance's
/// memory within <see cref="ServerOptions.StoredResponsesMaxBytes"/> (the response cache's exact LRU) — or, in
/// distributed mode (<c>Gateway:Redis</c>, <see cref="RedisOptions.StoredResponses"/>), in Redis only, so every
/// instance finds what any kept and a delete is seen by all. Ids are random (128 bits), never a counter another caller
/// could walk.
/// </summary>
internal sealed partial class ResponsesStore
{
    /// <summary>
    /// What one stored thing costs beyond its JSON — the array's header, the LRU's node, the dictionary's slot and the key
    /// (counted apart, as UTF-16) — for the byte bound.
    /// </summary>
    private const int Overhead = 160;

    private readonly ServerOptions _options;
    private readonly LruStore<string, byte[]>? _local;
    private readonly IDistributedCache? _shared;
    private readonly RedisConnection? _redis;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;

    public ResponsesStore(ServerOptions options, TimeProvider time, IServiceProvider services, ILogger<ResponsesStore> logger)
    {
        _options = options;
        _time = time;
        _logger = logger;
        _shared = services.GetKeyedService<IDistributedCache>(RedisOptions.StoredResponsesServiceKey);
        _redis = _shared is null ? null : services.GetService<RedisConnection>(); // none: a host's own shared cache, no fleet hold
        _local = _shared is null ? new LruStore<string, byte[]>(int.MaxValue, options.StoredResponsesMaxBytes, time) : null;
    }

    /// <summary>How long a fleet's hold on a conversation lasts when its instance stops before letting it go.</summary>
    internal static readonly TimeSpan ConversationHoldExpiry = TimeSpan.FromSeconds(10);

    /// <summary>How often a change waiting for another instance's hold on a conversation asks again.</summary>
    internal static readonly TimeSpan ConversationHoldPoll = TimeSpan.FromMilliseconds(20);

    /// <summary>
    /// A stored response: its JSON, the conversation it ends (null until it is done: a background response queued, in
    /// progress, failed or cancelled), its own input items, its output items' ids, its status, and the sequence number of
    /// its last streamed event (a background response's, for a stream resumed after it ended; -1 when not kept).
    /// </summary>
    public sealed record Stored(byte[] Response, JsonElement Conversation, byte[] Input, string[] Items, string Status, int LastSequence)
    {
        /// <summary>Still being made (a background response queued or in progress).</summary>
        public bool Running => Status is "queued" or "in_progress";
    }

    public bool Enabled => _options.StoredResponsesTtl > TimeSpan.Zero && (_shared is not null || _options.StoredResponsesMaxBytes > 0);

    /// <summary>Kept in Redis, shared by the fleet (else in this instance's memory).</summary>
    public bool Shared => _shared is not null;

    /// <summary>
    /// An input item as <c>GET /v1/responses/{id}/input_items</c> lists it, as OpenAI does: with an <c>id</c> (its own, or
    /// a new one by its type: <c>msg_</c>, <c>fc_</c>, <c>fco_</c>, <c>rs_</c>, else <c>item_</c>, and 128 random bits), a
    /// message with its <c>type</c> and its text as a content list (<c>input_text</c>; <c>output_text</c> for the
    /// assistant's). The conversation replayed to the model keeps the items as they were sent.
    /// </summary>
    internal static void WriteInputItem(Utf8JsonWriter w, JsonElement item)
    {
        if (item.ValueKind != JsonValueKind.Object)
        {
            item.WriteTo(w);
            return;
        }

        var type = item.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()!
            : item.TryGetProperty("role", out _) ? "message" : null;
        w.WriteStartObject();
        if (item.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String)
        {
            w.WriteString("id", id.GetString());
        }
        else
        {
            var prefix = type switch { "message" => "msg_", "function_call" => "fc_", "function_call_output" => "fco_", "reasoning" => "rs_", _ => "item_" };
            w.WriteString("id", prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
        }

        if (type is not null)
        {
            w.WriteString("type", type);
        }

        foreach (var member in item.EnumerateObject())
        {
            if (member.NameEquals("id") || member.NameEquals("type"))
            {
                continue;
            }

            if (type == "message" && member.NameEquals("content") && member.Value.ValueKind == JsonValueKind.String)
            {
                var assistant = item.TryGetProperty("role", out var role) && role.ValueKind == JsonValueKind.String && role.ValueEquals("assistant");
                w.WriteStartArray("content");
                w.WriteStartObject();
                w.WriteString("type", assistant ? "output_text" : "input_text");
                w.WriteString("text", member.Value.GetString());
                w.WriteEndObject();
                w.WriteEndArray();
                continue;
            }

            member.WriteTo(w);
        }

        w.WriteEndObject();
    }

    /// <summary>A new response id: <c>resp_</c> and 128 random bits.</summary>
    public static string NewResponseId() => "resp_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));

    /// <summary>The scope a caller's things are kept in: its gateway key (every caller shares one when no keys are configured).</summary>
    public static string ScopeOf(GatewayKeyOptions? key) => key?.Id ?? string.Empty;

    /// <summary>A stored item's JSON (null: none, expired, or another key's).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be read.</exception>
    public async ValueTask<JsonElement?> ItemAsync(string scope, string id, CancellationToken cancellationToken) =>
        await GetAsync(Key('i', scope, id), cancellationToken).ConfigureAwait(false) is { } json ? Parse(json) : null;

    /// <summary>A stored response (null: none, expired, or another key's).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be read.</exception>
    public async ValueTask<Stored?> ResponseAsync(string scope, string responseId, CancellationToken cancellationToken)
    {
        if (await GetAsync(Key('r', scope, responseId), cancellationToken).ConfigureAwait(false) is not { } envelope)
        {
            return null;
        }

        using var doc = JsonDocument.Parse(envelope);
        var root = doc.RootElement;
        var response = root.GetProperty("response");
        return new Stored(
            Encoding.UTF8.GetBytes(response.GetRawText()),
            root.GetProperty("conversation").Clone(),
            Encoding.UTF8.GetBytes(root.GetProperty("input").GetRawText()),
            [.. root.GetProperty("items").EnumerateArray().Select(static i => i.GetString()!)],
            response.TryGetProperty("status", out var status) && status.ValueKind == JsonValueKind.String ? status.GetString()! : "completed",
            root.TryGetProperty("last_sequence", out var last) && last.TryGetInt32(out var n) ? n : -1);
    }

    /// <summary>
    /// Keeps a finished response: each output item by its id, then the response with the conversation it ends — the
    /// items before it (<paramref name="earlier"/>, a response's own conversation), its input items, its output items.
    /// With <paramref name="output"/> null, a background response not done (queued, in progress, failed, cancelled): its
    /// state and input items, no conversation to continue. <paramref name="lastSequence"/>: a background response's last
    /// event's sequence number. Never throws: a shared store that cannot be written is logged (the answer still goes out).
    /// </summary>
    /// <returns>Whether it was kept (false: larger than the memory bound holds, or the shared store could not be written).</returns>
    public async Task<bool> SaveAsync(string scope, string responseId, byte[] response, JsonElement? earlier, IReadOnlyList<JsonElement> input, IReadOnlyList<(string Id, byte[] Json)>? output, int? lastSequence = null)
    {
        var envelope = Json(w =>
        {
            w.WriteStartObject();
            w.WritePropertyName("response");
            w.WriteRawValue(response, skipInputValidation: true);
            if (output is null)
            {
                w.WriteNull("conversation");
            }
            else
            {
                w.WriteStartArray("conversation");
                if (earlier is { ValueKind: JsonValueKind.Array } before)
                {
                    foreach (var item in before.EnumerateArray())
                    {
                        item.WriteTo(w);
                    }
                }

                foreach (var item in input)
                {
                    item.WriteTo(w);
                }

                foreach (var (_, json) in output)
                {
                    w.WriteRawValue(json, skipInputValidation: true);
                }

                w.WriteEndArray();
            }

            if (lastSequence is { } last)
            {
                w.WriteNumber("last_sequence", last);
            }

            w.WriteStartArray("input");
            foreach (var item in input)
            {
                WriteInputItem(w, item);
            }

            w.WriteEndArray();
            w.WriteStartArray("items");
            foreach (var (id, _) in output ?? [])
            {
                w.WriteStringValue(id);
            }

            w.WriteEndArray();
            w.WriteEndObject();
        });

        try
        {
            // All at once: Redis pipelines them (one round trip's wait, not one per item).
            output ??= [];
            var writes = new Task<bool>[output.Count + 1];
            for (var i = 0; i < output.Count; i++)
            {
                writes[i] = SetAsync(Key('i', scope, output[i].Id), output[i].Json).AsTask();
            }

            writes[^1] = SetAsync(Key('r', scope, responseId), envelope).AsTask();
            if ((await Task.WhenAll(writes).ConfigureAwait(false)).Contains(false))
            {
                // Larger than the instance's memory bound holds at all: said, not silent (its id is then not found).
                LogTooLarge(_logger, responseId, envelope.Length, _options.StoredResponsesMaxBytes);
                return false;
            }

            return true;
        }
        catch (Exception ex) when (_shared is not null)
        {
            LogNotKept(_logger, responseId, ex.GetType().Name);
            return false;
        }
    }

    /// <summary>What is kept under a tool call's id for a tool loop's next step.</summary>
    public enum ForToolCall
    {
        /// <summary>Claude's thinking blocks of a chat answer that called tools (<see cref="ThinkingRecall"/>).</summary>
        Thinking = 't',

        /// <summary>The members a step's tool calls carried that the gateway does not model (<see cref="ToolCallRecall"/>).</summary>
        Extras = 'm',
    }

    /// <summary>
    /// Keeps what a tool loop's next step needs back, by the step's first tool call's id. Never throws: a shared store
    /// that cannot be written is logged (the next step is then sent without it).
    /// </summary>
    public async Task RememberForToolCallAsync(ForToolCall kind, string scope, string toolCallId, byte[] json)
    {
        try
        {
            await SetAsync(Key((char)kind, scope, toolCallId), json).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null)
        {
            LogNotKept(_logger, toolCallId, ex.GetType().Name);
        }
    }

    /// <summary>What was kept for a tool call (null: nothing, expired, another key's, or the shared store down).</summary>
    public async ValueTask<JsonElement?> RecallForToolCallAsync(ForToolCall kind, string scope, string toolCallId, CancellationToken cancellationToken)
    {
        try
        {
            return await GetAsync(Key((char)kind, scope, toolCallId), cancellationToken).ConfigureAwait(false) is { } json ? Parse(json) : null;
        }
        catch (StoreUnavailableException)
        {
            return null; // sent without it, as when nothing was kept
        }
    }

    /// <summary>A conversation (the Conversations API): its object's JSON and its items (each with its id), in order.</summary>
    public sealed record Conversation(byte[] Json, JsonElement Items);

    /// <summary>New conversation ids: <c>conv_</c> and 128 random bits.</summary>
    public static string NewConversationId() => "conv_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));

    /// <summary>A kept conversation (null: none, expired, deleted, or another key's).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be read.</exception>
    public async ValueTask<Conversation?> ConversationAsync(string scope, string conversationId, CancellationToken cancellationToken)
    {
        if (await GetAsync(Key('c', scope, conversationId), cancellationToken).ConfigureAwait(false) is not { } envelope)
        {
            return null;
        }

        using var doc = JsonDocument.Parse(envelope);
        return new Conversation(Encoding.UTF8.GetBytes(doc.RootElement.GetProperty("conversation").GetRawText()), doc.RootElement.GetProperty("items").Clone());
    }

    /// <summary>Keeps a conversation whole: its object and its items (for <see cref="ServerOptions.StoredResponsesTtl"/> from now).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be written.</exception>
    /// <exception cref="ConversationTooLargeException">Larger than the instance's memory bound holds: it stays as it was.</exception>
    public async ValueTask SaveConversationAsync(string scope, string conversationId, byte[] conversation, IEnumerable<JsonElement> items)
    {
        var envelope = Json(w =>
        {
            w.WriteStartObject();
            w.WritePropertyName("conversation");
            w.WriteRawValue(conversation, skipInputValidation: true);
            w.WriteStartArray("items");
            foreach (var item in items)
            {
                item.WriteTo(w);
            }

            w.WriteEndArray();
            w.WriteEndObject();
        });
        try
        {
            if (!await SetAsync(Key('c', scope, conversationId), envelope).ConfigureAwait(false))
            {
                throw new ConversationTooLargeException(envelope.Length, _options.StoredResponsesMaxBytes);
            }
        }
        catch (Exception ex) when (_shared is not null)
        {
            throw new StoreUnavailableException(ex);
        }
    }

    /// <summary>
    /// Holds a conversation for one change — read, changed, written whole — against the other instances of a fleet that
    /// share the store: without it, two instances changing one conversation at once each wrote what they had read plus
    /// their own items, and the later write lost the earlier one's. A key of its own (kind <c>w</c>) taken with a token
    /// (StackExchange.Redis's <c>LockTake</c>: <c>SET NX PX</c>), asked again every <see cref="ConversationHoldPoll"/> while
    /// another instance holds it, for up to <paramref name="wait"/>; one left by an instance that stopped is gone after
    /// <see cref="ConversationHoldExpiry"/>. Null in memory: the instance's own gate (<see cref="Conversations"/>) is the
    /// only one.
    /// </summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    /// <exception cref="ConversationLockedException">Another instance held it for all of <paramref name="wait"/>.</exception>
    public async ValueTask<ConversationHold?> HoldConversationAsync(string scope, string conversationId, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (_redis is null)
        {
            return null;
        }

        var key = ConversationHoldKey(scope, conversationId);
        var until = _time.GetUtcNow() + wait;
        while (true)
        {
            if (await TryHoldAsync(key, ConversationHoldExpiry).ConfigureAwait(false) is { } hold)
            {
                return hold;
            }

            if (_time.GetUtcNow() >= until)
            {
                throw new ConversationLockedException(ConversationLockedException.Change);
            }

            var again = Task.Delay(ConversationHoldPoll, _time, cancellationToken);
            HoldWaiting?.Invoke(); // after the wait's timer is set: a test's clock moved now moves it
            await again.ConfigureAwait(false);
        }
    }

    /// <summary>How long a fleet's hold on a conversation for a response's turn lasts unless renewed (its instance renews it every third of this while the response is made).</summary>
    internal static readonly TimeSpan TurnHoldExpiry = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Holds a conversation for a response's turn — from before its items are read until its turn is added — against the
    /// other instances of a fleet sharing the store (kind <c>u</c>, <c>LockTake</c> once: a turn is refused, not queued,
    /// as OpenAI refuses it), renewed every third of <see cref="TurnHoldExpiry"/> while held (a background response's run
    /// may take minutes); one left by an instance that stopped is gone within <see cref="TurnHoldExpiry"/>. Null in memory.
    /// </summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    /// <exception cref="ConversationLockedException">Another instance's response holds it.</exception>
    public async ValueTask<IAsyncDisposable?> HoldTurnAsync(string scope, string conversationId)
    {
        if (_redis is null)
        {
            return null;
        }

        var key = (RedisKey)(_redis.Options.KeyPrefix + ":r:" + Key('u', scope, conversationId));
        var hold = await TryHoldAsync(key, TurnHoldExpiry).ConfigureAwait(false) ?? throw new ConversationLockedException(ConversationLockedException.Turn);
        var renewal = _time.CreateTimer(static state => ((ConversationHold)state!).Renew(TurnHoldExpiry), hold, TurnHoldExpiry / 3, TurnHoldExpiry / 3);
        hold.Renewal = renewal;
        return hold;
    }

    /// <summary>A hold on <paramref name="key"/> with a token of its own (<c>LockTake</c>, once); null when another has it.</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    private async ValueTask<ConversationHold?> TryHoldAsync(RedisKey key, TimeSpan expiry)
    {
        var token = (RedisValue)RandomNumberGenerator.GetBytes(16);
        try
        {
            return await _redis!.Database.LockTakeAsync(key, token, expiry).ConfigureAwait(false) ? new ConversationHold(_redis, key, token) : null;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw new StoreUnavailableException(ex);
        }
    }

    /// <summary>Raised each time a change finds its conversation held by another instance and waits (for tests).</summary>
    internal event Action? HoldWaiting;

    /// <summary>The Redis key of a fleet's hold on a conversation (under the stored responses' prefix).</summary>
    internal RedisKey ConversationHoldKey(string scope, string conversationId) =>
        _redis!.Options.KeyPrefix + ":r:" + Key('w', scope, conversationId);

    /// <summary>A fleet's hold on a conversation (<see cref="HoldConversationAsync"/>), let go when disposed.</summary>
    internal sealed class ConversationHold(RedisConnection redis, RedisKey key, RedisValue token) : IAsyncDisposable
    {
        /// <summary>What renews it while held (a response's turn), stopped when it is let go.</summary>
        public ITimer? Renewal { get; set; }

        /// <summary>Extends it (if still this hold's); a renewal that fails is tried again at the next one.</summary>
        public void Renew(TimeSpan expiry)
        {
            try
            {
                _ = redis.Database.LockExtendAsync(key, token, expiry, CommandFlags.FireAndForget);
            }
            catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
            {
                // Redis away: renewed at the next turn of the timer, if it is back before the hold expires.
            }
        }

        /// <summary>Lets it go (only if still this hold's: one that expired may be another's by now). Never throws: a hold not let go expires.</summary>
        public async ValueTask DisposeAsync()
        {
            if (Renewal is { } renewal)
            {
                await renewal.DisposeAsync().ConfigureAwait(false);
            }

            try
            {
                await redis.Database.LockReleaseAsync(key, token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
            {
                // Not let go: it expires by itself (ConversationHoldExpiry).
            }
        }
    }

    /// <summary>Forgets a conversation and its items.</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    public async ValueTask DeleteConversationAsync(string scope, string conversationId, CancellationToken cancellationToken)
    {
        try
        {
            await RemoveAsync(Key('c', scope, conversationId), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null && ex is not OperationCanceledException)
        {
            throw new StoreUnavailableException(ex);
        }
    }

    /// <summary>
    /// Says a background response's run is alive, for <paramref name="ttl"/> (a fleet sharing the store: the instance making
    /// it renews this while it runs; a run found with none was left by an instance that stopped without ending it).
    /// Never throws: a lease not written is renewed at the next turn.
    /// </summary>
    public async ValueTask RenewLeaseAsync(string scope, string responseId, TimeSpan ttl)
    {
        try
        {
            await SetAsync(Key('l', scope, responseId), [1], ttl).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null)
        {
            LogNotKept(_logger, responseId, ex.GetType().Name);
        }
    }

    /// <summary>
    /// When a background response's lease was first seen missing (kind <c>s</c>): <paramref name="now"/> when this is the
    /// first sighting (then kept for twice the lease), else the earlier one. A run is settled as left by a stopped
    /// instance only once its lease has stayed missing a while: after a Redis partition longer than the lease, the
    /// instance still making it renews within <see cref="BackgroundResponses.LeaseRenewal"/> and clears this.
    /// </summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    public async ValueTask<DateTimeOffset> LeaseMissingSinceAsync(string scope, string responseId, DateTimeOffset now, CancellationToken cancellationToken)
    {
        var key = Key('s', scope, responseId);
        now = DateTimeOffset.FromUnixTimeMilliseconds(now.ToUnixTimeMilliseconds()); // as kept: whole milliseconds
        if (await GetAsync(key, cancellationToken).ConfigureAwait(false) is { Length: 8 } seen)
        {
            return DateTimeOffset.FromUnixTimeMilliseconds(BitConverter.ToInt64(seen));
        }

        try
        {
            await SetAsync(key, BitConverter.GetBytes(now.ToUnixTimeMilliseconds()), 2 * BackgroundResponses.Lease).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null)
        {
            throw new StoreUnavailableException(ex);
        }

        return now;
    }

    /// <summary>Forgets a sighting of a missing lease (<see cref="LeaseMissingSinceAsync"/>): the run's instance renewed it. Never throws.</summary>
    public async ValueTask LeaseSeenAsync(string scope, string responseId)
    {
        try
        {
            await RemoveAsync(Key('s', scope, responseId), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null)
        {
            LogNotKept(_logger, responseId, ex.GetType().Name);
        }
    }

    /// <summary>
    /// Shares a batch of a background response's events with the fleet (kind <c>e</c>, <c>{id}.{batch}</c>, for
    /// <paramref name="ttl"/>): the events from sequence number <paramref name="first"/> on, so a stream asked of another
    /// instance has them (<see cref="SharedEventsAsync"/>). False when it could not be written (logged; the same events
    /// are shared again at the next turn, under the same batch number, so the batches have no gap).
    /// </summary>
    public async ValueTask<bool> ShareEventsAsync(string scope, string responseId, int batch, int first, IReadOnlyList<(string Name, byte[] Json)> events, TimeSpan ttl)
    {
        var json = Json(w =>
        {
            w.WriteStartObject();
            w.WriteNumber("first", first);
            w.WriteStartArray("events");
            foreach (var (name, data) in events)
            {
                w.WriteStartArray();
                w.WriteStringValue(name);
                w.WriteRawValue(data, skipInputValidation: true);
                w.WriteEndArray();
            }

            w.WriteEndArray();
            w.WriteEndObject();
        });
        try
        {
            return await SetAsync(EventsKey(scope, responseId, batch), json, ttl).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null)
        {
            LogNotKept(_logger, responseId, ex.GetType().Name);
            return false;
        }
    }

    /// <summary>A batch of a background response's events shared by the instance making it (<see cref="ShareEventsAsync"/>); null when there is none (yet, or no longer).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be read.</exception>
    public async ValueTask<(int First, List<(string Name, byte[] Json)> Events)?> SharedEventsAsync(string scope, string responseId, int batch, CancellationToken cancellationToken)
    {
        if (await GetAsync(EventsKey(scope, responseId, batch), cancellationToken).ConfigureAwait(false) is not { } json)
        {
            return null;
        }

        using var doc = JsonDocument.Parse(json);
        var events = new List<(string, byte[])>();
        foreach (var e in doc.RootElement.GetProperty("events").EnumerateArray())
        {
            events.Add((e[0].GetString()!, Encoding.UTF8.GetBytes(e[1].GetRawText())));
        }

        return (doc.RootElement.GetProperty("first").GetInt32(), events);
    }

    /// <summary>Whether a background response's run is alive somewhere (<see cref="RenewLeaseAsync"/>).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be read.</exception>
    public async ValueTask<bool> HasLeaseAsync(string scope, string responseId, CancellationToken cancellationToken) =>
        await GetAsync(Key('l', scope, responseId), cancellationToken).ConfigureAwait(false) is not null;

    /// <summary>
    /// Asks the instance making a background response to cancel it (a fleet sharing the store in Redis: the run is the
    /// other instance's; it looks for this every second, <see cref="CancelRequestedAsync"/>).
    /// </summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    public async ValueTask RequestCancelAsync(string scope, string responseId)
    {
        try
        {
            await SetAsync(Key('x', scope, responseId), [1]).ConfigureAwait(false);
        }
        catch (Exception ex) when (_shared is not null)
        {
            throw new StoreUnavailableException(ex);
        }
    }

    /// <summary>Whether <see cref="RequestCancelAsync"/> was asked for this response (false too when the store cannot be read: asked again next time).</summary>
    public async ValueTask<bool> CancelRequestedAsync(string scope, string responseId, CancellationToken cancellationToken)
    {
        try
        {
            return await GetAsync(Key('x', scope, responseId), cancellationToken).ConfigureAwait(false) is not null;
        }
        catch (StoreUnavailableException)
        {
            return false;
        }
    }

    /// <summary>Forgets a response, its output items and its shared events (false: there was none).</summary>
    /// <exception cref="StoreUnavailableException">Redis could not be reached.</exception>
    public async ValueTask<bool> DeleteAsync(string scope, string responseId, CancellationToken cancellationToken)
    {
        if (await ResponseAsync(scope, responseId, cancellationToken).ConfigureAwait(false) is not { } stored)
        {
            return false;
        }

        try
        {
            foreach (var id in stored.Items)
            {
                await RemoveAsync(Key('i', scope, id), cancellationToken).ConfigureAwait(false);
            }

            await RemoveAsync(Key('r', scope, responseId), cancellationToken).ConfigureAwait(false);

            // A background response's events shared with a fleet go with it (not left for their hour).
            for (var batch = 0; _shared is not null && await GetAsync(EventsKey(scope, responseId, batch), cancellationToken).ConfigureAwait(false) is not null; batch++)
            {
                await RemoveAsync(EventsKey(scope, responseId, batch), cancellationToken).ConfigureAwait(false);
            }

            return true;
        }
        catch (Exception ex) when (_shared is not null && ex is not OperationCanceledException)
        {
            throw new StoreUnavailableException(ex);
        }
    }

    /// <summary>
    /// A stored thing's key: its kind (<c>r</c> response, <c>i</c> item, <c>t</c> a tool call's thinking, <c>m</c> a tool loop step's calls' extra members, <c>x</c> a background
    /// response's cancel asked elsewhere, <c>l</c> a background run's lease, <c>s</c> when it was first seen missing, <c>e</c> a batch of its events shared with a
    /// fleet, <c>c</c> a conversation), the scope in base64url (a key id may hold any
    /// character: no scope's keys can be spelt from another's), the id.
    /// </summary>
    private static string Key(char kind, string scope, string id) =>
        $"{kind}:{Base64Url.EncodeToString(Encoding.UTF8.GetBytes(scope))}:{id}";

    /// <summary>The key of a background response's <paramref name="batch"/>-th batch of shared events.</summary>
    private static string EventsKey(string scope, string responseId, int batch) => Key('e', scope, $"{responseId}.{batch}");

    private async ValueTask<byte[]?> GetAsync(string key, CancellationToken cancellationToken)
    {
        if (_local is not null)
        {
            return _local.TryGet(key, out var json) ? json : null;
        }

        try
        {
            return await _shared!.GetAsync(key, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            throw new StoreUnavailableException(ex);
        }
    }

    /// <summary>Keeps a thing; false when the instance's memory bound cannot hold it at all (larger than <see cref="ServerOptions.StoredResponsesMaxBytes"/>: what was kept under its key stays).</summary>
    private async ValueTask<bool> SetAsync(string key, byte[] json, TimeSpan? ttl = null)
    {
        if (_local is not null)
        {
            return _local.Set(key, json, json.Length + (2 * key.Length) + Overhead, ttl ?? _options.StoredResponsesTtl);
        }

        await _shared!.SetAsync(key, json, new DistributedCacheEntryOptions { AbsoluteExpirationRelativeToNow = ttl ?? _options.StoredResponsesTtl }).ConfigureAwait(false);
        return true;
    }

    private async ValueTask RemoveAsync(string key, CancellationToken cancellationToken)
    {
        if (_local is not null)
        {
            _local.Remove(key);
            return;
        }

        await _shared!.RemoveAsync(key, cancellationToken).ConfigureAwait(false);
    }

    private static JsonElement Parse(byte[] json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.Clone();
    }

    private static byte[] Json(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder, SkipValidation = true }))
        {
            write(w);
        }

        return buffer.WrittenSpan.ToArray();
    }

    [LoggerMessage(EventId = 133, Level = LogLevel.Warning, Message = "The response {ResponseId} (or one of its output items) was not kept: {Bytes} bytes, more than Gateway:Server:StoredResponsesMaxBytes ({Max}) holds; a later reference to it is not found (keep stored responses in Redis for larger ones).")]
    private static partial void LogTooLarge(ILogger logger, string responseId, long bytes, long max);

    [LoggerMessage(EventId = 130, Level = LogLevel.Warning, Message = "The response {ResponseId} was not kept: the shared store could not be written ({Error}); a later reference to it is not found.")]
    private static partial void LogNotKept(ILogger logger, string responseId, string error);
}

/// <summary>A conversation grown past what the instance's memory keeps (<see cref="ServerOptions.StoredResponsesMaxBytes"/>): a 400 naming it; it stays as it was.</summary>
internal sealed class ConversationTooLargeException(long bytes, long max)
    : Exception($"The conversation would hold {bytes:N0} bytes, more than this gateway keeps in memory ({max:N0}, Gateway:Server:StoredResponsesMaxBytes; keep conversations in Redis for more): it is kept as it was.");

/// <summary>
/// Another instance of a fleet held a conversation for the whole wait (<see cref="ResponsesStore.HoldConversationAsync"/>):
/// a 409 <c>conversation_locked</c> (OpenAI's code for a conversation another request is changing), which the OpenAI SDKs
/// retry.
/// </summary>
internal sealed class ConversationLockedException(string message) : Exception(message)
{
    /// <summary>A change that waited for another instance's change.</summary>
    public const string Change = "Another request is changing this conversation right now; retry in a moment.";

    /// <summary>A response asked while another response is being made on the conversation.</summary>
    public const string Turn = "Another response is being made on this conversation; retry once it is done (a conversation takes one response at a time).";
}

/// <summary>The shared store (Redis) could not be reached: a 503, which an SDK retries — not a "not found" it would not.</summary>
internal sealed class StoreUnavailableException(Exception inner) : Exception("The stored responses could not be reached; retry shortly.", inner);
