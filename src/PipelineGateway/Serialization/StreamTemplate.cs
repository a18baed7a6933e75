using System.Buffers;
using System.Text.Unicode;

namespace PipelineGateway.Serialization;

/// <summary>
/// The last skimmed event of one stream that carried only text (one choice, not finishing, one string of output: its
/// delta's <c>content</c>, or its reasoning text — <c>reasoning_content</c>, <c>reasoning</c> — with no content), split
/// around that text: the bytes before its opening quote, and from its closing quote on — and, when
/// the event ends with OpenAI's <c>obfuscation</c> (random padding on every event), the bytes between the text and the
/// padding and after the padding. The stream's next events are usually the same bytes around other text (and other
/// padding): an upstream writes every token's event alike. One that is (<see cref="TryRead"/>) says what the skim would
/// learn of it without reading it again — the same members around, so the same id, model, created, object and
/// fingerprint, one choice that does not finish, and the new text's bytes as sent. Only the varying strings are
/// checked: each a JSON string's body (no unescaped quote, no control character, every escape one JSON has) of valid
/// UTF-8, ended by its quote. Any other event is skimmed (or read in full) as before. The skim of a streamed event was
/// the gateway's largest cost per event that a byte-copying proxy does not have (issue 21, docs/benchmarks.md); a
/// template compare is a few memory compares and a scan of the text.
/// </summary>
internal sealed class StreamTemplate
{
    // What ends a plain run of a JSON string's body: a quote, a backslash, a control character.
    private static readonly SearchValues<byte> Specials = SearchValues.Create(
        [(byte)'"', (byte)'\\', 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]);

    private const int Open = -2; // a string body not ended by a quote (End)

    private byte[] _bytes = [];
    private int _length;
    private int _prefix; // the bytes up to the text's opening quote, included
    private int _middleStart; // the text's closing quote
    private int _middle; // from the text's closing quote to the padding's opening quote, included (or to the end)
    private int _tail; // from the padding's closing quote on; -1: no padding
    private string _id = string.Empty;
    private string _object = string.Empty;
    private long _created;
    private string _model = string.Empty;
    private string? _fingerprint;
    private bool _membersSkipped;
    private bool _reasoning; // the varying string is a delta's reasoning text (reasoning_content, reasoning), not its content

    /// <summary>Events read from the template (for tests: a property that never hit would prove nothing).</summary>
    internal int Hits { get; private set; }

    /// <summary>
    /// Remembers <paramref name="data"/>, a skimmed event of one choice whose only output is the string body at
    /// <paramref name="text"/>, with OpenAI's padding at <paramref name="padding"/> (-1: none), and what the skim made of it.
    /// </summary>
    public void Remember(ReadOnlySpan<byte> data, (int Start, int End, bool Reasoning) text, (int Start, int End) padding, ChatCompletionChunk chunk, bool membersSkipped)
    {
        if (_bytes.Length < data.Length)
        {
            _bytes = new byte[Math.Max(data.Length, 256)];
        }

        data.CopyTo(_bytes);
        _length = data.Length;
        _prefix = text.Start;
        _middleStart = text.End;
        var padded = padding.Start > text.End;
        _middle = (padded ? padding.Start : data.Length) - text.End;
        _tail = padded ? data.Length - padding.End : -1;
        _id = chunk.Id;
        _object = chunk.Object;
        _created = chunk.Created;
        _model = chunk.Model;
        _fingerprint = chunk.SystemFingerprint;
        _membersSkipped = membersSkipped;
        _reasoning = text.Reasoning;
    }

    /// <summary>The event's chunk, skimmed, when it is the template around other text (and padding); null otherwise.</summary>
    public ChatCompletionChunk? TryRead(ReadOnlySpan<byte> data)
    {
        var template = _bytes.AsSpan(0, _length);
        if (_length == 0 || !data.StartsWith(template[.._prefix]))
        {
            return null;
        }

        var rest = data[_prefix..];
        var textLength = End(rest);
        if (textLength < 0)
        {
            return null;
        }

        var text = rest[..textLength];
        rest = rest[textLength..];
        var middle = template.Slice(_middleStart, _middle);
        if (_tail < 0)
        {
            if (!rest.SequenceEqual(middle))
            {
                return null;
            }
        }
        else
        {
            if (!rest.StartsWith(middle))
            {
                return null;
            }

            rest = rest[_middle..];
            var paddingLength = End(rest);
            if (paddingLength < 0 || !rest[paddingLength..].SequenceEqual(template[^_tail..]) || !Utf8.IsValid(rest[..paddingLength]))
            {
                return null;
            }
        }

        if (!Utf8.IsValid(text))
        {
            return null;
        }

        var chunk = ChatCompletionChunk.Skimmed();
        chunk.Id = _id;
        chunk.Object = _object;
        chunk.Created = _created;
        chunk.Model = _model;
        chunk.SystemFingerprint = _fingerprint;
        chunk.SkipChoices(1, finishes: false, contentBytes: text.Length, reasons: _reasoning && text.Length > 0);
        chunk.KeepEventJson(data, _membersSkipped);
        Hits++;
        return chunk;
    }

    /// <summary>
    /// True when <paramref name="text"/> can stand between a string's quotes as <see cref="System.Text.Json.Utf8JsonReader"/>
    /// reads it: no quote or control character, and each backslash one of JSON's escapes (<c>\u</c> with four hex digits).
    /// </summary>
    internal static bool IsStringBody(ReadOnlySpan<byte> text) => End(text) == Open;

    /// <summary>
    /// Where the string body that <paramref name="s"/> starts with ends (at its closing quote); -1 when it is not one
    /// (a control character, an escape JSON does not have), <see cref="Open"/> when no quote ends it.
    /// </summary>
    private static int End(ReadOnlySpan<byte> s)
    {
        var at = s.IndexOfAny(Specials);
        while (at >= 0)
        {
            if (s[at] == '"')
            {
                return at;
            }

            if (s[at] != '\\' || at + 1 >= s.Length)
            {
                return -1;
            }

            int next;
            switch (s[at + 1])
            {
                case (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t':
                    next = at + 2;
                    break;
                case (byte)'u' when at + 5 < s.Length && IsHex(s[at + 2]) && IsHex(s[at + 3]) && IsHex(s[at + 4]) && IsHex(s[at + 5]):
                    next = at + 6;
                    break;
                default:
                    return -1;
            }

            var rest = s[next..].IndexOfAny(Specials);
            at = rest < 0 ? -1 : next + rest;
        }

        return Open;
    }

    private static bool IsHex(byte b) => char.IsAsciiHexDigit((char)b);
}
