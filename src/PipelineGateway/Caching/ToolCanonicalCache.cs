using System.Buffers;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace PipelineGateway.Caching;

/// <summary>
/// A tool definition's canonical form (the bytes <see cref="CacheKey"/> hashes for it), made once per distinct
/// definition. A coding agent sends the same tools on every step (16 schemas, ~25 KB), and each step's key serialized
/// them to a document and rewrote every object of every schema with its members sorted: a quarter of the gateway's CPU
/// on an agent's step with the cache on (docs/benchmarks.md, "Agent-sized requests and token limits"). Here a
/// definition is compared in full with the one an entry was made from — type, name, description, strict, and the
/// parameter schema's own bytes — and a match writes the entry's bytes: exactly what making them again would give,
/// so keys do not change (<c>CacheKeyTests.A_key_stays_what_earlier_versions_computed</c>).
/// </summary>
/// <remarks>
/// Bounded: a definition with extension members, a schema over <see cref="MaxLength"/> bytes or a canonical form over
/// it is made each time and not kept; 128 sets of two entries (a definition's set and the entry it replaces when both
/// are taken are chosen by a seeded hash: no client can aim at another's entries, and two definitions sharing a set
/// both stay), so at most 256 entries of ≤ 16 KB of schema, ≤ 16 KB of canonical bytes and their texts — a few
/// hundred KB for an application's tools. Entries are immutable and published with a release write.
/// </remarks>
internal sealed class ToolCanonicalCache(int setBits = 7)
{
    /// <summary>Larger schemas (and canonical forms) are made each time (what an entry may hold is bounded).</summary>
    internal const int MaxLength = 16 * 1024;

    internal static readonly ToolCanonicalCache Shared = new();

    private static readonly long Seed = Random.Shared.NextInt64();

    private readonly Entry?[] _ways = new Entry?[2 << setBits];
    private readonly int _mask = (1 << setBits) - 1;
    private long _made;

    /// <summary>How many canonical forms this cache made (misses and definitions it does not keep; for tests and diagnostics).</summary>
    internal long Made => Interlocked.Read(ref _made);

    /// <summary>The canonical bytes of <paramref name="tool"/>, as <paramref name="make"/> writes them.</summary>
    public byte[] Canonical(ToolDefinition tool, Action<Utf8JsonWriter, ToolDefinition> make)
    {
        var function = tool.Function;
        var parameters = function?.Parameters is { ValueKind: not JsonValueKind.Undefined } p ? JsonMarshal.GetRawUtf8Value(p) : default;
        if (tool.AdditionalProperties is { Count: > 0 } || parameters.Length > MaxLength || function?.Parameters is { ValueKind: JsonValueKind.Undefined })
        {
            return Make(tool, make); // extension members (rare) are not compared here; a value-less element fails as it did
        }

        var hash = XxHash3.HashToUInt64(parameters, Seed ^ (long)XxHash3.HashToUInt64(MemoryMarshal.AsBytes((function?.Name ?? string.Empty).AsSpan()), Seed));
        var set = ((int)hash & _mask) << 1;
        for (var way = 0; way < 2; way++)
        {
            if (Volatile.Read(ref _ways[set + way]) is { } entry && entry.Matches(tool, parameters))
            {
                return entry.Bytes;
            }
        }

        var bytes = Make(tool, make);
        if (bytes.Length <= MaxLength)
        {
            var way = Volatile.Read(ref _ways[set]) is null ? 0 : Volatile.Read(ref _ways[set + 1]) is null ? 1 : (int)(hash >> 32) & 1;
            Volatile.Write(ref _ways[set + way], new Entry(tool, parameters.ToArray(), bytes));
        }

        return bytes;
    }

    private byte[] Make(ToolDefinition tool, Action<Utf8JsonWriter, ToolDefinition> make)
    {
        Interlocked.Increment(ref _made);
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer, CacheKey.WriterOptions))
        {
            make(w, tool);
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>What a definition's canonical form depends on, copied: the strings are immutable, the schema's bytes owned.</summary>
    private sealed class Entry(ToolDefinition tool, byte[] parameters, byte[] bytes)
    {
        private readonly string? _type = tool.Type;
        private readonly bool _hasFunction = tool.Function is not null;
        private readonly string? _name = tool.Function?.Name;
        private readonly string? _description = tool.Function?.Description;
        private readonly bool? _strict = tool.Function?.Strict;
        private readonly byte[] _parameters = parameters; // empty for none: a value's bytes never are

        public byte[] Bytes { get; } = bytes;

        public bool Matches(ToolDefinition tool, ReadOnlySpan<byte> parameters) =>
            string.Equals(_type, tool.Type, StringComparison.Ordinal)
            && (tool.Function is { } f
                ? _hasFunction
                  && string.Equals(_name, f.Name, StringComparison.Ordinal)
                  && string.Equals(_description, f.Description, StringComparison.Ordinal)
                  && _strict == f.Strict
                  && parameters.SequenceEqual(_parameters)
                : !_hasFunction);
    }
}
