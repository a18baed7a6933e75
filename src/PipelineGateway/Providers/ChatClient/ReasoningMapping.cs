using System.Text.Json;
using Microsoft.Extensions.AI;

namespace PipelineGateway.Providers.ChatClient;

/// <summary>
/// Reasoning between the canonical (OpenAI-shaped) form and Microsoft.Extensions.AI, both ways: OpenAI's
/// <c>reasoning_effort</c> and <see cref="ChatOptions.Reasoning"/>; a reasoning model's <c>reasoning_content</c> (an
/// answer's or a delta's unknown member) and <see cref="TextReasoningContent"/>.
/// </summary>
internal static class ReasoningMapping
{
    private const string Effort = "reasoning_effort";
    private const string Text = "reasoning_content";

    /// <summary>The request's <c>reasoning_effort</c> as M.E.AI's (<c>minimal</c> is its lowest, <c>Low</c>), or null.</summary>
    public static ReasoningOptions? Options(ChatCompletionRequest request) =>
        request.AdditionalProperties?.TryGetValue(Effort, out var e) == true && e.ValueKind == JsonValueKind.String
            ? e.GetString() switch
            {
                "none" => new ReasoningOptions { Effort = ReasoningEffort.None },
                "minimal" or "low" => new ReasoningOptions { Effort = ReasoningEffort.Low },
                "medium" => new ReasoningOptions { Effort = ReasoningEffort.Medium },
                "high" => new ReasoningOptions { Effort = ReasoningEffort.High },
                "xhigh" => new ReasoningOptions { Effort = ReasoningEffort.ExtraHigh },
                _ => null,
            }
            : null;

    /// <summary>M.E.AI's reasoning effort as the request's <c>reasoning_effort</c>.</summary>
    public static void SetEffort(ChatCompletionRequest request, ReasoningOptions? reasoning)
    {
        var name = reasoning?.Effort switch
        {
            ReasoningEffort.None => "none",
            ReasoningEffort.Low => "low",
            ReasoningEffort.Medium => "medium",
            ReasoningEffort.High => "high",
            ReasoningEffort.ExtraHigh => "xhigh",
            _ => null,
        };
        if (name is not null)
        {
            (request.AdditionalProperties ??= [])[Effort] = JsonSerializer.SerializeToElement(name, GatewayJsonContext.Default.String);
        }
    }

    /// <summary>The reasoning text among M.E.AI contents, as <c>reasoning_content</c> on <paramref name="extra"/>.</summary>
    public static Dictionary<string, JsonElement>? WithReasoning(Dictionary<string, JsonElement>? extra, IList<AIContent> contents)
    {
        // Every streamed update comes through here: no enumerator or string unless there is reasoning in it.
        string? text = null;
        for (var i = 0; i < contents.Count; i++)
        {
            if (contents[i] is TextReasoningContent { Text: { Length: > 0 } piece })
            {
                text = text is null ? piece : text + piece;
            }
        }

        if (text is null)
        {
            return extra;
        }

        extra ??= [];
        extra[Text] = JsonSerializer.SerializeToElement(text, GatewayJsonContext.Default.String);
        return extra;
    }

    /// <summary>An answer's or delta's <c>reasoning_content</c> as M.E.AI reasoning content, if it has any.</summary>
    public static TextReasoningContent? Content(Dictionary<string, JsonElement>? extra) =>
        extra?.TryGetValue(Text, out var t) == true && t.ValueKind == JsonValueKind.String && t.GetString() is { Length: > 0 } text
            ? new TextReasoningContent(text)
            : null;
}
