using System.Text.Json;

namespace PipelineGateway.Cost;

/// <summary>
/// Prompt tokens a provider's prompt cache served or stored, as a canonical usage carries them: read from the cache as
/// OpenAI reports them (<c>prompt_tokens_details.cached_tokens</c>), written to it as Anthropic reports them
/// (<c>cache_creation_input_tokens</c>, a member of the usage — LiteLLM's name for it too). Both are part of
/// <c>prompt_tokens</c>; each is priced at its own rate (<see cref="ModelPrice"/>).
/// </summary>
internal static class PromptCacheTokens
{
    private const string Written = "cache_creation_input_tokens";

    /// <summary>A usage whose <c>prompt_tokens</c> is <paramref name="fresh"/> plus the tokens read from and written to the cache.</summary>
    public static TokenUsage Usage(int fresh, int completion, int read, int written)
    {
        var usage = TokenUsage.Of(fresh + read + written, completion);
        if (read > 0 || written > 0)
        {
            usage.AdditionalProperties = [];
            if (read > 0)
            {
                usage.AdditionalProperties["prompt_tokens_details"] = JsonSerializer.SerializeToElement(new Dictionary<string, int> { ["cached_tokens"] = read }, PromptCacheJson.Default.DictionaryStringInt32);
            }

            if (written > 0)
            {
                usage.AdditionalProperties[Written] = JsonSerializer.SerializeToElement(written, PromptCacheJson.Default.Int32);
            }
        }

        return usage;
    }

    /// <summary>Prompt tokens served from the provider's cache.</summary>
    public static int ReadOf(TokenUsage usage) =>
        usage.AdditionalProperties?.TryGetValue("prompt_tokens_details", out var details) == true
        && details.ValueKind == JsonValueKind.Object
        && details.TryGetProperty("cached_tokens", out var c) && c.TryGetInt32(out var n) && n > 0 ? n : 0;

    /// <summary>Prompt tokens written to the provider's cache.</summary>
    public static int WrittenOf(TokenUsage usage) =>
        usage.AdditionalProperties?.TryGetValue(Written, out var w) == true && w.ValueKind == JsonValueKind.Number && w.TryGetInt32(out var n) && n > 0 ? n : 0;
}

/// <summary>
/// Claude's server tools' use in a canonical usage: the member <c>server_tool_use</c> as Anthropic reports it (and
/// LiteLLM carries it), <c>{"web_search_requests": N}</c>; web searches are billed per search
/// (<see cref="ModelPrice.WebSearchPerThousand"/>).
/// </summary>
internal static class ServerToolUse
{
    public const string Member = "server_tool_use";

    /// <summary>Sets the member on <paramref name="usage"/> when the upstream reported one (an object).</summary>
    public static TokenUsage With(TokenUsage usage, JsonElement? used)
    {
        if (used is { ValueKind: JsonValueKind.Object } u)
        {
            (usage.AdditionalProperties ??= [])[Member] = u;
        }

        return usage;
    }

    /// <summary>The member as it came, if any.</summary>
    public static JsonElement? Of(TokenUsage? usage) =>
        usage?.AdditionalProperties?.TryGetValue(Member, out var u) == true && u.ValueKind == JsonValueKind.Object ? u : null;

    /// <summary>Web searches Claude ran for the answer.</summary>
    public static int WebSearches(TokenUsage usage) =>
        Of(usage) is { } u && u.TryGetProperty("web_search_requests", out var n) && n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out var count) && count > 0 ? count : 0;
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, int>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(int))]
internal sealed partial class PromptCacheJson : System.Text.Json.Serialization.JsonSerializerContext;
