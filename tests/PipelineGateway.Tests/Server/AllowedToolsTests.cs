using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// OpenAI's <c>allowed_tools</c> tool choice — the model may call only a listed subset of the request's tools, <c>auto</c>
/// or <c>required</c> — over the chat route and the Responses route (whose shape is flat), to an OpenAI-compatible
/// deployment and to Claude, which has no such choice: it is offered only the allowed tools. It was sent to Claude as
/// <c>auto</c> with every tool (the model could call one the caller had ruled out), and the Responses route refused it.
/// The upstreams are the simulator, which honours the choice as OpenAI does and, as Claude, calls the first tool offered
/// when one is required.
/// </summary>
public sealed class AllowedToolsTests : IAsyncLifetime
{
    private SimulatorFleet _fleet = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.GptAndClaudeAsync(Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private static JsonArray ChatTools() => new(
        new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } } },
        new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_time", ["parameters"] = new JsonObject { ["type"] = "object" } } });

    private static JsonObject ChatChoice(string mode) => new()
    {
        ["type"] = "allowed_tools",
        ["allowed_tools"] = new JsonObject
        {
            ["mode"] = mode,
            ["tools"] = new JsonArray(new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "get_time" } }),
        },
    };

    [Theory]
    [InlineData("gpt")]
    [InlineData("claude")]
    public async Task On_the_chat_route_only_an_allowed_tool_is_called(string model)
    {
        // Required: one of the allowed tools is called.
        var required = await ChatAsync(model, "What is the time?", ChatChoice("required"));
        required["choices"]![0]!["message"]!["tool_calls"]!.AsArray().Select(static c => c!["function"]!["name"]!.GetValue<string>()).Should().Equal("get_time");

        // Auto, the message asking for a tool that is not allowed: it is not called.
        var auto = await ChatAsync(model, "Call get_weather for Paris.", ChatChoice("auto"));
        (auto["choices"]![0]!["message"]!["tool_calls"] as JsonArray ?? []).Select(static c => c!["function"]!["name"]!.GetValue<string>()).Should().NotContain("get_weather");
    }

    [Theory]
    [InlineData("gpt")]
    [InlineData("claude")]
    public async Task On_the_Responses_route_its_flat_shape_is_taken_and_honoured(string model)
    {
        var body = new JsonObject
        {
            ["model"] = model,
            ["input"] = "What is the time?",
            ["store"] = false,
            ["tools"] = new JsonArray(
                new JsonObject { ["type"] = "function", ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } },
                new JsonObject { ["type"] = "function", ["name"] = "get_time", ["parameters"] = new JsonObject { ["type"] = "object" } }),
            ["tool_choice"] = new JsonObject
            {
                ["type"] = "allowed_tools",
                ["mode"] = "required",
                ["tools"] = new JsonArray(new JsonObject { ["type"] = "function", ["name"] = "get_time" }),
            },
        };

        var (status, text) = await PostAsync("v1/responses", body);

        status.Should().Be(200, text);
        JsonNode.Parse(text)!["output"]!.AsArray().Where(static i => i!["type"]!.GetValue<string>() == "function_call").Select(static i => i!["name"]!.GetValue<string>()).Should().Equal("get_time");
    }

    [Fact]
    public async Task A_choice_that_cannot_be_honoured_is_a_400_naming_it_not_a_wider_one()
    {
        // The Responses route: allowed_tools without a mode.
        var responses = new JsonObject
        {
            ["model"] = "gpt",
            ["input"] = "hi",
            ["tools"] = new JsonArray(new JsonObject { ["type"] = "function", ["name"] = "get_time", ["parameters"] = new JsonObject { ["type"] = "object" } }),
            ["tool_choice"] = new JsonObject { ["type"] = "allowed_tools", ["tools"] = new JsonArray(new JsonObject { ["type"] = "function", ["name"] = "get_time" }) },
        };
        var (status, text) = await PostAsync("v1/responses", responses);
        status.Should().Be(400, text);
        JsonNode.Parse(text)!["error"]!["param"]!.GetValue<string>().Should().Be("tool_choice");

        // Claude: a choice it has no form for (a custom tool's); any route and upstream: an allowed function not among the tools.
        foreach (var (model, choice) in new (string, JsonNode)[] { ("claude", new JsonObject { ["type"] = "custom", ["custom"] = new JsonObject { ["name"] = "get_time" } }), ("claude", NoneAllowed()), ("gpt", NoneAllowed()) })
        {
            var chat = new JsonObject { ["model"] = model, ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hi" }), ["tools"] = ChatTools(), ["tool_choice"] = choice };
            (status, text) = await PostAsync("v1/chat/completions", chat);
            status.Should().Be(400, text);
            JsonNode.Parse(text)!["error"]!["param"]!.GetValue<string>().Should().Be("tool_choice");
        }

        static JsonObject NoneAllowed()
        {
            var choice = ChatChoice("auto");
            choice["allowed_tools"]!["tools"]![0]!["function"]!["name"] = "get_stock_price";
            return choice;
        }
    }

    private async Task<JsonNode> ChatAsync(string model, string text, JsonObject choice)
    {
        var body = new JsonObject
        {
            ["model"] = model,
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = text }),
            ["tools"] = ChatTools(),
            ["tool_choice"] = choice,
        };
        var (status, answer) = await PostAsync("v1/chat/completions", body);
        status.Should().Be(200, answer);
        return JsonNode.Parse(answer)!;
    }

    private async Task<(int Status, string Body)> PostAsync(string path, JsonObject body)
    {
        using var http = new HttpClient { BaseAddress = _fleet.Base };
        using var response = await http.PostAsync(path, new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"), Ct);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }
}
