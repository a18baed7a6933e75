using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace PipelineGateway.Serialization;

/// <summary>
/// JSON values a request keeps as they came — a tool's parameter schema, a <c>response_format</c>'s JSON schema —
/// parsed once for the bytes that spell them. A coding agent sends the same tool definitions on every step (16 schemas,
/// ~25 KB), and each was parsed into a document with duplicate keys refused (the front door's contract reaches into
/// kept values): ~8% of an agent-sized request's CPU (docs/benchmarks.md, "Agent-sized requests and token limits").
/// A value's bytes are compared in full before its parsed element is reused, so a hit is exactly the value a parse
/// would give; a value that fails to parse (a duplicate key) is never kept and fails every time. Parsed elements are
/// immutable and own their memory, so one serves every request that sends those bytes.
/// </summary>
/// <remarks>
/// Bounded: values of <see cref="MinLength"/> to <see cref="MaxLength"/> bytes only, 128 sets of two entries
/// (<see cref="TwoWaySets{TEntry}"/>: two schemas sharing a set both stay; one slot each had an agent's 16 schemas
/// collide in a pair ~37% of the time, both parsed on every step): at most 256 values of 8 KB with their documents' token tables (12 bytes a token),
/// ~15 MB in the worst case — values made of one-character tokens — and a few hundred KB for an application's tools.
/// The set is chosen by a seeded hash (no client can aim at another's set), the entry published with a release write.
/// </remarks>
internal sealed class KeptValueCache(int setBits = 7)
{
    /// <summary>Smaller values parse in less time than a lookup saves.</summary>
    internal const int MinLength = 256;

    /// <summary>Larger values are parsed each time (what a slot may hold is bounded).</summary>
    internal const int MaxLength = 8 * 1024;

    internal static readonly KeptValueCache Shared = new();

    private static readonly JsonDocumentOptions Options = new() { AllowDuplicateProperties = false };

    private static readonly long Seed = Random.Shared.NextInt64();

    private readonly TwoWaySets<Entry> _sets = new(setBits);
    private long _parsed;

    /// <summary>How many values this cache parsed (misses and values it does not keep; for tests and diagnostics).</summary>
    internal long Parsed => Interlocked.Read(ref _parsed);

    /// <summary>The value <paramref name="json"/> spells, duplicate keys refused (a <see cref="JsonException"/>).</summary>
    public JsonElement Parse(ReadOnlySpan<byte> json)
    {
        if (json.Length is < MinLength or > MaxLength)
        {
            Interlocked.Increment(ref _parsed);
            return JsonElement.Parse(json, Options);
        }

        var hash = XxHash3.HashToUInt64(json, Seed);
        var (first, second) = _sets.Of(hash);
        if (first is not null && JsonMarshal.GetRawUtf8Value(first.Value).SequenceEqual(json))
        {
            return first.Value;
        }

        if (second is not null && JsonMarshal.GetRawUtf8Value(second.Value).SequenceEqual(json))
        {
            return second.Value;
        }

        Interlocked.Increment(ref _parsed);
        var value = JsonElement.Parse(json, Options);
        _sets.Keep(hash, new Entry(value));
        return value;
    }

    private sealed class Entry(JsonElement value)
    {
        public JsonElement Value { get; } = value;
    }
}
