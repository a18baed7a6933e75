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

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, int>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(int))]
internal sealed partial class PromptCacheJson : System.Text.Json.Serialization.JsonSerializerContext;
