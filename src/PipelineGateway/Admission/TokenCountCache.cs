using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace PipelineGateway.Admission;

/// <summary>
/// Token counts of texts, remembered by their content. An agent sends its whole conversation on every step — the
/// system prompt, the tool definitions, every earlier message — and a token limit had all of it counted again each
/// time: ~15 ns a character with o200k, ~2 ms of CPU for a 55 KB agent request (19× what a plain proxy spends on it,
/// and more when two threads count at once: the tokenizer's own cache takes a lock per word; docs/benchmarks.md,
/// "Agent-sized requests and token limits"). Here a text is hashed (XxHash128, ~0.1 ns a byte) and its count looked up;
/// only a text not seen before (the step's new messages) is counted. Short texts too — roles, names, tool names: the
/// tokenizer's fixed cost per call (its pre-tokenizing regex, its cache's lock) is ~0.5 µs, a lookup ~0.05 µs, and an
/// agent's request has dozens. Counts are exact either way: a hit is the count the tokenizer gave for the same text.
/// </summary>
/// <remarks>
/// 8,192 sets of two entries (<see cref="Serialization.TwoWaySets{TEntry}"/>: a text replaces one of its set's, never
/// both of two often used), so memory is bounded by the entry count (16,384: ~0.9 MB once all are used) and a lookup
/// is two reads. The hash is seeded per process, so no client can aim a text at the set and hash of another's. Entries are immutable and published with a release
/// write, so readers on any thread see whole entries. A text's count depends on the tokenizer: the entry names it.
/// </remarks>
internal sealed class TokenCountCache(int setBits = 13)
{
    /// <summary>The process's cache, shared by every encoding.</summary>
    internal static readonly TokenCountCache Shared = new();

    private static readonly long Seed = Random.Shared.NextInt64();

    private readonly Serialization.TwoWaySets<Entry> _sets = new(setBits);
    private long _counted;

    /// <summary>How many texts this cache had the tokenizer count (a miss; for tests and diagnostics).</summary>
    internal long Counted => Interlocked.Read(ref _counted);

    /// <summary><paramref name="text"/>'s token count with <paramref name="tokenizer"/>, remembered.</summary>
    public int Count(Tokenizer tokenizer, string text)
    {
        var hash = XxHash128.HashToUInt128(MemoryMarshal.AsBytes(text.AsSpan()), Seed);
        return Find(tokenizer, hash) ?? Keep(tokenizer, hash, tokenizer.CountTokens(text));
    }

    /// <summary>
    /// The token count of a JSON value's text (a tool's parameter schema) as <see cref="JsonElement.GetRawText"/> writes
    /// it, hashed from the value's own UTF-8 bytes: the text is made only when it is counted.
    /// </summary>
    public int Count(Tokenizer tokenizer, JsonElement value)
    {
        var hash = XxHash128.HashToUInt128(JsonMarshal.GetRawUtf8Value(value), ~Seed); // another seed: UTF-8 bytes never meet a UTF-16 text's hash
        return Find(tokenizer, hash) ?? Keep(tokenizer, hash, tokenizer.CountTokens(value.GetRawText()));
    }

    /// <summary>
    /// The token count of a message's text, hashed from the request's JSON string when it was kept so (another seed: the
    /// token's bytes spell the text, escapes and quotes included — never a schema's count): its string is made only
    /// when it is counted.
    /// </summary>
    public int Count(Tokenizer tokenizer, MessageContent text) =>
        text.TextJson is { Length: > 0 } json ? Count(tokenizer, json, text, static t => t.Text!) : Count(tokenizer, text.Text!);

    /// <summary>
    /// The token count of a tool call's arguments, hashed from the request's JSON string when it was kept so (as a
    /// message's text: the same JSON string is the same text), else from their string.
    /// </summary>
    public int Count(Tokenizer tokenizer, FunctionCall call) =>
        call.ArgumentsJson is { Length: > 0 } json ? Count(tokenizer, json, call, static c => c.Arguments!) : Count(tokenizer, call.Arguments ?? string.Empty);

    /// <summary>A text kept as a JSON string token: hashed from those bytes; its string (<paramref name="text"/>) made only to count it.</summary>
    private int Count<T>(Tokenizer tokenizer, ReadOnlySpan<byte> json, T owner, Func<T, string> text)
    {
        var hash = XxHash128.HashToUInt128(json, Seed ^ 0x5bd1e9955bd1e995);
        return Find(tokenizer, hash) ?? Keep(tokenizer, hash, tokenizer.CountTokens(text(owner)));
    }

    private int? Find(Tokenizer tokenizer, UInt128 hash)
    {
        var (first, second) = _sets.Of((ulong)hash);
        return first is not null && first.Hash == hash && ReferenceEquals(first.Tokenizer, tokenizer) ? first.Count
            : second is not null && second.Hash == hash && ReferenceEquals(second.Tokenizer, tokenizer) ? second.Count
            : null;
    }

    private int Keep(Tokenizer tokenizer, UInt128 hash, int count)
    {
        Interlocked.Increment(ref _counted);
        _sets.Keep((ulong)hash, new Entry(hash, tokenizer, count));
        return count;
    }

    private sealed class Entry(UInt128 hash, Tokenizer tokenizer, int count)
    {
        public UInt128 Hash { get; } = hash;

        public Tokenizer Tokenizer { get; } = tokenizer;

        public int Count { get; } = count;
    }
}
