namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// The deterministic answers of the simulated provider and the upstream simulator: a function of the last
/// message, the seed and the requested length, with token counts of realistic size.
/// </summary>
internal static class SimulatedText
{
    private static readonly string[] Vocabulary =
    [
        "the", "gateway", "routes", "requests", "across", "providers", "with", "bounded", "channels", "and",
        "backpressure", "so", "bursts", "become", "waiting", "instead", "of", "memory", "growth", "while",
        "failed", "work", "is", "retried", "elsewhere", "answer", "model", "token", "stream", "cache",
    ];

    /// <summary>The answer's words: one word is one completion token.</summary>
    public static string[] Answer(ChatCompletionRequest request, int seed, int maxWords)
    {
        var prompt = request.Messages.Count > 0 ? request.Messages[^1].Content?.GetText() ?? string.Empty : string.Empty;
        return Answer(prompt, seed, Math.Min(request.RequestedCompletionTokens ?? maxWords, maxWords));
    }

    /// <summary>
    /// Why an answer of <paramref name="maxWords"/> natural words ended: a tool call; the caller's token limit when it
    /// asked for fewer (<c>length</c>, as every API reports a cut answer — one that is <paramref name="whole"/>, a JSON
    /// answer or one a stop sequence ended, is not cut); else <c>stop</c>.
    /// </summary>
    public static string Finish(ChatCompletionRequest request, int maxWords, string? tool, bool whole) =>
        tool is not null ? FinishReasons.ToolCalls
        : !whole && request.RequestedCompletionTokens is { } asked && asked < maxWords ? FinishReasons.Length
        : FinishReasons.Stop;

    public static string[] Answer(string prompt, int seed, int words)
    {
        var state = SimulatedProvider.Mix((ulong)seed, (ulong)StableHash(prompt));
        var count = Math.Max(1, words);
        var result = new string[count];
        for (var i = 0; i < count; i++)
        {
            state = SimulatedProvider.Mix(state, (ulong)i);
            result[i] = Vocabulary[(int)(state % (ulong)Vocabulary.Length)];
        }

        return result;
    }

    /// <summary>About four characters a token, plus four tokens of framing per message.</summary>
    public static int PromptTokens(ChatCompletionRequest request)
    {
        var chars = 0;
        foreach (var m in request.Messages)
        {
            chars += (m.Content?.GetText().Length ?? 0) + 16;
        }

        return Math.Max(1, chars / 4);
    }

    public static int StableHash(string s)
    {
        unchecked
        {
            var h = (int)2166136261;
            foreach (var c in s)
            {
                h = (h ^ c) * 16777619;
            }

            return h;
        }
    }

    /// <summary>
    /// The pieces' log probabilities as OpenAI's <c>logprobs</c> member carries them (<c>content</c>: each token with
    /// its <c>logprob</c>, UTF-8 <c>bytes</c> and <c>top_logprobs</c> — the token itself first, then as many made-up
    /// alternatives as <c>top_logprobs</c> asks, less likely); null unless the request asked (<c>logprobs: true</c>).
    /// Deterministic: a function of each piece.
    /// </summary>
    public static System.Text.Json.JsonElement? Logprobs(ChatCompletionRequest request, IReadOnlyList<string> pieces)
    {
        if (request.AdditionalProperties?.TryGetValue("logprobs", out var asked) != true || asked.ValueKind != System.Text.Json.JsonValueKind.True)
        {
            return null;
        }

        var top = request.AdditionalProperties.TryGetValue("top_logprobs", out var n) && n.ValueKind == System.Text.Json.JsonValueKind.Number && n.TryGetInt32(out var count)
            ? Math.Clamp(count, 0, 20)
            : 0;
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var w = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("content");
            foreach (var piece in pieces)
            {
                var logprob = -((StableHash(piece) & 0x3FF) / 1024.0) - 0.001;
                w.WriteStartObject();
                Entry(w, piece, logprob);
                w.WriteStartArray("top_logprobs");
                for (var k = 0; k < top; k++)
                {
                    w.WriteStartObject();
                    Entry(w, k == 0 ? piece : piece.Trim() + "~" + k, logprob - k);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteNull("refusal");
            w.WriteEndObject();
        }

        using var doc = System.Text.Json.JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();

        static void Entry(System.Text.Json.Utf8JsonWriter w, string token, double logprob)
        {
            w.WriteString("token", token);
            w.WriteNumber("logprob", Math.Round(logprob, 6));
            w.WriteStartArray("bytes");
            foreach (var b in System.Text.Encoding.UTF8.GetBytes(token))
            {
                w.WriteNumberValue(b);
            }

            w.WriteEndArray();
        }
    }
}
