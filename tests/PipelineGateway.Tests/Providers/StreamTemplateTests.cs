using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Serialization;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A stream's events read from the last text-only event's template (<see cref="StreamTemplate"/>) come out exactly as
/// the skim (or the full read) makes them — and an event whose text is not a JSON string's body is never taken from it.
/// </summary>
public sealed class StreamTemplateTests
{
    [Fact]
    public void Property_an_event_read_with_the_streams_template_is_what_reading_it_alone_makes_of_it()
    {
        // CsCheck, fixed seed: streams of events around one frame (the members before and after the text, OpenAI's
        // padding after it or not), most with arbitrary text and padding, some with text or padding that breaks the
        // string (a quote, a control character, a bad escape, invalid UTF-8) or something after the object, some with
        // the frame changed (another id or created, finishing, a role, a refusal, reasoning text, padding before the text).
        var json = new ShapedJson(new PCG(41, 7), lineBreaksOffShape: true);
        var broken = 0;
        var hits = 0;
        var paddedHits = 0;
        var reasoningHits = 0;
        for (var s = 0; s < 400; s++)
        {
            var template = new StreamTemplate();
            string? withId = null, aloneId = null;
            var frame = Frame(json);
            for (var e = 0; e < 30; e++)
            {
                var (text, breaks) = json.OneIn(8) ? (Encoding.UTF8.GetBytes(json.Str()), false) : Text(json);
                var (padding, paddingBreaks) = json.OneIn(4) ? Text(json) : (Encoding.UTF8.GetBytes(json.Str()), false);
                breaks |= paddingBreaks && (frame.Before + frame.After).Contains(Pad, StringComparison.Ordinal);
                var bytes = breaks || !json.OneIn(7) ? Bytes(frame, text, padding) : Bytes(Frame(json), text, padding); // now and then another frame
                if (json.OneIn(20))
                {
                    bytes = [.. bytes, .. json.OneIn(2) ? "x"u8 : ",{}"u8]; // something after the object
                    breaks = true;
                }

                broken += breaks ? 1 : 0;
                var before = template.Hits;

                ChatCompletionChunk? withTemplate = null, alone = null;
                var withError = Record.Exception(() => withTemplate = AnswerJson.ReadStreamChunk(bytes, ref withId, keepEventJson: true, skimChoices: true, template));
                var aloneError = Record.Exception(() => alone = AnswerJson.ReadStreamChunk(bytes, ref aloneId, keepEventJson: true, skimChoices: true));
                var shown = Encoding.UTF8.GetString(bytes);
                withError?.Message.Should().Be(aloneError?.Message, shown);
                (withError is null).Should().Be(aloneError is null, shown);
                withId.Should().Be(aloneId);
                paddedHits += template.Hits > before && frame.After.Contains(Pad, StringComparison.Ordinal) ? 1 : 0;
                reasoningHits += template.Hits > before && frame.Before.EndsWith("reasoning_content\":", StringComparison.Ordinal) ? 1 : 0;
                if (breaks)
                {
                    template.Hits.Should().Be(before, $"text that is not a string's body is never read from the template: {shown}");
                }

                if (alone is null)
                {
                    withTemplate.Should().BeNull();
                    continue;
                }

                Same(withTemplate!, alone, shown);
            }

            hits += template.Hits;
        }

        hits.Should().BeGreaterThan(3_000, "events were read from their stream's template");
        reasoningHits.Should().BeGreaterThan(500, "reasoning text was read from the template too");
        paddedHits.Should().BeGreaterThan(1_000, "events with other padding after the text were read from the template too");
        broken.Should().BeGreaterThan(500, "texts that break the string were generated");
    }

    [Theory]
    [InlineData("plain text", true)]
    [InlineData("", true)]
    [InlineData(@"a \""quoted\"" word", true)]
    [InlineData(@"line\nbreak\ttab\r\b\f\/\\", true)]
    [InlineData(@"\u00e9\uD83D\uDE00\uABCD", true)]
    [InlineData("literal é 😀", true)]
    [InlineData("a \" quote", false)]
    [InlineData(@"ends in a backslash\", false)]
    [InlineData(@"\x is no escape", false)]
    [InlineData(@"\u12G4", false)]
    [InlineData(@"\u123", false)]
    [InlineData("tab\tliteral", false)]
    [InlineData("nul\0", false)]
    [InlineData("line\nfeed", false)]
    public void A_string_body_is_what_the_json_reader_takes_between_quotes(string text, bool body)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        StreamTemplate.IsStringBody(bytes).Should().Be(body);

        OneString(Encoding.UTF8.GetBytes("\"" + text + "\"")).Should().Be(body, "the JSON reader agrees");
    }

    [Fact]
    public void An_event_in_the_template_keeps_its_own_bytes_and_the_streams_strings()
    {
        var template = new StreamTemplate();
        string? id = null;
        var first = AnswerJson.ReadStreamChunk(Bytes(Standard, "\"Hello\"", "\"ab\""), ref id, keepEventJson: true, skimChoices: true, template)!;
        var next = AnswerJson.ReadStreamChunk(Bytes(Standard, "\" world\\n\"", "\"x\""), ref id, keepEventJson: true, skimChoices: true, template)!;

        template.Hits.Should().Be(1);
        next.Id.Should().BeSameAs(first.Id);
        next.Model.Should().BeSameAs(first.Model);
        next.EventJson.ToArray().Should().Equal(Bytes(Standard, "\" world\\n\"", "\"x\""));
        (next.ChoicesUnread, next.Finishes, next.CarriesContent, next.EstimatedOutputTokens).Should().Be((true, false, true, 2));

        var empty = AnswerJson.ReadStreamChunk(Bytes(Standard, "\"\"", "\"a\\\"b\""), ref id, keepEventJson: true, skimChoices: true, template)!;
        template.Hits.Should().Be(2);
        empty.CarriesContent.Should().BeFalse("an empty text is no output");
    }

    [Fact]
    public void A_reasoning_models_events_are_read_from_the_template_by_their_reasoning_text()
    {
        // DeepSeek's and vLLM's reasoning phase: the reasoning text varies, an empty content stays.
        var frame = ("{\"id\":\"r-1\",\"object\":\"chat.completion.chunk\",\"created\":1733,\"model\":\"deepseek-reasoner\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":",
                     ",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}");
        var template = new StreamTemplate();
        string? id = null;
        AnswerJson.ReadStreamChunk(Bytes(frame, "\"Let me\"", ""), ref id, keepEventJson: true, skimChoices: true, template);
        var next = AnswerJson.ReadStreamChunk(Bytes(frame, "\" think.\"", ""), ref id, keepEventJson: true, skimChoices: true, template)!;

        template.Hits.Should().Be(1);
        (next.ReasonsUnread, next.CarriesContent, next.EstimatedOutputTokens).Should().Be((true, true, 1));
    }

    private static readonly (string Before, string After) Standard =
        ("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1733,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":",
         "},\"logprobs\":null,\"finish_reason\":null}],\"obfuscation\":" + Pad + "}");

    /// <summary>Where a frame's padding goes (OpenAI's <c>obfuscation</c>: other random text on every event).</summary>
    private const string Pad = "\u0001PAD";

    private static byte[] Bytes((string Before, string After) frame, string text, string padding) =>
        Bytes(frame, Encoding.UTF8.GetBytes(text), Encoding.UTF8.GetBytes(padding));

    private static byte[] Bytes((string Before, string After) frame, byte[] text, byte[] padding)
    {
        byte[] Padded(string part)
        {
            var at = part.IndexOf(Pad, StringComparison.Ordinal);
            return at < 0 ? Encoding.UTF8.GetBytes(part) : [.. Encoding.UTF8.GetBytes(part[..at]), .. padding, .. Encoding.UTF8.GetBytes(part[(at + Pad.Length)..])];
        }

        return [.. Padded(frame.Before), .. text, .. Padded(frame.After)];
    }

    /// <summary>The members around a delta's content, in the gateway's shape or off it a little.</summary>
    private static (string Before, string After) Frame(ShapedJson json)
    {
        var id = json.OneIn(4) ? "\"chatcmpl-" + json.Below(3) + "\"" : "\"chatcmpl-1\"";
        var head = new List<string>
        {
            $"\"id\":{id}",
            "\"object\":\"chat.completion.chunk\"",
            $"\"created\":{1733 + json.Below(2)}",
            "\"model\":\"gpt-4o-mini\"",
        };
        if (json.OneIn(3)) { head.Add("\"system_fingerprint\":\"fp_1\""); }
        if (json.OneIn(4)) { head.Add("\"service_tier\":\"default\""); }
        if (json.OneIn(12)) { head.Add("\"obfuscation\":" + Pad); } // before the text: every event's differs there, none is read from the template
        // The varying string: the delta's content, or (a reasoning model's stream) its reasoning text beside no content.
        var varying = json.Below(4) switch { 0 => "reasoning_content", 1 => "reasoning", _ => "content" };
        var delta = new List<string>();
        if (json.OneIn(6)) { delta.Add("\"role\":\"assistant\""); }
        if (json.OneIn(8)) { delta.Add("\"refusal\":" + (json.OneIn(2) ? "null" : "\"no\"")); }
        if (varying == "content" && json.OneIn(10)) { delta.Add("\"reasoning_content\":" + (json.OneIn(2) ? "\"\"" : "\"hm\"")); }
        if (varying != "content" && !json.OneIn(3)) { delta.Add("\"content\":" + (json.OneIn(2) ? "null" : json.OneIn(2) ? "\"\"" : "\"x\"")); }
        var deltaBefore = delta.Count > 0 && json.OneIn(2) ? string.Join(",", delta) + "," : string.Empty;
        var deltaAfter = delta.Count > 0 && deltaBefore.Length == 0 ? "," + string.Join(",", delta) : string.Empty;
        var finish = json.OneIn(10) ? "\"stop\"" : "null";
        var choiceTail = json.OneIn(2) ? $",\"logprobs\":null,\"finish_reason\":{finish}" : $",\"finish_reason\":{finish},\"logprobs\":null";
        var tail = json.OneIn(4) ? ",\"usage\":null" : json.OneIn(3) ? ",\"obfuscation\":" + Pad : json.OneIn(6) ? ",\"obfuscation\":" + Pad + ",\"usage\":null" : string.Empty;
        return ($"{{{string.Join(",", head)},\"choices\":[{{\"index\":0,\"delta\":{{{deltaBefore}\"{varying}\":",
                $"{deltaAfter}}}{choiceTail}}}]{tail}}}");
    }

    /// <summary>The text's JSON (quotes included): arbitrary text, or (breaks) bytes that are not one JSON string.</summary>
    private static (byte[] Text, bool Breaks) Text(ShapedJson json)
    {
        var good = Encoding.UTF8.GetBytes(json.Str());
        if (!json.OneIn(4))
        {
            return (good, false);
        }

        var body = good[1..^1];
        var at = json.Below((uint)body.Length + 1);
        byte[] insert = json.Below(7) switch
        {
            0 => "\""u8.ToArray(),
            1 => [(byte)json.Below(32)],
            2 => "\\x"u8.ToArray(),
            3 => "\\u12"u8.ToArray(),
            4 => [0xFF],
            5 => [0xE2, 0x82],
            _ => "\\"u8.ToArray(),
        };
        byte[] quoted = [(byte)'"', .. body[..at], .. insert, .. body[at..], (byte)'"'];
        return (quoted, !OneString(quoted) || !System.Text.Unicode.Utf8.IsValid(quoted));
    }

    /// <summary>The JSON reader takes the bytes as one string and nothing else.</summary>
    private static bool OneString(byte[] quoted) => Record.Exception(() =>
    {
        var r = new Utf8JsonReader(quoted);
        r.Read();
        if (r.TokenType != JsonTokenType.String || r.BytesConsumed != quoted.Length || r.Read())
        {
            throw new JsonException("not one string");
        }
    }) is null;

    private static void Same(ChatCompletionChunk a, ChatCompletionChunk b, string shown)
    {
        (a.Id, a.Object, a.Created, a.Model, a.SystemFingerprint).Should().Be((b.Id, b.Object, b.Created, b.Model, b.SystemFingerprint), shown);
        (a.ChoicesUnread, a.HasNoChoices, a.Finishes, a.CarriesContent, a.EstimatedOutputTokens, a.ReasonsUnread).Should().Be(
            (b.ChoicesUnread, b.HasNoChoices, b.Finishes, b.CarriesContent, b.EstimatedOutputTokens, b.ReasonsUnread), shown);
        a.HasEventJson.Should().Be(b.HasEventJson, shown);
        a.EventJson.ToArray().Should().Equal(b.EventJson.ToArray(), shown);
        a.DropEventJson();
        b.DropEventJson();
        JsonSerializer.SerializeToUtf8Bytes(a, GatewayJsonContext.Default.ChatCompletionChunk).Should().Equal(
            JsonSerializer.SerializeToUtf8Bytes(b, GatewayJsonContext.Default.ChatCompletionChunk), shown);
    }
}
