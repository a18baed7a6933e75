using System.Buffers;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text.Json;
using PipelineGateway.Serialization;

namespace PipelineGateway.Caching;

/// <summary>
/// Parts of the cache key's canonical form (the bytes <see cref="CacheKey"/> hashes) made once per distinct part: a
/// tool definition, a tool call's arguments. A coding agent sends the same tools and the same earlier tool calls on
/// every step, and each step's key serialized the 16 tools into a document and rewrote every object of every schema
/// with its members sorted (a quarter of the gateway's CPU on an agent's step with the cache on), and parsed every
/// call's arguments again (~4%; docs/benchmarks.md, "Agent steps: texts kept as the client's JSON"). Here a part is
/// compared in full with the one an entry was made from — a definition's type, name, description, strict and the
/// schema's own bytes; an arguments text — and a match gives the entry's bytes: exactly what making them again would
/// give, so keys do not change (<c>CacheKeyTests</c>' golden keys).
/// </summary>
/// <remarks>
/// Bounded: a definition with extension members, a schema, arguments or a form over <see cref="MaxLength"/> is made
/// each time and not kept; 128 sets of two entries of each kind (<see cref="TwoWaySets{TEntry}"/>, a seeded hash), so at
/// most 512 entries of ≤ 16 KB of input and ≤ 16 KB of form — a few hundred KB for an application's tools and calls.
/// </remarks>
internal sealed class KeyForms(int setBits = 7)
{
    /// <summary>Larger inputs (and forms) are made each time (what an entry may hold is bounded).</summary>
    internal const int MaxLength = 16 * 1024;

    internal static readonly KeyForms Shared = new();

    private static readonly long Seed = Random.Shared.NextInt64();

    private readonly TwoWaySets<ToolEntry> _tools = new(setBits);
    private readonly TwoWaySets<ArgumentsEntry> _arguments = new(setBits);
    private long _made;

    /// <summary>How many forms this cache made (misses and parts it does not keep; for tests and diagnostics).</summary>
    internal long Made => Interlocked.Read(ref _made);

    /// <summary>The canonical bytes of <paramref name="tool"/>, as <paramref name="make"/> writes them.</summary>
    public byte[] Tool(ToolDefinition tool, Action<Utf8JsonWriter, ToolDefinition> make)
    {
        var function = tool.Function;
        var parameters = function?.Parameters is { ValueKind: not JsonValueKind.Undefined } p ? JsonMarshal.GetRawUtf8Value(p) : default;
        if (tool.AdditionalProperties is { Count: > 0 } || parameters.Length > MaxLength || function?.Parameters is { ValueKind: JsonValueKind.Undefined })
        {
            return Make(tool, make); // extension members (rare) are not compared here; a value-less element fails as it did
        }

        var hash = XxHash3.HashToUInt64(parameters, Seed ^ (long)XxHash3.HashToUInt64(MemoryMarshal.AsBytes((function?.Name ?? string.Empty).AsSpan()), Seed));
        var (first, second) = _tools.Of(hash);
        if ((first is not null && first.Matches(tool, parameters) ? first : second is not null && second.Matches(tool, parameters) ? second : null) is { } entry)
        {
            return entry.Bytes;
        }

        var bytes = Make(tool, make);
        if (bytes.Length <= MaxLength)
        {
            _tools.Keep(hash, new ToolEntry(tool, parameters.ToArray(), bytes));
        }

        return bytes;
    }

    /// <summary>
    /// The canonical bytes of a tool call's <paramref name="arguments"/> as <paramref name="make"/> writes them; empty
    /// when <paramref name="make"/> says they are not JSON (returns false).
    /// </summary>
    public byte[] Arguments(string arguments, Func<Utf8JsonWriter, string, bool> make)
    {
        if (arguments.Length > MaxLength)
        {
            return Make(arguments, make);
        }

        var hash = XxHash3.HashToUInt64(MemoryMarshal.AsBytes(arguments.AsSpan()), ~Seed);
        var (first, second) = _arguments.Of(hash);
        if ((first?.Arguments == arguments ? first : second?.Arguments == arguments ? second : null) is { } entry)
        {
            return entry.Bytes;
        }

        var bytes = Make(arguments, make);
        if (bytes.Length <= MaxLength)
        {
            _arguments.Keep(hash, new ArgumentsEntry(arguments, bytes));
        }

        return bytes;
    }

    private byte[] Make<T>(T part, Action<Utf8JsonWriter, T> make) => Make(part, (w, p) =>
    {
        make(w, p);
        return true;
    });

    private byte[] Make<T>(T part, Func<Utf8JsonWriter, T, bool> make)
    {
        Interlocked.Increment(ref _made);
        var buffer = new ArrayBufferWriter<byte>(1024);
        using var w = new Utf8JsonWriter(buffer, CacheKey.WriterOptions);
        if (!make(w, part))
        {
            return [];
        }

        w.Flush();
        return buffer.WrittenSpan.ToArray();
    }

    private sealed class ArgumentsEntry(string arguments, byte[] bytes)
    {
        public string Arguments { get; } = arguments;

        public byte[] Bytes { get; } = bytes;
    }

    /// <summary>What a definition's canonical form depends on, copied: the strings are immutable, the schema's bytes owned.</summary>
    private sealed class ToolEntry(ToolDefinition tool, byte[] parameters, byte[] bytes)
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
