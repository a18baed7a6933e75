using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;

namespace PipelineGateway.Tests.Providers;

/// <summary>Repeating values (roles, finish reasons, object and model names) are read as one string each: never a different value.</summary>
public sealed class RepeatedStringsTests
{
    private delegate string? Reader(ref Utf8JsonReader r);

    private static readonly Reader[] Readers = [RepeatedStrings.Role, RepeatedStrings.FinishReason, RepeatedStrings.Object, RepeatedStrings.Recently];

    private static string? Read(string json, Reader read)
    {
        var r = new Utf8JsonReader(Encoding.UTF8.GetBytes(json));
        r.Read();
        return read(ref r) ?? r.GetString();
    }

    [Fact]
    public void Property_whatever_the_value_escaped_or_not_ascii_or_not_it_reads_as_exactly_itself()
    {
        // CsCheck, fixed seed: arbitrary strings, the standard values and near misses of them, each written plainly
        // and with every character escaped, read through each reader (then the plain read, as the JSON readers do).
        var pcg = new PCG(21, 3);
        var known = Gen.Int[0, 17].Select(i => new[] {"assistant", "user", "system", "tool", "developer", "stop", "length", "tool_calls", "content_filter",
            "function_call", "chat.completion", "chat.completion.chunk", "gpt-4o-mini", "assistan", "stopp", "Stop", "chat.completion.chun", "" }[i]);
        var values = Gen.Int[0, 5].SelectMany(pick => pick < 3 ? Gen.String[0, 40] : pick < 5 ? known : Gen.Char.Array[0, 12].Select(c => new string(c)))
            .Where(v => v.All(c => !char.IsSurrogate(c))); // a lone surrogate is refused by the plain read as well
        for (var i = 0; i < 20_000; i++)
        {
            var value = values.Generate(pcg, null, out _);
            var plain = JsonSerializer.Serialize(value);
            var escaped = "\"" + string.Concat(value.Select(c => $"\\u{(int)c:x4}")) + "\"";
            foreach (var read in Readers)
            {
                Read(plain, read).Should().Be(value, plain);
                Read(escaped, read).Should().Be(value, escaped);
            }
        }
    }

    [Fact]
    public void Answers_of_one_model_share_their_repeating_strings_and_the_rest_stay_their_own()
    {
        const string answer = """{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}""";
        var a = JsonSerializer.Deserialize(answer, GatewayJsonContext.Default.ChatCompletionResponse)!;
        var b = JsonSerializer.Deserialize(answer.Replace("chatcmpl-1", "chatcmpl-2"), GatewayJsonContext.Default.ChatCompletionResponse)!;

        b.Model.Should().BeSameAs(a.Model).And.Be("gpt-4o-mini-2024-07-18");
        b.SystemFingerprint.Should().BeSameAs(a.SystemFingerprint).And.Be("fp_1");
        b.Object.Should().BeSameAs(a.Object).And.Be("chat.completion");
        b.Choices[0].Message!.Role.Should().BeSameAs(a.Choices[0].Message!.Role).And.Be("assistant");
        b.Choices[0].FinishReason.Should().BeSameAs(a.Choices[0].FinishReason).And.Be("stop");
        b.Id.Should().Be("chatcmpl-2");

        // An escaped value is read the usual way: equal, its own string.
        var escaped = JsonSerializer.Deserialize(answer.Replace("\"role\":\"assistant\"", "\"role\":\"\\u0061ssistant\""), GatewayJsonContext.Default.ChatCompletionResponse)!;
        escaped.Choices[0].Message!.Role.Should().Be("assistant");
    }

    [Fact]
    public void Property_a_streams_chunks_each_read_their_own_id_and_share_the_previous_ones_string_when_it_repeats()
    {
        // CsCheck, fixed seed: two chunks of one stream, the second's id arbitrary, equal to the first's, or equal but
        // escaped; each must read as exactly its own id, and a plain repeat must be the first chunk's very string.
        var pcg = new PCG(22, 5);
        var ids = Gen.Int[0, 3].SelectMany(pick => pick < 2 ? Gen.String[0, 30] : Gen.Const("chatcmpl-AbC123xyz"))
            .Where(v => v.All(c => !char.IsSurrogate(c)));
        static byte[] Chunk(string id, bool escape) => Encoding.UTF8.GetBytes(
            $$$"""{"id":{{{(escape ? "\"" + string.Concat(id.Select(c => $"\\u{(int)c:x4}")) + "\"" : JsonSerializer.Serialize(id))}}},"object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"}}]}""");
        for (var i = 0; i < 5_000; i++)
        {
            var a = ids.Generate(pcg, null, out _);
            var b = pcg.Next() % 2 == 0 ? a : ids.Generate(pcg, null, out _);
            var escape = pcg.Next() % 4 == 0;
            string? previous = null;
            var first = AnswerJson.ReadStreamChunk(Chunk(a, false), ref previous)!;
            first.Id.Should().Be(a);
            previous.Should().BeSameAs(first.Id);
            var second = AnswerJson.ReadStreamChunk(Chunk(b, escape), ref previous)!;
            second.Id.Should().Be(b);
            if (b == a && !escape && JsonSerializer.Serialize(a) == "\"" + a + "\"" && a.All(char.IsAscii))
            {
                second.Id.Should().BeSameAs(first.Id, "a plain repeat of the stream's id is read as the same string");
            }
        }

        // Outside a stream's read nothing is remembered: another stream's chunk gets its own string.
        string? none = null;
        var one = AnswerJson.ReadStreamChunk(Chunk("chatcmpl-AbC123xyz", false), ref none)!;
        JsonSerializer.Deserialize(Chunk("chatcmpl-AbC123xyz", false), GatewayJsonContext.Default.ChatCompletionChunk)!.Id.Should().NotBeSameAs(one.Id);
    }
}
