using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Providers;
using PipelineGateway.Serialization;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Another model's tool-call ids on the way to OpenAI itself, which refuses one longer than 40 characters on every later
/// step of the conversation ("string too long" — Portkey's generated ids are 44, Google's <c>ws_…</c> 51): written within
/// 40, paired, the same every time; an OpenAI-compatible server gets them as they are (Kimi needs its own back as they
/// were). The upstream is the simulator, which refuses a long id as OpenAI does. Claude's pattern:
/// AnthropicTranslationTests and ErrorContractTests.
/// </summary>
public sealed class ForeignToolIdsTests : IAsyncLifetime
{
    /// <summary>An id a gateway in front generated: <c>portkey-</c> and a UUID, 44 characters.</summary>
    private const string LongId = "portkey-6aa6db90-1b84-4155-9f32-f658c97d6b1b";

    private SimulatorFleet _fleet = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.StartAsync(
        [("openai", "OpenAI", null), ("compatible", "OpenAICompatible", null)],
        [("gpt", ["openai"]), ("gpt-compatible", ["compatible"])],
        "gpt-4o-mini",
        [],
        Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    [Fact]
    public async Task A_conversation_with_a_long_tool_id_goes_on_with_OpenAI_and_reaches_a_compatible_server_as_it_was()
    {
        var (status, body) = await PostAsync(Step("gpt"));
        status.Should().Be(200, body);

        // The compatible server gets the id as the client sent it: the simulator, as OpenAI, refuses it — relayed as a 400.
        (status, body) = await PostAsync(Step("gpt-compatible"));
        status.Should().Be(400, body);
        body.Should().Contain("string too long").And.Contain("maximum length 40");
    }

    [Fact]
    public void Written_for_OpenAI_a_long_id_fits_in_40_stays_paired_and_apart_from_a_near_one()
    {
        string[] ids = [LongId, LongId[..^1] + "c", "call_short", new string('x', 40)];
        var request = new ChatCompletionRequest
        {
            Model = "gpt",
            Messages =
            [
                ChatCompletionMessage.User("Weather?"),
                new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [.. ids.Select(static id => new ToolCall { Id = id, Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = "{}" } })] },
                .. ids.Select(static id => ChatCompletionMessage.Tool(id, "sunny")),
            ],
        };

        var sent = JsonDocument.Parse(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false, toolIds: PipelineGateway.Hosting.ToolCallIdRule.OpenAI)).RootElement.GetProperty("messages");
        var calls = sent[1].GetProperty("tool_calls").EnumerateArray().Select(static c => c.GetProperty("id").GetString()!).ToList();
        var results = Enumerable.Range(2, ids.Length).Select(i => sent[i].GetProperty("tool_call_id").GetString()!).ToList();

        calls.Should().OnlyContain(static id => id.Length <= ToolIds.OpenAIMaxLength);
        results.Should().Equal(calls, "each result names its call as the call is written");
        calls.Should().OnlyHaveUniqueItems("two long ids that share their first 31 characters stay apart");
        calls[2..].Should().Equal(ids[2..], "an id within 40 characters is sent as it is");
        calls[0].Should().Be(ToolIds.ForOpenAI(LongId)).And.StartWith(LongId[..31]);

        var compatible = JsonDocument.Parse(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false)).RootElement.GetProperty("messages");
        compatible[1].GetProperty("tool_calls")[0].GetProperty("id").GetString().Should().Be(LongId, "only a request to OpenAI itself is changed");
    }

    private static JsonObject Step(string model) => new()
    {
        ["model"] = model,
        ["messages"] = new JsonArray(
            new JsonObject { ["role"] = "user", ["content"] = "Weather in Paris?" },
            new JsonObject
            {
                ["role"] = "assistant",
                ["content"] = null,
                ["tool_calls"] = new JsonArray(new JsonObject { ["id"] = LongId, ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_weather", ["arguments"] = "{\"city\":\"Paris\"}" } }),
            },
            new JsonObject { ["role"] = "tool", ["tool_call_id"] = LongId, ["content"] = "18C and sunny" }),
        ["tools"] = new JsonArray(new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } } }),
    };

    private async Task<(int Status, string Body)> PostAsync(JsonObject body)
    {
        using var http = new HttpClient { BaseAddress = _fleet.Base };
        using var response = await http.PostAsync("v1/chat/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"), Ct);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }
}
