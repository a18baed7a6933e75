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

    /// <summary>
    /// A whole answer's reasoning with Claude's signed thinking blocks (<c>thinking_blocks</c>) as the content's
    /// <see cref="TextReasoningContent.ProtectedData"/> — what M.E.AI carries back unchanged in the conversation (a
    /// function-invoking client replays the assistant's contents), so the next step of a tool loop gives Claude its
    /// thinking back (<see cref="Blocks"/>).
    /// </summary>
    public static TextReasoningContent? WithBlocks(TextReasoningContent? reasoning, string? blocks)
    {
        if (blocks is null)
        {
            return reasoning;
        }

        reasoning ??= new TextReasoningContent(string.Empty);
        reasoning.ProtectedData = blocks;
        return reasoning;
    }

    /// <summary>The thinking blocks a message or delta carries, as JSON text (null: none).</summary>
    public static string? BlocksJson(Dictionary<string, JsonElement>? extra) =>
        extra?.TryGetValue(Anthropic.ThinkingBlocks.Member, out var b) == true && b.ValueKind == JsonValueKind.Array && b.GetArrayLength() > 0 ? b.GetRawText() : null;

    /// <summary>
    /// The thinking blocks an assistant message's reasoning carries (<see cref="WithBlocks"/>), as the message's
    /// <c>thinking_blocks</c>; none when its protected data is not such a list (another provider's).
    /// </summary>
    public static JsonElement? Blocks(IList<AIContent> contents)
    {
        foreach (var content in contents)
        {
            if (content is TextReasoningContent { ProtectedData: { Length: > 0 } data } && data[0] == '[')
            {
                try
                {
                    using var doc = JsonDocument.Parse(data);
                    if (Anthropic.ThinkingBlocks.Read(new Dictionary<string, JsonElement> { [Anthropic.ThinkingBlocks.Member] = doc.RootElement }).Count > 0)
                    {
                        return doc.RootElement.Clone();
                    }
                }
                catch (JsonException)
                {
                    // Not ours.
                }
            }
        }

        return null;
    }
}
