using System.Text.Json.Nodes;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// The bodies of a two-step tool loop around one tool, <c>get_weather</c> — "Weather in Paris?", the model's call, the
/// tool's result <c>{"sky":"clear"}</c> — in the chat and Anthropic formats, as the tests of what a loop's next step
/// needs back (ToolCallRecallTests, ReasoningRecallTests) send them.
/// </summary>
public static class WeatherToolLoop
{
    public const string Question = "Weather in Paris?";

    public const string ToolResult = "{\"sky\":\"clear\"}";

    /// <summary>The chat format's first step, offering the tool.</summary>
    public static JsonObject ChatFirst(string model, bool stream) => new()
    {
        ["model"] = model,
        ["stream"] = stream,
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = Question }),
        ["tools"] = new JsonArray(new JsonObject
        {
            ["type"] = "function",
            ["function"] = new JsonObject { ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } },
        }),
    };

    /// <summary>The chat format's next step: the assistant's <paramref name="call"/> as the client kept it, and its result.</summary>
    public static JsonObject ChatNextStep(string model, JsonNode call)
    {
        var body = ChatFirst(model, stream: false);
        body["messages"]!.AsArray().Add(new JsonObject { ["role"] = "assistant", ["content"] = null, ["tool_calls"] = new JsonArray(call.DeepClone()) });
        body["messages"]!.AsArray().Add(new JsonObject { ["role"] = "tool", ["tool_call_id"] = call["id"]!.GetValue<string>(), ["content"] = ToolResult });
        return body;
    }

    /// <summary>The Anthropic format's first step, offering the tool.</summary>
    public static JsonObject AnthropicFirst(string model, bool stream) => new()
    {
        ["model"] = model,
        ["max_tokens"] = 256,
        ["stream"] = stream,
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = Question }),
        ["tools"] = new JsonArray(new JsonObject { ["name"] = "get_weather", ["input_schema"] = new JsonObject { ["type"] = "object" } }),
    };

    /// <summary>The Anthropic format's next step (whole): the assistant's <paramref name="toolUse"/> block, and its result.</summary>
    public static JsonObject AnthropicNextStep(string model, JsonNode toolUse)
    {
        var body = AnthropicFirst(model, stream: false);
        body["messages"]!.AsArray().Add(new JsonObject { ["role"] = "assistant", ["content"] = new JsonArray(toolUse.DeepClone()) });
        body["messages"]!.AsArray().Add(new JsonObject
        {
            ["role"] = "user",
            ["content"] = new JsonArray(new JsonObject { ["type"] = "tool_result", ["tool_use_id"] = toolUse["id"]!.GetValue<string>(), ["content"] = ToolResult }),
        });
        return body;
    }
}
