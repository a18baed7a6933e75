using System.IO.Hashing;
using System.Text.Json;

namespace PipelineGateway.Serialization;

/// <summary>
/// A request's <c>tools</c> array read once for the bytes that spell it. A coding agent sends the same tool definitions
/// on every step (16 definitions, ~23 KB), and reading them — every token of every schema checked, each definition made —
/// was ~9% of the gateway's CPU on an agent's step (docs/benchmarks.md, "Agent-sized requests and token limits"). Here
/// the body at the array's start is compared with arrays read before: when it begins with one's bytes in full, the
/// array there is exactly that one (a JSON value ends where its bytes close it), already checked as the reader checks
/// it, so its definitions are the ones reading it gives. Each request gets its own copies of them (an application's
/// hook may change a request's tools); the parameter schemas and texts they hold are immutable and shared.
/// </summary>
/// <remarks>
/// Bounded: arrays of <see cref="MinLength"/> to <see cref="MaxLength"/> bytes, 32 sets of two entries (a set chosen
/// by a seeded hash of the array's first <see cref="MinLength"/> bytes: no client can aim at another's entries, and two
/// tool lists that begin alike both stay): at most 64 arrays, ~16 MB in the worst case and a few hundred KB for an
/// application's tool lists. Entries are immutable and published with a release write.
/// </remarks>
internal sealed class KeptToolsCache(int setBits = 5)
{
    /// <summary>Shorter arrays are read in less time than a lookup saves (and the set is chosen by this many bytes).</summary>
    internal const int MinLength = 256;

    /// <summary>Longer arrays are read each time (what an entry may hold is bounded).</summary>
    internal const int MaxLength = 256 * 1024;

    internal static readonly KeptToolsCache Shared = new();

    private static readonly long Seed = Random.Shared.NextInt64();

    private readonly TwoWaySets<Entry> _sets = new(setBits);
    private long _found;

    /// <summary>How many arrays this cache gave (for tests and diagnostics).</summary>
    internal long Found => Interlocked.Read(ref _found);

    /// <summary>
    /// Copies of the definitions of the array <paramref name="rest"/> begins with, and its length in bytes; null when no
    /// array kept is there.
    /// </summary>
    public (List<ToolDefinition> Tools, int Length)? Find(ReadOnlySpan<byte> rest)
    {
        if (rest.Length < MinLength)
        {
            return null;
        }

        var (first, second) = _sets.Of(Hash(rest));
        var entry = first is not null && rest.StartsWith(first.Bytes) ? first : second is not null && rest.StartsWith(second.Bytes) ? second : null;
        if (entry is null)
        {
            return null;
        }

        Interlocked.Increment(ref _found);
        return (entry.Copy(), entry.Bytes.Length);
    }

    /// <summary>Keeps <paramref name="tools"/>, read from <paramref name="array"/> (the array's bytes, checked), if it is kept at all.</summary>
    public void Keep(ReadOnlySpan<byte> array, List<ToolDefinition> tools)
    {
        if (array.Length is < MinLength or > MaxLength)
        {
            return;
        }

        _sets.Keep(Hash(array), new Entry(array.ToArray(), [.. tools.Select(Entry.Clone)]));
    }

    private static ulong Hash(ReadOnlySpan<byte> rest) => XxHash3.HashToUInt64(rest[..MinLength], Seed);

    private sealed class Entry(byte[] bytes, List<ToolDefinition> tools)
    {
        public byte[] Bytes { get; } = bytes;

        public List<ToolDefinition> Copy()
        {
            var copy = new List<ToolDefinition>(tools.Count);
            foreach (var tool in tools)
            {
                copy.Add(Clone(tool));
            }

            return copy;
        }

        /// <summary>
        /// A definition of the request's own: every member copied (<c>ToolDefinitionMembersTests</c> fails when one is
        /// added and not copied here); the schema, an immutable element, shared.
        /// </summary>
        public static ToolDefinition Clone(ToolDefinition tool) => tool is null ? null! : new ToolDefinition
        {
            Type = tool.Type,
            Function = tool.Function is { } f
                ? new FunctionDefinition { Name = f.Name, Description = f.Description, Parameters = f.Parameters, Strict = f.Strict }
                : null,
            AdditionalProperties = tool.AdditionalProperties is { } extra ? new Dictionary<string, JsonElement>(extra) : null,
        };
    }
}
