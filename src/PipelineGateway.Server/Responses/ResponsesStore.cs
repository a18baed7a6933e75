using System.Buffers;
using System.Security.Cryptography;
using System.Text.Json;
using PipelineGateway.Caching;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// The <c>/v1/responses</c> answers asked with <c>store</c> (OpenAI's default): each response's output items, by id, for
/// the <c>item_reference</c> input items the Vercel AI SDK sends in place of its earlier turns (and of reasoning items),
/// the conversation so far for <c>previous_response_id</c> (the earlier input and output items, not the instructions,
/// as OpenAI carries them), and the response for <c>GET /v1/responses/{id}</c>. Kept in memory for
/// <see cref="ServerOptions.StoredResponsesTtl"/>, bounded by <see cref="ServerOptions.StoredResponsesMaxBytes"/> (the
/// response cache's exact LRU), per gateway key: another key's ids are not found. Ids are random (128 bits), never a
/// counter another caller could walk.
/// </summary>
internal sealed class ResponsesStore(ServerOptions options, TimeProvider time)
{
    /// <summary>What one stored thing costs beyond its JSON (the entry, its key, the dictionary's slot), for the byte bound.</summary>
    private const int Overhead = 160;

    private readonly LruStore<(string Scope, string Id), Entry> _entries = new(int.MaxValue, options.StoredResponsesMaxBytes, time);

    /// <summary>A stored thing: an item's JSON; or a response's JSON, the conversation after it, its own input items and its output items' ids.</summary>
    private sealed record Entry(byte[] Json, byte[]? Conversation = null, byte[]? Input = null, string[]? Items = null);

    public bool Enabled => options.StoredResponsesTtl > TimeSpan.Zero && options.StoredResponsesMaxBytes > 0;

    public int Count => _entries.Count;

    /// <summary>A new response id: <c>resp_</c> and 128 random bits.</summary>
    public static string NewResponseId() => "resp_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));

    /// <summary>The scope a caller's things are kept in: its gateway key (every caller shares one when no keys are configured).</summary>
    public static string ScopeOf(GatewayKeyOptions? key) => key?.Id ?? string.Empty;

    /// <summary>A stored item's JSON (null: none, expired, or another key's).</summary>
    public JsonElement? Item(string scope, string id) =>
        _entries.TryGet((scope, id), out var entry) && entry.Conversation is null ? Parse(entry.Json) : null;

    /// <summary>The conversation a stored response ends (its input and output items, after the ones before it), or null.</summary>
    public JsonElement? Conversation(string scope, string responseId) =>
        _entries.TryGet((scope, responseId), out var entry) && entry.Conversation is { } conversation ? Parse(conversation) : null;

    /// <summary>A stored response's JSON, or null.</summary>
    public byte[]? Response(string scope, string responseId) =>
        _entries.TryGet((scope, responseId), out var entry) && entry.Conversation is not null ? entry.Json : null;

    /// <summary>A stored response's own input items (a JSON array), or null.</summary>
    public byte[]? InputItems(string scope, string responseId) =>
        _entries.TryGet((scope, responseId), out var entry) && entry.Conversation is not null ? entry.Input : null;

    /// <summary>
    /// Keeps a finished response: each output item by its id, then the response with the conversation it ends — the
    /// items before it (<paramref name="earlier"/>, a response's own conversation), its input items, its output items.
    /// </summary>
    public void Save(string scope, string responseId, byte[] response, JsonElement? earlier, IReadOnlyList<JsonElement> input, IReadOnlyList<(string Id, byte[] Json)> output)
    {
        var ttl = options.StoredResponsesTtl;
        foreach (var (id, json) in output)
        {
            _entries.Set((scope, id), new Entry(json), json.Length + Overhead, ttl);
        }

        var inputJson = Array(w =>
        {
            foreach (var item in input)
            {
                item.WriteTo(w);
            }
        });
        var conversation = Array(w =>
        {
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
        });
        var size = response.Length + conversation.Length + inputJson.Length + Overhead;
        _entries.Set((scope, responseId), new Entry(response, conversation, inputJson, [.. output.Select(static o => o.Id)]), size, ttl);
    }

    /// <summary>Forgets a response and its output items (false: there was none).</summary>
    public bool Delete(string scope, string responseId)
    {
        if (!_entries.TryGet((scope, responseId), out var entry) || entry.Conversation is null)
        {
            return false;
        }

        foreach (var id in entry.Items ?? [])
        {
            _entries.Remove((scope, id));
        }

        return _entries.Remove((scope, responseId));
    }

    private static JsonElement Parse(byte[] json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.Clone();
    }

    private static byte[] Array(Action<Utf8JsonWriter> items)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder, SkipValidation = true }))
        {
            w.WriteStartArray();
            items(w);
            w.WriteEndArray();
        }

        return buffer.WrittenSpan.ToArray();
    }
}
