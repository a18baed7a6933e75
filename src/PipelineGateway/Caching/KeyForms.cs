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
    public byte[] Arguments(string arguments, Func<Utf8JsonWriter, string, bool> make) =>
        Arguments(MemoryMarshal.AsBytes(arguments.AsSpan()), arguments.Length > MaxLength, arguments, arguments, static a => a, make);

    /// <summary>
    /// The same for arguments kept as the request's JSON string (<see cref="FunctionCall.ArgumentsJson"/>), compared by
    /// those bytes — the same JSON string is the same text — so that their string is made only when their form is:
    /// an agent resends every earlier call's arguments on every step.
    /// </summary>
    public byte[] Arguments(FunctionCall call, Func<Utf8JsonWriter, string, bool> make)
    {
        var kept = call.ArgumentsKept ?? throw new ArgumentException("The call's arguments are not kept as JSON.", nameof(call));
        return Arguments(kept, kept.Length > MaxLength, kept, call, static c => c.Arguments!, make);
    }

    /// <param name="key">What an entry is compared by: a text's UTF-16 bytes, or a JSON string's bytes (<paramref name="keyOwner"/> says which: a string or an array).</param>
    private byte[] Arguments<T>(ReadOnlySpan<byte> key, bool tooLong, object keyOwner, T owner, Func<T, string> text, Func<Utf8JsonWriter, string, bool> make)
    {
        if (tooLong)
        {
            return Make(text(owner), make);
        }

        var json = keyOwner is byte[];
        var hash = XxHash3.HashToUInt64(key, json ? Seed ^ 0x2545f4914f6cdd1d : ~Seed); // a text's and a JSON string's bytes never meet
        var (first, second) = _arguments.Of(hash);
        if ((first is not null && first.Matches(key, json) ? first : second is not null && second.Matches(key, json) ? second : null) is { } entry)
        {
            return entry.Bytes;
        }

        var bytes = Make(text(owner), make);
        if (bytes.Length <= MaxLength)
        {
            _arguments.Keep(hash, new ArgumentsEntry(keyOwner, bytes));
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

    /// <summary>A form and what it was made from: a text (a string) or a JSON string's bytes (the kept array: never written to).</summary>
    private sealed class ArgumentsEntry(object key, byte[] bytes)
    {
        private readonly object _key = key;

        public byte[] Bytes { get; } = bytes;

        public bool Matches(ReadOnlySpan<byte> key, bool json) => json
            ? _key is byte[] kept && key.SequenceEqual(kept)
            : _key is string text && key.SequenceEqual(MemoryMarshal.AsBytes(text.AsSpan()));
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
