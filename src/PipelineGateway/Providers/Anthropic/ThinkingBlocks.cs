using System.Buffers;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>One of Claude's thinking blocks: <c>thinking</c> (its text and signature) or <c>redacted_thinking</c> (its data).</summary>
internal readonly record struct ThinkingBlock(string Type, string? Thinking, string? Signature, string? Data)
{
    public const string Plain = "thinking";
    public const string Redacted = "redacted_thinking";
}

/// <summary>
/// Claude's extended thinking in the canonical (OpenAI-shaped) form, as LiteLLM carries it: an assistant message or a
/// stream delta holds <c>reasoning_content</c> (the thinking text, as reasoning models' OpenAI-compatible APIs send it)
/// and <c>thinking_blocks</c> (the blocks with their signatures, which Claude needs back unchanged in the next turn of
/// a tool loop). Streamed, each delta's <c>thinking_blocks</c> holds a piece: a thinking text fragment, the signature,
/// or a whole redacted block. <c>/v1/messages</c> writes them back as Claude's blocks; OpenAI and Azure do not get them.
/// </summary>
internal static class ThinkingBlocks
{
    /// <summary>The unknown member holding the blocks (messages, deltas).</summary>
    public const string Member = "thinking_blocks";

    /// <summary>The unknown member holding the thinking text.</summary>
    public const string ReasoningMember = "reasoning_content";

    /// <summary>The request parameter turning thinking on (Anthropic's <c>thinking</c> object), carried as an unknown member.</summary>
    public const string Parameter = "thinking";

    /// <summary>The blocks a message or delta carries (none when it carries none, or not in this shape).</summary>
    public static IReadOnlyList<ThinkingBlock> Read(Dictionary<string, JsonElement>? extra)
    {
        if (extra?.TryGetValue(Member, out var list) != true || list.ValueKind != JsonValueKind.Array)
        {
            return []; // the usual answer, on every streamed chunk of /v1/messages: nothing allocated
        }

        var blocks = new List<ThinkingBlock>();

        foreach (var b in list.EnumerateArray())
        {
            if (b.ValueKind == JsonValueKind.Object && String(b, "type") is ThinkingBlock.Plain or ThinkingBlock.Redacted)
            {
                blocks.Add(new ThinkingBlock(String(b, "type")!, String(b, "thinking"), String(b, "signature"), String(b, "data")));
            }
        }

        return blocks;
    }

    /// <summary>Sets <c>thinking_blocks</c> (and <c>reasoning_content</c>, the blocks' text, when there is any) on <paramref name="extra"/>.</summary>
    public static Dictionary<string, JsonElement>? Write(Dictionary<string, JsonElement>? extra, IReadOnlyList<ThinkingBlock> blocks, string? reasoning)
    {
        if (blocks.Count == 0 && string.IsNullOrEmpty(reasoning))
        {
            return extra;
        }

        extra ??= [];
        if (!string.IsNullOrEmpty(reasoning))
        {
            extra[ReasoningMember] = Element(w => w.WriteStringValue(reasoning));
        }

        if (blocks.Count > 0)
        {
            extra[Member] = Element(w =>
            {
                w.WriteStartArray();
                foreach (var b in blocks)
                {
                    w.WriteStartObject();
                    w.WriteString("type", b.Type);
                    if (b.Type == ThinkingBlock.Redacted)
                    {
                        w.WriteString("data", b.Data);
                    }
                    else
                    {
                        w.WriteString("thinking", b.Thinking ?? string.Empty);
                        w.WriteString("signature", b.Signature ?? string.Empty);
                    }

                    w.WriteEndObject();
                }

                w.WriteEndArray();
            });
        }

        return extra;
    }

    /// <summary>
    /// A stream's thinking pieces made whole again: text fragments of one block until its signature, a redacted block as
    /// it came (the pieces <see cref="AnthropicTranslator"/> streams): the Responses route's reasoning item, a
    /// stream stored in the cache (<see cref="Caching.StreamReplay"/>).
    /// </summary>
    public sealed class Collector
    {
        private readonly List<ThinkingBlock> _blocks = [];
        private StringBuilder? _open;

        public void Add(IReadOnlyList<ThinkingBlock> pieces)
        {
            foreach (var piece in pieces)
            {
                if (piece.Type == ThinkingBlock.Redacted)
                {
                    Close(null);
                    _blocks.Add(piece);
                    continue;
                }

                (_open ??= new StringBuilder()).Append(piece.Thinking);
                if (!string.IsNullOrEmpty(piece.Signature))
                {
                    Close(piece.Signature);
                }
            }
        }

        /// <summary>Every block so far (a block still without its signature as it is).</summary>
        public IReadOnlyList<ThinkingBlock> Blocks()
        {
            Close(null);
            return _blocks;
        }

        private void Close(string? signature)
        {
            if (_open is null)
            {
                return;
            }

            _blocks.Add(new ThinkingBlock(ThinkingBlock.Plain, _open.ToString(), signature, null));
            _open = null;
        }
    }

    private static string? String(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static JsonElement Element(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            write(w);
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
    }
}
