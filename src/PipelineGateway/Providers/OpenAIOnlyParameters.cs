using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// Request parameters only OpenAI's wire format honours, for the adapters that translate (Anthropic, any
/// <c>IChatClient</c>). Each changes what the caller gets back — several choices (<c>n</c>), log probabilities, banned
/// or favoured tokens (<c>logit_bias</c>), spoken audio — so a deployment that cannot honour one does not take the
/// request rather than answer without it (<see cref="ProviderException.Unsupported"/>: the request goes on to a
/// deployment that can). Parameters that only tune how an answer is made (<c>seed</c>, penalties, <c>service_tier</c>,
/// <c>store</c>, <c>prediction</c>) are not refused: docs/providers.md says which are dropped where.
/// </summary>
internal static class OpenAIOnlyParameters
{
    public static void Check(ChatCompletionRequest request, string provider)
    {
        if (request.N is > 1)
        {
            throw Refuse("n", $"'n' asks for {request.N} choices; {provider} gives one answer per request");
        }

        var extra = request.AdditionalProperties;
        if (extra is null)
        {
            return;
        }

        if (extra.TryGetValue("logprobs", out var logprobs) && logprobs.ValueKind == JsonValueKind.True)
        {
            throw Refuse("logprobs", $"'logprobs' asks for token log probabilities; {provider} does not return them");
        }

        if (extra.TryGetValue("top_logprobs", out var top) && top.ValueKind == JsonValueKind.Number && top.TryGetInt32(out var n) && n > 0)
        {
            throw Refuse("top_logprobs", $"'top_logprobs' asks for token log probabilities; {provider} does not return them");
        }

        if (extra.TryGetValue("logit_bias", out var bias) && bias.ValueKind == JsonValueKind.Object && bias.EnumerateObject().Any())
        {
            throw Refuse("logit_bias", $"'logit_bias' changes which tokens may be produced; {provider} has no such control");
        }

        if ((extra.TryGetValue("audio", out var audio) && audio.ValueKind == JsonValueKind.Object)
            || (extra.TryGetValue("modalities", out var modalities) && modalities.ValueKind == JsonValueKind.Array && modalities.EnumerateArray().Any(static m => m.ValueKind == JsonValueKind.String && m.ValueEquals("audio"u8))))
        {
            throw Refuse(extra.ContainsKey("audio") ? "audio" : "modalities", $"the request asks for a spoken (audio) answer; {provider} answers in text");
        }
    }

    private static ProviderException Refuse(string param, string why) =>
        ProviderException.Unsupported(param, $"{why}. The request was not sent to this deployment.");
}
