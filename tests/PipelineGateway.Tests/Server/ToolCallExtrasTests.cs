using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// A tool call's members the gateway does not model travel both ways (<see cref="ToolCall.AdditionalProperties"/>).
/// The case that needs it: Gemini's OpenAI-compatible endpoint puts a function call's thought signature on the call
/// (<c>extra_content.google.thought_signature</c>), and a thinking model refuses the next turn with a 400 when the call
/// comes back without it. The upstream is a real Kestrel answering as Gemini does (<c>gemini-tools</c>): its answer has
/// no <c>refusal</c> member, so the gateway writes it from its objects rather than as the upstream's bytes.
/// </summary>
public sealed class ToolCallExtrasTests() : EchoGatewayTests("gemini-tools")
{
    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Gateway:Cache:Enabled"] = "true";
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_function_calls_thought_signature_reaches_the_client_and_goes_backUpstream_with_the_next_turn(bool stream)
    {
        var question = $"Weather in Paris? ({(stream ? "streamed" : "whole")})";

        var call = stream ? await StreamedCallAsync(question) : await WholeCallAsync(question);

        Signature(call).Should().Be(ScriptedUpstream.GeminiSignature, $"the call as the client got it: {call.ToJsonString()}");
        var answer = await NextTurnAsync(question, call);
        answer.Should().Be("It is sunny in Paris.", "the upstream found its signature on the call the gateway forwarded");
    }

    [Fact]
    public async Task A_cache_hit_carries_the_signature_too_whole_and_replayed_as_a_stream()
    {
        var question = "Weather in Paris? (cached)";
        await WholeCallAsync(question);

        var (hit, cache) = await AskWholeAsync(question);
        var replayed = await StreamedCallAsync(question);

        cache.Should().Be("hit");
        Signature(hit).Should().Be(ScriptedUpstream.GeminiSignature, "the cache stored the call with its members");
        Signature(replayed).Should().Be(ScriptedUpstream.GeminiSignature, "a cached answer replayed as a stream carries them on the call's delta");
        (await NextTurnAsync(question, hit)).Should().Be("It is sunny in Paris.");

        // A streamed answer is cached as the whole answer its chunks add up to: the call keeps its delta's members.
        var streamedFirst = "Weather in Paris? (cached from a stream)";
        await StreamedCallAsync(streamedFirst);
        var (fromStream, streamCache) = await AskWholeAsync(streamedFirst);
        streamCache.Should().Be("hit");
        Signature(fromStream).Should().Be(ScriptedUpstream.GeminiSignature);
    }

    [Fact]
    public async Task A_request_the_serializer_reads_keeps_them_too()
    {
        // An escaped member name sends the request past the gateway's own reader to the serializer's
        // (RequestJson.TryRead): the call's members must survive that path as well.
        var question = "Weather in Paris? (escaped)";
        var call = await WholeCallAsync(question);
        var body = NextTurn(question, call).ToJsonString().Replace("\"tool_call_id\"", "\"tool_call_\\u0069d\"", StringComparison.Ordinal);
        body.Should().Contain("\\u0069d");

        var response = await Gateway.Http.PostAsync("v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"), Ct);

        var answer = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(answer);
        answer.Should().Contain("It is sunny in Paris.");
    }

    [Fact]
    public async Task Without_the_signature_theUpstreams_400_reaches_the_client_as_a_400()
    {
        // The check the upstream makes is real: the next turn with the call's extra members removed is refused — a call
        // this gateway did not answer, so that it has nothing kept to give back (ToolCallRecallTests: one it answered).
        var question = "Weather in Paris? (stripped)";
        var call = await WholeCallAsync(question);
        call.AsObject().Remove("extra_content");
        call["id"] = "function-call-begun-elsewhere";

        var response = await Gateway.Http.PostAsync("v1/chat/completions", Json(NextTurn(question, call)), Ct);

        ((int)response.StatusCode).Should().Be(400);
        (await response.Content.ReadAsStringAsync(Ct)).Should().Contain("thought_signature");
    }

    private static string? Signature(JsonNode call) => call["extra_content"]?["google"]?["thought_signature"]?.GetValue<string>();

    private async Task<JsonNode> WholeCallAsync(string question) => (await AskWholeAsync(question)).Call;

    private async Task<(JsonNode Call, string Cache)> AskWholeAsync(string question)
    {
        var response = await Gateway.Http.PostAsync("v1/chat/completions", Json(First(question, stream: false)), Ct);
        var body = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(body);
        var message = JsonNode.Parse(body)!["choices"]![0]!["message"]!;
        return (message["tool_calls"]![0]!.DeepClone(), response.Headers.GetValues("x-gateway-cache").Single());
    }

    /// <summary>The call's deltas as a client adds them up: the first carries id, name and the extra members; arguments join.</summary>
    private async Task<JsonNode> StreamedCallAsync(string question)
    {
        var response = await Gateway.Http.PostAsync("v1/chat/completions", Json(First(question, stream: true)), Ct);
        var body = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(body);
        JsonObject? call = null;
        var arguments = new StringBuilder();
        foreach (var line in body.Split('\n').Where(static l => l.StartsWith("data: {", StringComparison.Ordinal)))
        {
            foreach (var delta in JsonNode.Parse(line["data: ".Length..])!["choices"]!.AsArray().Select(static c => c!["delta"]?["tool_calls"]).OfType<JsonArray>().SelectMany(static a => a))
            {
                call ??= (JsonObject)delta!.DeepClone();
                arguments.Append(delta!["function"]?["arguments"]?.GetValue<string>());
            }
        }

        call.Should().NotBeNull(body);
        call!.Remove("index");
        call["function"]!["arguments"] = arguments.ToString();
        return call;
    }

    private async Task<string> NextTurnAsync(string question, JsonNode call)
    {
        var response = await Gateway.Http.PostAsync("v1/chat/completions", Json(NextTurn(question, call)), Ct);
        var body = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(body);
        return JsonNode.Parse(body)!["choices"]![0]!["message"]!["content"]!.GetValue<string>();
    }

    private static JsonObject First(string question, bool stream) => new()
    {
        ["model"] = "m",
        ["stream"] = stream,
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = question }),
        ["tools"] = new JsonArray(new JsonObject
        {
            ["type"] = "function",
            ["function"] = new JsonObject { ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } },
        }),
    };

    private static JsonObject NextTurn(string question, JsonNode call)
    {
        var body = First(question, stream: false);
        body["messages"]!.AsArray().Add(new JsonObject { ["role"] = "assistant", ["content"] = null, ["tool_calls"] = new JsonArray(call.DeepClone()) });
        body["messages"]!.AsArray().Add(new JsonObject { ["role"] = "tool", ["tool_call_id"] = call["id"]!.GetValue<string>(), ["content"] = "{\"sky\":\"clear\"}" });
        return body;
    }

    private static StringContent Json(JsonObject body) => new(body.ToJsonString(), Encoding.UTF8, "application/json");
}
