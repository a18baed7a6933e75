using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Admission;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A long message text is kept as the client's JSON string (<see cref="RequestJson.KeptTextLength"/> bytes and over):
/// read, it is the text the serializer reads (or handed back to the serializer when the serializer refuses it), its
/// length and token count are the string's, and it goes upstream as the client spelled it — its string made only
/// when something reads it.
/// </summary>
public sealed class KeptTextTests
{
    private static readonly string[] Pieces =
    [
        "a", "b", " ", "word ", @"\n", @"\t", @"\""", @"\\", @"\/", @"\u00e9", "é", "😀", @"\ud83d\ude00", @"\u0000", "<b>&", "\u2028",
    ];

    /// <summary>Texts of escapes and non-ASCII, short and long; one in eight with a lone surrogate (the serializer refuses it).</summary>
    private static readonly Gen<string> Texts =
        Gen.Select(Gen.Int[0, Pieces.Length - 1].Select(i => Pieces[i]).List[1, 400], Gen.Int[0, 15], Gen.Int[0, 400], static (pieces, lone, at) =>
        {
            if (lone < 2)
            {
                pieces.Insert(at % (pieces.Count + 1), lone == 0 ? @"\ud800" : @"\udc00");
            }

            return string.Concat(pieces);
        });

    private static byte[] Body(string jsonText) =>
        Encoding.UTF8.GetBytes($$"""{"model":"m","messages":[{"role":"system","content":"{{jsonText}}"},{"role":"user","content":"hi"}]}""");

    private static ChatCompletionRequest? Serializer(byte[] body)
    {
        try
        {
            return JsonSerializer.Deserialize(body, PipelineGateway.Server.FrontDoorJsonContext.Default.ChatCompletionRequest);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>The body read by hand and by the serializer; null when the serializer refuses it (and then the hand reader must hand it back).</summary>
    private static (ChatCompletionRequest Request, ChatCompletionRequest Expected)? Both(byte[] body)
    {
        var expected = Serializer(body);
        var request = RequestJson.TryRead(body);
        if (expected is null)
        {
            request.Should().BeNull("what the serializer refuses is handed back to it");
            return null;
        }

        request.Should().NotBeNull();
        return (request!, expected);
    }

    /// <summary>CsCheck, fixed seed: texts of escapes, non-ASCII and lone surrogates, short and long.</summary>
    [Fact]
    public void A_kept_text_reads_counts_and_goes_upstream_as_the_serializers_string()
    {
        var tokenizer = TokenCounter.TokenizerFor("gpt-4o-mini")!;
        var (kept, refused) = (0, 0);
        Texts.Sample(jsonText =>
        {
            if (Both(Body(jsonText)) is not var (request, expected))
            {
                refused++;
                return;
            }

            var content = request.Messages[0].Content!;
            var text = expected.Messages[0].Content!.Text!;
            kept += content.TextJson.Length > 0 ? 1 : 0;
            (content.TextJson.Length > 0).Should().Be(Encoding.UTF8.GetByteCount(jsonText) >= RequestJson.KeptTextLength);
            content.HasText.Should().BeTrue();
            content.TextLength.Should().Be(text.Length);
            TokenCounter.ApproximatePrompt(request).Should().Be(TokenCounter.ApproximatePrompt(expected));
            TokenCountCache.Shared.Count(tokenizer, content).Should().Be(tokenizer.CountTokens(text));
            Normalized(RequestJson.ToUpstreamBytes(request, "u", stream: false)).Should().Be(Normalized(RequestJson.ToUpstreamBytes(expected, "u", stream: false)));
            PipelineGateway.Caching.CacheKey.Compute("g", request).Should().Be(PipelineGateway.Caching.CacheKey.Compute("g", expected), "a kept text keys as its string");
            content.Text.Should().Be(text);
        }, iter: 3000, seed: "0N0XIzNsQ0O2");
        kept.Should().BeGreaterThan(1500, "most texts drawn are long enough to be kept");
        refused.Should().BeGreaterThan(100, "some have a lone surrogate");
    }

    [Fact]
    public void A_kept_text_goes_upstream_as_the_client_spelled_it_and_is_made_a_string_only_when_read()
    {
        var spelled = string.Concat(Enumerable.Repeat(@"caf\u00e9\n", 40));
        var tokenizer = TokenCounter.TokenizerFor("gpt-4o-mini")!;
        var earlier = RequestJson.TryRead(Body(spelled))!.Messages[0].Content!;
        var count = TokenCountCache.Shared.Count(tokenizer, earlier); // an earlier step's: counted from its string
        var request = RequestJson.TryRead(Body(spelled))!;
        var content = request.Messages[0].Content!;

        var upstream = Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "u", stream: false));
        TokenCountCache.Shared.Count(tokenizer, content).Should().Be(count);
        TokenCounter.ApproximatePrompt(request);
        PipelineGateway.Caching.CacheKey.Compute("g", request);

        upstream.Should().Contain($"\"{spelled}\"", "the client's escapes, not the writer's (which keeps é as UTF-8)");
        content.TextMade.Should().BeFalse("writing it upstream, estimating, counting it (the count remembered) and keying it need no string");
        content.Text.Should().Be(string.Concat(Enumerable.Repeat("café\n", 40)));
        content.TextMade.Should().BeTrue();
    }

    private static byte[] CallBody(string jsonArguments) =>
        Encoding.UTF8.GetBytes("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\""
            + jsonArguments + "\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"ok\"}]}");

    /// <summary>CsCheck, fixed seed: a tool call's arguments of the same pieces, short and long, kept from 64 bytes.</summary>
    [Fact]
    public void Kept_arguments_read_key_and_go_upstream_as_the_serializers_string()
    {
        var (kept, refused) = (0, 0);
        Texts.Sample(jsonArguments =>
        {
            if (Both(CallBody(jsonArguments)) is not var (request, expected))
            {
                refused++;
                return;
            }

            var function = request.Messages[1].ToolCalls![0].Function!;
            kept += function.ArgumentsJson.Length > 0 ? 1 : 0;
            (function.ArgumentsJson.Length > 0).Should().Be(Encoding.UTF8.GetByteCount(jsonArguments) >= RequestJson.KeptArgumentsLength);
            Normalized(RequestJson.ToUpstreamBytes(request, "u", stream: false)).Should().Be(Normalized(RequestJson.ToUpstreamBytes(expected, "u", stream: false)));
            PipelineGateway.Caching.CacheKey.Compute("g", request).Should().Be(PipelineGateway.Caching.CacheKey.Compute("g", expected));
            TokenCounter.CountPrompt(request, "gpt-4o").Should().Be(TokenCounter.CountPrompt(expected, "gpt-4o"), "kept arguments count as their string");
            function.Arguments.Should().Be(expected.Messages[1].ToolCalls![0].Function!.Arguments);
        }, iter: 2000, seed: "0N0XIzNsQ0O2");
        kept.Should().BeGreaterThan(1000, "most arguments drawn are long enough to be kept");
        refused.Should().BeGreaterThan(50, "some have a lone surrogate");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Kept_arguments_met_again_are_counted_and_keyed_without_their_string(bool json)
    {
        // An agent's next step resends the call: with token limits and the cache on, it is counted and keyed from its JSON
        // (arguments that are not JSON — a model's cut-off call — as their text, written from the kept bytes too).
        var path = $@"\""{Guid.NewGuid():N}.txt\""";
        var spelled = json ? $@"{{\""paths\"": [{path}, {path}, {path}]}}" : $@"{{\""paths\"": [{path}, {path}, {path}";
        var first = RequestJson.TryRead(CallBody(spelled))!;
        var (tokens, key) = (TokenCounter.CountPrompt(first, "gpt-4o"), PipelineGateway.Caching.CacheKey.Compute("g", first));
        key.Should().Be(PipelineGateway.Caching.CacheKey.Compute("g", Serializer(CallBody(spelled))!), "the key of the arguments' string");

        var next = RequestJson.TryRead(CallBody(spelled))!;
        TokenCounter.CountPrompt(next, "gpt-4o").Should().Be(tokens);
        PipelineGateway.Caching.CacheKey.Compute("g", next).Should().Be(key);
        next.Messages[1].ToolCalls![0].Function!.ArgumentsMade.Should().BeFalse("its count and its key's form are remembered by its JSON");
    }

    [Fact]
    public void Kept_arguments_go_upstream_as_spelled_until_they_are_set()
    {
        var spelled = string.Concat(Enumerable.Repeat(@"{\""path\"": \""caf\u00e9.txt\""}", 4));
        var request = RequestJson.TryRead(CallBody(spelled))!;
        var function = request.Messages[1].ToolCalls![0].Function!;

        Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "u", stream: false)).Should().Contain($"\"arguments\":\"{spelled}\"");
        function.ArgumentsMade.Should().BeFalse("writing them upstream needs no string");

        function.Arguments = "{}";

        Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "u", stream: false)).Should().Contain("\"arguments\":\"{}\"", "set arguments replace what the request spelled");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_long_text_that_is_not_UTF_8_is_handed_back_to_the_serializer(bool escaped)
    {
        // The front door refuses such a body before any reader; a library caller's body is checked here as GetString would.
        var body = Body(string.Concat(Enumerable.Repeat(escaped ? @"a\n" : "ab", 200)));
        body[Array.IndexOf(body, (byte)'a', 80)] = 0xC3; // in the text: a lead byte with no continuation

        RequestJson.TryRead(body).Should().BeNull();
    }

    private static string Normalized(byte[] json) =>
        System.Text.Json.Nodes.JsonNode.Parse(json)!.ToJsonString(new JsonSerializerOptions { Encoder = PipelineGateway.Serialization.WireJson.Encoder });
}
