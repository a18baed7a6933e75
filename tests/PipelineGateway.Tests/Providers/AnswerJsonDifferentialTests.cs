using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Tests.Server;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The hand-written answer reader and writer (<see cref="AnswerJson"/>) against System.Text.Json's source-generated
/// serializer for the same types and options (<see cref="SerializerReferenceContext"/>: the contract it replaces). Valid
/// answers and stream chunks are mutated (values replaced by random JSON, fields removed, added, duplicated, names
/// escaped, numbers swapped for odd tokens, bytes inserted, the text cut; CsCheck, fixed seed) and parsed by both:
/// both must refuse, or both must produce the same object, written the same by both writers.
/// </summary>
public sealed class AnswerJsonDifferentialTests
{
    private static readonly ulong Seed = Fuzz.Seed;
    private static readonly int Cases = 20_000 * Fuzz.Scale;

    private const string Response = """
        {"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1",
         "choices":[{"index":0,"message":{"role":"assistant","content":"hi \u00e9 <b>","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop","content_filter_results":{"hate":{"filtered":false}}},
                    {"index":1,"message":{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u","detail":"low"},"extra":1}],
                     "name":"n","tool_call_id":"t","tool_calls":[{"id":"c1","type":"function","index":0,"function":{"name":"f","arguments":"{}"}}]},"logprobs":{"content":[]},"finish_reason":"tool_calls"}],
         "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default"}
        """;

    private const string Chunk = """
        {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,
         "choices":[{"index":0,"delta":{"role":"assistant","content":"h","refusal":null,"reasoning_content":"r","tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":"{"}}]},"logprobs":null,"finish_reason":null,"content_filter_results":{}}],
         "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"obfuscation":"x"}
        """;

    [Fact]
    public void Mutated_answers_are_read_and_written_as_the_serializer_does() =>
        Compare(Response, SerializerReferenceContext.Default.ChatCompletionResponse, GatewayJsonContext.Default.ChatCompletionResponse);

    [Fact]
    public void Mutated_stream_chunks_are_read_and_written_as_the_serializer_does() =>
        Compare(Chunk, SerializerReferenceContext.Default.ChatCompletionChunk, GatewayJsonContext.Default.ChatCompletionChunk);

    [Theory]
    [InlineData("""{"\ud800x":1}""")]
    [InlineData("""{"\ud83d\ude00":1,"\u0063reated":2}""")]
    [InlineData("""{"\udc00\ud800":1}""")]
    [InlineData("""{"a\n\u00e9\/\"":1,"a\n\u00e9\/\"":[2]}""")]
    [InlineData("""{"choices":[null,{"message":null,"logprobs":null,"index":-1}],"usage":null,"id":null}""")]
    [InlineData("""{"choices":[{"message":{"content":[null,{"type":null,"image_url":null}],"tool_calls":[null,{"index":null,"function":null}]}}]}""")]
    [InlineData("""{"created":9223372036854775807,"choices":[{"index":2147483648}]}""")]
    [InlineData("""{"created":-0,"choices":[{"index":1.0}]}""")]
    [InlineData("""{"choices":[{"index":0},{"index":1}],"choices":[{"index":2}]}""")]
    [InlineData("""{"choices":[{"delta":{"content":"a","role":"user"},"delta":{"content":"b"}}],"choices":[]}""")]
    [InlineData("""{"choices":[{"delta":{"content":"a"},"delta":null}],"choices":null}""")]
    [InlineData("""{"id":"a"} """)]
    [InlineData("""{"id":"a"}{}""")]
    [InlineData("""null""")]
    [InlineData("""[]""")]
    public void Edge_cases_are_read_and_written_as_the_serializer_does(string body)
    {
        // Escaped names (unpaired and paired surrogates, escapes the fuzzer rarely draws), nulls where objects go,
        // numbers at the edges of their types, trailing data, a member given twice (the reader fills the empty choices
        // list and delta the constructor made: the second occurrence must still replace the first).
        foreach (var bytes in new[] { Encoding.UTF8.GetBytes(body), [.. Encoding.UTF8.GetBytes(body[..2]), 0xC3, .. Encoding.UTF8.GetBytes(body[2..])] })
        {
            Differs(bytes, SerializerReferenceContext.Default.ChatCompletionResponse, GatewayJsonContext.Default.ChatCompletionResponse).Should().BeNull();
            Differs(bytes, SerializerReferenceContext.Default.ChatCompletionChunk, GatewayJsonContext.Default.ChatCompletionChunk).Should().BeNull();
        }
    }

    [Fact]
    public void The_gateway_context_really_uses_the_hand_written_converters()
    {
        // Otherwise the comparisons above would compare the serializer with itself.
        GatewayJsonContext.Default.ChatCompletionResponse.Converter.Should().BeOfType<ChatCompletionResponseConverter>();
        GatewayJsonContext.Default.ChatCompletionChunk.Converter.Should().BeOfType<ChatCompletionChunkConverter>();
        SerializerReferenceContext.Default.ChatCompletionResponse.Converter.Should().NotBeOfType<ChatCompletionResponseConverter>();
    }

    [Fact]
    public void An_answer_that_is_not_one_is_refused_with_the_field_and_the_byte_named()
    {
        var act = () => JsonSerializer.Deserialize("""{"id":"a","created":"soon"}"""u8, GatewayJsonContext.Default.ChatCompletionResponse);
        act.Should().Throw<JsonException>().WithMessage("'created' must be an integer, not a string (at byte 20).");
    }

    private static void Compare<T>(string template, JsonTypeInfo<T> reference, JsonTypeInfo<T> subject)
    {
        var failures = new List<string>();
        var (parsed, refused) = (0, 0);
        var pcg = new PCG(1, Seed);
        var gen = Fuzz.Body(template);
        for (var i = 0; i < Cases && failures.Count < 5; i++)
        {
            var body = gen.Generate(pcg, null, out _);
            if (Outcome(body.Bytes, reference).Error is null)
            {
                parsed++;
            }
            else
            {
                refused++;
            }

            if (Differs(body.Bytes, reference, subject) is { } difference)
            {
                failures.Add($"{body}\n{difference}");
            }
        }

        failures.Should().BeEmpty();
        parsed.Should().BeGreaterThan(Cases / 10, "the mutations must leave many answers readable, or the write side is barely compared");
        refused.Should().BeGreaterThan(Cases / 10);
    }

    /// <summary>Null when both read <paramref name="body"/> alike and write the result alike; else how they differ.</summary>
    private static string? Differs<T>(byte[] body, JsonTypeInfo<T> reference, JsonTypeInfo<T> subject)
    {
        var expected = Outcome(body, reference);
        var actual = Outcome(body, subject);
        var same = expected.Error == actual.Error && (expected.Value is not { } e || actual.Value is not { } a
            || (Write(e, reference) == Write(a, reference) && Write(a, reference) == Write(a, subject)));
        return same ? null
            : $"  serializer: {expected.Error ?? Write(expected.Value, reference)}\n  hand-written: {actual.Error ?? Write(actual.Value, reference)} / {Write(actual.Value, subject)}";
    }

    private static (T? Value, string? Error) Outcome<T>(byte[] body, JsonTypeInfo<T> info)
    {
        try
        {
            return (JsonSerializer.Deserialize(body, info), null);
        }
        catch (Exception ex)
        {
            return (default, ex.GetType().Name); // the kind of refusal must agree; the wording is the reader's own
        }
    }

    private static string Write<T>(T? value, JsonTypeInfo<T> info)
    {
        try
        {
            return Encoding.UTF8.GetString(JsonSerializer.SerializeToUtf8Bytes(value!, info));
        }
        catch (Exception ex)
        {
            return "throws " + ex.GetType().Name;
        }
    }
}

/// <summary>The serializer's own reading and writing of the answer types, with the gateway's options: the reference.</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    UseStringEnumConverter = true)]
[JsonSerializable(typeof(ChatCompletionResponse))]
[JsonSerializable(typeof(ChatCompletionChunk))]
internal sealed partial class SerializerReferenceContext : JsonSerializerContext;
