using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// A thinking model's reasoning on a tool-calling step, kept by the gateway for the loop's next step
/// (<c>ToolCallRecall</c>): Kimi K2.5+, GLM and DeepSeek's thinking mode refuse the next step when its assistant
/// tool-call message comes back without its <c>reasoning_content</c> — which OpenAI-format clients drop, and which no
/// <c>/v1/messages</c> or <c>/v1/responses</c> client can send back. The upstream is a real Kestrel answering as Kimi
/// does (<c>kimi-thinking</c>: the reasoning beside the call, streamed as pieces in OpenAI's own shape, which the
/// gateway forwards as bytes; the next step checked for it, a 400 in Kimi's words otherwise).
/// </summary>
public sealed class ReasoningRecallTests() : EchoGatewayTests("kimi-thinking")
{
    private const string Answer = "It is sunny in Paris.";
    private const string CallId = "functions.get_weather:0";

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_OpenAI_format_client_that_drops_the_reasoning_gets_its_next_step_answered(bool stream)
    {
        var (status, body) = await PostAsync("v1/chat/completions", WeatherToolLoop.ChatFirst("m", stream));
        status.Should().Be(200, body);
        if (stream)
        {
            string.Concat(SseEvents.Json(body).Select(static e => e["choices"]?[0]?["delta"]?["reasoning_content"]?.GetValue<string>())).Should().Be(ScriptedUpstream.KimiReasoning, "the reasoning reached the client as it came");
        }

        // The step as the OpenAI SDKs send it back: the call, no reasoning_content.
        (status, body) = await PostAsync("v1/chat/completions", NextChatStep(CallId));

        status.Should().Be(200, body);
        JsonNode.Parse(body)!["choices"]![0]!["message"]!["content"]!.GetValue<string>().Should().Be(Answer);
    }

    [Fact]
    public async Task A_step_the_gateway_did_not_answer_is_sent_as_it_came_and_the_upstreams_400_reaches_the_client()
    {
        await PostAsync("v1/chat/completions", WeatherToolLoop.ChatFirst("m", stream: false));

        var (status, body) = await PostAsync("v1/chat/completions", NextChatStep("functions.get_weather:7"));

        status.Should().Be(400, body);
        body.Should().Contain("reasoning_content is missing");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_Anthropic_client_loops_through_a_thinking_model(bool stream)
    {
        var (status, body) = await PostAsync("v1/messages", WeatherToolLoop.AnthropicFirst("m", stream));
        status.Should().Be(200, body);
        var toolUse = new JsonObject { ["type"] = "tool_use", ["id"] = CallId, ["name"] = "get_weather", ["input"] = new JsonObject { ["city"] = "Paris" } };

        (status, body) = await PostAsync("v1/messages", WeatherToolLoop.AnthropicNextStep("m", toolUse));

        status.Should().Be(200, body);
        JsonNode.Parse(body)!["content"]![0]!["text"]!.GetValue<string>().Should().Be(Answer);
    }

    [Fact]
    public async Task A_Responses_client_loops_through_a_thinking_model()
    {
        var tools = new JsonArray(new JsonObject { ["type"] = "function", ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } });
        var (status, body) = await PostAsync("v1/responses", new JsonObject { ["model"] = "m", ["input"] = "Weather in Paris?", ["store"] = false, ["tools"] = tools.DeepClone() });
        status.Should().Be(200, body);
        var call = JsonNode.Parse(body)!["output"]!.AsArray().Single(static i => i!["type"]!.GetValue<string>() == "function_call")!;

        var next = new JsonObject
        {
            ["model"] = "m",
            ["store"] = false,
            ["tools"] = tools.DeepClone(),
            ["input"] = new JsonArray(
                new JsonObject { ["role"] = "user", ["content"] = "Weather in Paris?" },
                call.DeepClone(),
                new JsonObject { ["type"] = "function_call_output", ["call_id"] = CallId, ["output"] = "{\"sky\":\"clear\"}" }),
        };
        (status, body) = await PostAsync("v1/responses", next);

        status.Should().Be(200, body);
        body.Should().Contain(Answer);
    }

    /// <summary>The step as the OpenAI SDKs send it back: the call, no reasoning_content.</summary>
    private static JsonObject NextChatStep(string callId) => WeatherToolLoop.ChatNextStep("m", new JsonObject
    {
        ["id"] = callId,
        ["type"] = "function",
        ["function"] = new JsonObject { ["name"] = "get_weather", ["arguments"] = "{\"city\":\"Paris\"}" },
    });

    private async Task<(int Status, string Body)> PostAsync(string path, JsonObject body)
    {
        using var response = await Gateway.Http.PostAsync(path, new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"), Ct);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }
}
