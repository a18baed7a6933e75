using System.Text;
using System.Text.Json;

namespace PipelineGateway;

/// <summary>
/// JSON string values that repeat from one request or answer to the next — roles, finish reasons, object names, model
/// names, system fingerprints — read as the same string instead of a new one each time. Every answer carried four to
/// six of them (three to five per streamed chunk), about a tenth of what reading an answer allocated
/// (docs/benchmarks.md, "Less per request, 2026-12-03"). Only an unescaped ASCII value is matched; anything else is
/// left to the caller's own read, so what is read never changes, only whether a string is allocated for it.
/// </summary>
internal static class RepeatedStrings
{
    private static readonly string[] Roles = [ChatRoles.Assistant, ChatRoles.User, ChatRoles.System, ChatRoles.Tool, ChatRoles.Developer];
    private static readonly string[] FinishReasons = ["stop", "length", "tool_calls", "content_filter", "function_call"];
    private static readonly string[] Objects = [ChatCompletionResponse.ObjectName, ChatCompletionChunk.ObjectName];

    // Names seen lately (model names, fingerprints): a small table indexed by a hash of the bytes, each slot replaced
    // by the latest value that lands there. A racing reader sees either string, both correct.
    private const int Slots = 64;
    private static readonly string?[] Recent = new string?[Slots];

    /// <summary>A message's role, if it is one of the standard ones; otherwise null (read it the usual way).</summary>
    public static string? Role(ref Utf8JsonReader r) => OneOf(ref r, Roles);

    /// <summary>A choice's finish reason, if it is one of the standard ones; otherwise null.</summary>
    public static string? FinishReason(ref Utf8JsonReader r) => OneOf(ref r, FinishReasons);

    /// <summary>An answer's or chunk's object name, if it is the standard one; otherwise null.</summary>
    public static string? Object(ref Utf8JsonReader r) => OneOf(ref r, Objects);

    /// <summary>A value that usually repeats (a model name, a fingerprint): the string read last time for these bytes, or a new one remembered for next time; null when the value is not a short unescaped ASCII string.</summary>
    public static string? Recently(ref Utf8JsonReader r)
    {
        if (!Plain(ref r, out var bytes) || bytes.Length is 0 or > 128 || !Ascii.IsValid(bytes))
        {
            return null;
        }

        var slot = (int)((uint)(bytes.Length * 31 + bytes[0] * 7 + bytes[^1] + bytes[bytes.Length / 2] * 13) % Slots);
        if (Volatile.Read(ref Recent[slot]) is { } seen && Ascii.Equals(bytes, seen))
        {
            return seen;
        }

        var text = Encoding.ASCII.GetString(bytes);
        Volatile.Write(ref Recent[slot], text);
        return text;
    }

    /// <summary>
    /// The id of the previous chunk of the stream being read on this thread (set by <see cref="AnswerJson.ReadStreamChunk"/>
    /// around one chunk's parse, which never awaits): every chunk of a stream repeats the same id, so each reuses the first one's
    /// string instead of allocating its own. Thread-static rather than a parameter because the chunk is read by the
    /// serializer through <see cref="ChatCompletionChunkConverter"/>, the path the differential tests hold it to.
    /// </summary>
    [ThreadStatic]
    internal static string? t_streamId;

    /// <summary>The stream's id if these bytes are it (an unescaped ASCII string equal to the previous chunk's id); otherwise null.</summary>
    public static string? StreamId(ref Utf8JsonReader r) =>
        t_streamId is { } last && Plain(ref r, out var bytes) && bytes.Length == last.Length && Ascii.Equals(bytes, last) ? last : null;

    private static string? OneOf(ref Utf8JsonReader r, string[] known)
    {
        if (Plain(ref r, out var bytes))
        {
            foreach (var k in known)
            {
                if (bytes.Length == k.Length && Ascii.Equals(bytes, k))
                {
                    return k;
                }
            }
        }

        return null;
    }

    private static bool Plain(ref Utf8JsonReader r, out ReadOnlySpan<byte> bytes)
    {
        if (r.TokenType == JsonTokenType.String && !r.ValueIsEscaped && !r.HasValueSequence)
        {
            bytes = r.ValueSpan;
            return true;
        }

        bytes = default;
        return false;
    }
}
