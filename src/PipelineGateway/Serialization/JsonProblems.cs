using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace PipelineGateway.Serialization;

/// <summary>
/// What is wrong with a JSON body, in words that name no .NET type and carry none of System.Text.Json's line-and-byte
/// tail: for a client's request (the front door) and for an upstream's answer (in the failure a caller reads).
/// </summary>
internal static class JsonProblems
{
    private const string Conversion = "The JSON value could not be converted to ";

    private const string WithinKey = "pgw.json.within";

    /// <summary>What a string that JSON escapes but no character can be made of is, in a caller's words.</summary>
    public const string LoneSurrogate = "a string with an escape no character can be made of (a lone surrogate, \\uD800 to \\uDFFF)";

    /// <summary>True when the failure is a string whose escape is a lone surrogate (the reader could not make UTF-16 of it).</summary>
    public static bool IsLoneSurrogate(JsonException ex) =>
        ex.InnerException is InvalidOperationException { Message: var inner } && inner.Contains("UTF-16", StringComparison.Ordinal);

    /// <summary>
    /// A failure inside a sub-tree a converter reads with a serializer call of its own (a message's content parts, an
    /// Anthropic message's blocks): that call's path starts again at <c>$</c>, so it is kept here — after
    /// <paramref name="prefix"/>, where the sub-tree's element is when the converter walks them itself (<c>[2]</c>) — and
    /// the failure thrown on without a path: the outer serializer then gives where the sub-tree is, and
    /// <see cref="PathOf"/> joins the two (at any depth: a failure already within a deeper sub-tree keeps its path).
    /// </summary>
    public static JsonException Within(JsonException ex, string? prefix = null)
    {
        var outer = new JsonException(FirstSentence(ex.Message), ex.InnerException);
        var inner = PathOf(ex) is { Length: > 1 } path ? path[1..] : null;
        outer.Data[WithinKey] = prefix is null && inner is null ? null : prefix + inner;
        return outer;
    }

    /// <summary>A sub-tree read with a serializer call of its own, a failure in it thrown on as <see cref="Within"/>.</summary>
    public static T? ReadWithin<T>(ref Utf8JsonReader reader, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info)
    {
        try
        {
            return JsonSerializer.Deserialize(ref reader, info);
        }
        catch (JsonException ex)
        {
            throw Within(ex);
        }
    }

    /// <summary>What a failure says: the reader's words, or — a string no character can be made of — that, in a caller's words.</summary>
    public static string Says(JsonException ex) => IsLoneSurrogate(ex) ? LoneSurrogate : ex.Message;

    /// <summary>Where a failure is (<c>$.messages[0].content[0].text</c>), a sub-tree's own path (<see cref="Within"/>) included.</summary>
    public static string? PathOf(JsonException ex) => ex.Path is { } path && ex.Data[WithinKey] is string within ? path + within : ex.Path;

    /// <summary>A JSON value's kind as an error message names it ("expected an object, but got a string instead").</summary>
    public static string KindName(JsonValueKind kind) => kind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => "null",
    };

    /// <summary>The offset of the first byte that is not part of valid UTF-8 (the length when all of it is).</summary>
    public static int FirstInvalidUtf8(ReadOnlySpan<byte> text)
    {
        var at = 0;
        while (at < text.Length && Rune.DecodeFromUtf8(text[at..], out _, out var used) == OperationStatus.Done)
        {
            at += used;
        }

        return at;
    }

    /// <summary>System.Text.Json's message up to its path and line details (the path and the offset are reported on their own).</summary>
    public static string FirstSentence(string message)
    {
        var cut = message.IndexOf(" Path:", StringComparison.Ordinal);
        cut = cut > 0 ? cut : message.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return cut > 0 ? message[..cut] : message;
    }

    /// <summary>True when the reader failed converting a value to a type (the message names the .NET type).</summary>
    public static bool IsConversion(JsonException ex) => ex.Message.StartsWith(Conversion, StringComparison.Ordinal);

    /// <summary>The .NET type a conversion failure names (<see cref="IsConversion"/>).</summary>
    public static string ConvertedTo(JsonException ex) => FirstSentence(ex.Message)[Conversion.Length..].TrimEnd('.');

    /// <summary>
    /// Why an upstream's <paramref name="body"/> (an answer, or one event's data) could not be read: bytes that are not
    /// UTF-8 (where), a value of the wrong type (where), else the reader's own first sentence and where.
    /// </summary>
    public static string Describe(JsonException ex, ReadOnlySpan<byte> body)
    {
        if (!Utf8.IsValid(body))
        {
            return $"not valid UTF-8 (at byte {FirstInvalidUtf8(body)})";
        }

        var at = PathOf(ex) is null or "$" ? string.Empty : $" (at {PathOf(ex)})";
        return IsConversion(ex) ? $"a value of the wrong type{at}" : FirstSentence(ex.Message).TrimEnd('.') + at;
    }
}
