using System.ClientModel;
using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using OpenAI;
using OpenAI.Chat;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// A stream's tool calls as OpenAI's clients read them, from an upstream that streams them as Gemini's
/// OpenAI-compatible endpoint does (<c>StreamToolCalls</c>): tool-call deltas without <c>index</c>, a call's arguments
/// split over deltas that carry neither id nor index, two parallel calls, and <c>finish_reason: "stop"</c> — sent by a
/// real Kestrel (<c>sse-echo</c>: the stream the test chose, byte for byte). Read by the official OpenAI .NET SDK, over
/// the chat route, the Anthropic and Responses routes, and from the cache; a whole answer's <c>stop</c> with calls too.
/// </summary>
public sealed class StreamToolCallsTests() : EchoGatewayTests("sse-echo")
{
    private const string Signature = "CiQBjz1rX0Zx9yQ2";

    /// <summary>Gemini's stream of two calls, the first split over two deltas, none with an index; it finishes with stop.</summary>
    private static readonly string GeminiStream = string.Concat(
        Event($$$"""{"choices":[{"delta":{"role":"assistant","tool_calls":[{"extra_content":{"google":{"thought_signature":"{{{Signature}}}"}},"function":{"arguments":"{\"city\":","name":"get_weather"},"id":"function-call-1","type":"function"}]},"index":0}],"model":"gemini-3-pro-preview","object":"chat.completion.chunk"}"""),
        Event("""{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"Paris\"}"}}]},"index":0}],"model":"gemini-3-pro-preview","object":"chat.completion.chunk"}"""),
        Event("""{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"tz\":\"CET\"}","name":"get_time"},"id":"function-call-2","type":"function"}]},"index":0}],"model":"gemini-3-pro-preview","object":"chat.completion.chunk"}"""),
        Event("""{"choices":[{"delta":{},"finish_reason":"stop","index":0}],"model":"gemini-3-pro-preview","object":"chat.completion.chunk","usage":{"completion_tokens":5,"prompt_tokens":20,"total_tokens":25}}"""),
        "data: [DONE]\n\n");

    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Gateway:Cache:Enabled"] = "true";
        Upstream.AddProvider(settings, 1, "whole", "OpenAICompatible", "body-echo", "w", "w-up");
    }

    private static string Event(string json) => $"data: {json}\n\n";

    [Fact]
    public async Task Every_delta_leaves_with_its_calls_index_and_the_stream_finishes_with_tool_calls()
    {
        var body = await PostAsync("v1/chat/completions", Chat(GeminiStream, stream: true));

        var events = Events(body).ToList();
        var deltas = events.SelectMany(static e => e["choices"]!.AsArray()).Select(static c => c!["delta"]?["tool_calls"]).OfType<JsonArray>().SelectMany(static a => a).ToList();
        deltas.Should().HaveCount(3);
        deltas.Select(static d => d!["index"]?.GetValue<int>()).Should().Equal(0, 0, 1);
        Calls(deltas).Should().Equal(("function-call-1", "get_weather", """{"city":"Paris"}"""), ("function-call-2", "get_time", """{"tz":"CET"}"""));
        deltas[0]!["extra_content"]!["google"]!["thought_signature"]!.GetValue<string>().Should().Be(Signature, "the call keeps its members");
        events.SelectMany(static e => e["choices"]!.AsArray()).Select(static c => c!["finish_reason"]?.GetValue<string>()).OfType<string>().Should().Equal("tool_calls");
    }

    [Fact]
    public async Task The_official_OpenAI_SDK_reads_both_calls_and_the_reason_to_call_them()
    {
        var client = new ChatClient("m", new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(Gateway.Http.BaseAddress!, "v1") });
        var options = new ChatCompletionOptions { Tools = { ChatTool.CreateFunctionTool("get_weather"), ChatTool.CreateFunctionTool("get_time") } };
        var calls = new SortedDictionary<int, (string? Id, string? Name, StringBuilder Arguments)>();
        ChatFinishReason? finish = null;

        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage(GeminiStream)], options, Ct))
        {
            foreach (var call in update.ToolCallUpdates)
            {
                var held = calls.TryGetValue(call.Index, out var h) ? h : (null, null, new StringBuilder());
                calls[call.Index] = (held.Id ?? call.ToolCallId, held.Name ?? call.FunctionName, held.Arguments.Append(call.FunctionArgumentsUpdate?.ToString()));
            }

            finish ??= update.FinishReason;
        }

        calls.Values.Select(static c => (c.Id, c.Name, c.Arguments.ToString())).Should().Equal(("function-call-1", "get_weather", """{"city":"Paris"}"""), ("function-call-2", "get_time", """{"tz":"CET"}"""));
        finish.Should().Be(ChatFinishReason.ToolCalls);
    }

    [Fact]
    public async Task An_Anthropic_client_gets_two_tool_use_blocks_and_the_reason_to_use_them()
    {
        var request = new JsonObject
        {
            ["model"] = "m",
            ["max_tokens"] = 256,
            ["stream"] = true,
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = GeminiStream }),
            ["tools"] = new JsonArray(
                new JsonObject { ["name"] = "get_weather", ["input_schema"] = new JsonObject { ["type"] = "object" } },
                new JsonObject { ["name"] = "get_time", ["input_schema"] = new JsonObject { ["type"] = "object" } }),
        };

        var events = Events(await PostAsync("v1/messages", request)).ToList();

        var blocks = events.Where(static e => e["type"]!.GetValue<string>() == "content_block_start").Select(static e => (e["index"]!.GetValue<int>(), e["content_block"]!["name"]!.GetValue<string>())).ToList();
        blocks.Should().Equal((0, "get_weather"), (1, "get_time"));
        string Input(int index) => string.Concat(events.Where(e => e["type"]!.GetValue<string>() == "content_block_delta" && e["index"]!.GetValue<int>() == index).Select(static e => e["delta"]!["partial_json"]!.GetValue<string>()));
        Input(0).Should().Be("""{"city":"Paris"}""");
        Input(1).Should().Be("""{"tz":"CET"}""");
        events.Single(static e => e["type"]!.GetValue<string>() == "message_delta")["delta"]!["stop_reason"]!.GetValue<string>().Should().Be("tool_use");
    }

    [Fact]
    public async Task A_Responses_client_gets_two_function_calls()
    {
        var request = new JsonObject
        {
            ["model"] = "m",
            ["stream"] = true,
            ["store"] = false,
            ["input"] = GeminiStream,
            ["tools"] = new JsonArray(
                new JsonObject { ["type"] = "function", ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } },
                new JsonObject { ["type"] = "function", ["name"] = "get_time", ["parameters"] = new JsonObject { ["type"] = "object" } }),
        };

        var completed = Events(await PostAsync("v1/responses", request)).Single(static e => e["type"]!.GetValue<string>() == "response.completed")["response"]!;

        completed["output"]!.AsArray().Where(static i => i!["type"]!.GetValue<string>() == "function_call")
            .Select(static i => (i!["call_id"]!.GetValue<string>(), i["name"]!.GetValue<string>(), i["arguments"]!.GetValue<string>()))
            .Should().Equal(("function-call-1", "get_weather", """{"city":"Paris"}"""), ("function-call-2", "get_time", """{"tz":"CET"}"""));
    }

    [Fact]
    public async Task The_cache_keeps_the_two_calls_of_a_stream_and_a_hit_says_tool_calls()
    {
        await PostAsync("v1/chat/completions", Chat(GeminiStream, stream: true));

        using var response = await Gateway.Http.PostAsync("v1/chat/completions", Json(Chat(GeminiStream, stream: false)), Ct);
        var body = await response.Content.ReadAsStringAsync(Ct);

        response.Headers.GetValues("x-gateway-cache").Single().Should().Be("hit");
        var choice = JsonNode.Parse(body)!["choices"]![0]!;
        choice["message"]!["tool_calls"]!.AsArray().Select(static c => (c!["id"]!.GetValue<string>(), c["function"]!["name"]!.GetValue<string>(), c["function"]!["arguments"]!.GetValue<string>())).Should().Equal(("function-call-1", "get_weather", """{"city":"Paris"}"""), ("function-call-2", "get_time", """{"tz":"CET"}"""));
        choice["finish_reason"]!.GetValue<string>().Should().Be("tool_calls");
    }

    [Fact]
    public async Task A_whole_answer_with_calls_said_to_stop_says_tool_calls()
    {
        const string Whole = """{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"logprobs":null}],"created":1,"id":"x","model":"w-up","object":"chat.completion","usage":{"completion_tokens":1,"prompt_tokens":1,"total_tokens":2}}""";
        var request = Chat(Whole, stream: false);
        request["model"] = "w";

        var body = await PostAsync("v1/chat/completions", request);

        JsonNode.Parse(body)!["choices"]![0]!["finish_reason"]!.GetValue<string>().Should().Be("tool_calls");
    }

    private static JsonObject Chat(string upstreamBody, bool stream) => new()
    {
        ["model"] = "m",
        ["stream"] = stream,
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = upstreamBody }),
        ["tools"] = new JsonArray(
            new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } } },
            new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_time", ["parameters"] = new JsonObject { ["type"] = "object" } } }),
    };

    /// <summary>The calls the deltas add up to, by index, as (id, name, arguments).</summary>
    private static List<(string?, string?, string)> Calls(IEnumerable<JsonNode?> deltas) =>
        [.. deltas.GroupBy(static d => d!["index"]?.GetValue<int>() ?? -1).OrderBy(static g => g.Key).Select(static g => (
            g.Select(static d => d!["id"]?.GetValue<string>()).FirstOrDefault(static id => id is not null),
            g.Select(static d => d!["function"]?["name"]?.GetValue<string>()).FirstOrDefault(static n => n is not null),
            string.Concat(g.Select(static d => d!["function"]?["arguments"]?.GetValue<string>()))))];

    private async Task<string> PostAsync(string path, JsonObject body)
    {
        using var response = await Gateway.Http.PostAsync(path, Json(body), Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(text);
        return text;
    }

    private static StringContent Json(JsonObject body) => new(body.ToJsonString(), Encoding.UTF8, "application/json");

    private static IEnumerable<JsonNode> Events(string sse) => SseEvents.Json(sse);
}
