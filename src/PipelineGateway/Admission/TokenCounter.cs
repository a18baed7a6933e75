using Microsoft.ML.Tokenizers;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// Counts prompt tokens the way OpenAI bills them: the o200k encoding for the gpt-4o / o-series / gpt-4.1 / gpt-5
/// families, cl100k for gpt-4 and gpt-3.5, plus the chat framing (3 tokens a message, 1 more for a name, 3 to
/// prime the reply). Other models (Claude, Llama, …) have no public tokenizer here and get the cheap estimate.
/// Tokenizers load once — for a token limit, as the gateway starts (<see cref="TokenizerWarmup"/>) — and are used only
/// for a token limit (<see cref="CountPrompt"/>) and the explicit count routes: one costs ~300 ms to load
/// and stays in memory for the process's life — o200k's vocabulary is 42 MB of live objects (a 28 MB table on the large
/// object heap), ~65–70 MiB of resident memory once the GC's budgets follow it. A usage the gateway estimates afterwards
/// counts with them only when a token limit had the prompt counted (<see cref="EstimateUsage"/>).
/// </summary>
internal static class TokenCounter
{
    private static readonly Encoding O200k = new(() => TiktokenTokenizer.CreateForEncoding("o200k_base"));
    private static readonly Encoding Cl100k = new(() => TiktokenTokenizer.CreateForEncoding("cl100k_base"));

    /// <summary>
    /// An encoding's tokenizer, loaded once: on first use (<see cref="Value"/>: the warm-up, the explicit count routes),
    /// or in the background for a caller that must not wait (<see cref="IfLoaded"/>: admission's stage loop).
    /// </summary>
    internal sealed class Encoding(Func<Tokenizer> load)
    {
        private readonly Lazy<Tokenizer> _tokenizer = new(load);
        private Task? _loading;

        /// <summary>The tokenizer, loaded now if it is not yet (~300 ms for o200k).</summary>
        public Tokenizer Value => _tokenizer.Value;

        /// <summary>The background load <see cref="IfLoaded"/> started, if any.</summary>
        public Task? Loading => Volatile.Read(ref _loading);

        /// <summary>
        /// The tokenizer if it is loaded; else null, and its load started in the background (once): the caller counts
        /// at ~4 characters a token meanwhile rather than hold every request behind it for the load.
        /// </summary>
        public Tokenizer? IfLoaded()
        {
            if (_tokenizer.IsValueCreated)
            {
                return _tokenizer.Value;
            }

            if (Volatile.Read(ref _loading) is null)
            {
                var load = new Task(() => _ = _tokenizer.Value);
                if (Interlocked.CompareExchange(ref _loading, load, null) is null)
                {
                    load.Start(TaskScheduler.Default);
                }
            }

            return null;
        }
    }

    /// <summary>The encoding used for a model name, or null when the cheap estimate is used.</summary>
    public static string? EncodingFor(string model)
    {
        var m = model.AsSpan();
        var slash = m.LastIndexOf('/');
        if (slash >= 0)
        {
            m = m[(slash + 1)..]; // "openai/gpt-4o" style names
        }

        if (m.StartsWith("gpt-4o", StringComparison.OrdinalIgnoreCase) || m.StartsWith("gpt-4.1", StringComparison.OrdinalIgnoreCase)
            || m.StartsWith("gpt-4.5", StringComparison.OrdinalIgnoreCase) || m.StartsWith("gpt-5", StringComparison.OrdinalIgnoreCase)
            || m.StartsWith("o1", StringComparison.OrdinalIgnoreCase) || m.StartsWith("o3", StringComparison.OrdinalIgnoreCase)
            || m.StartsWith("o4", StringComparison.OrdinalIgnoreCase) || m.StartsWith("chatgpt-4o", StringComparison.OrdinalIgnoreCase))
        {
            return "o200k_base";
        }

        if (m.StartsWith("gpt-4", StringComparison.OrdinalIgnoreCase) || m.StartsWith("gpt-3.5", StringComparison.OrdinalIgnoreCase)
            || m.StartsWith("text-embedding", StringComparison.OrdinalIgnoreCase))
        {
            return "cl100k_base";
        }

        return null;
    }

    /// <summary>Loads an encoding's tokenizer now (<see cref="TokenizerWarmup"/>), off any request's path.</summary>
    public static void Load(string encoding) => _ = ByEncoding(encoding)
        ?? throw new ArgumentOutOfRangeException(nameof(encoding), encoding, "Not an encoding the gateway counts with.");

    /// <summary>The tokenizer a model is counted with (loaded on first use), or null for the cheap estimate.</summary>
    internal static Tokenizer? TokenizerFor(string model) => ByEncoding(EncodingFor(model));

    /// <summary>An encoding's tokenizer (loaded on first use), or null for none the gateway counts with.</summary>
    private static Tokenizer? ByEncoding(string? encoding) => EncodingNamed(encoding)?.Value;

    private static Encoding? EncodingNamed(string? encoding) => encoding switch
    {
        "o200k_base" => O200k,
        "cl100k_base" => Cl100k,
        _ => null,
    };

    /// <summary>
    /// The usage of an answer whose upstream reported none (some OpenAI-compatible servers ignore
    /// <c>stream_options.include_usage</c>, a host's own provider may leave it out): the prompt counted as above, the
    /// answer's text and tool calls counted the same way — or, for a stream whose events were forwarded unread,
    /// <paramref name="streamed"/>, what its events were estimated to carry (<see cref="ChatCompletionChunk.EstimatedOutputTokens"/>:
    /// about four characters a token, at least one an event that carried content).
    /// Marked <c>"estimated": true</c> so nobody takes it for the upstream's count. Budgets, cost, metrics and the request
    /// log then see what was used instead of nothing.
    /// <para>
    /// Counted with the model's tokenizer (once it is loaded: a request's end never waits for it, <see cref="Encoding.IfLoaded"/>)
    /// only when a token limit had the prompt counted already
    /// (<paramref name="countedPrompt"/>, <see cref="WorkItem.PromptTokensIfCounted"/>: that count is the prompt's), else at
    /// about four characters a token, as the budgets' reservations are: a gateway without token limits never loads a
    /// tokenizer. It did, for the first request given up in flight — a client that disconnects — and that request's
    /// completion waited ~300 ms for it while the process grew by ~65 MiB (the paired benchmark's "high" peaks, 188–198
    /// against 120–128 MiB: docs/benchmarks.md, thirty-third session).
    /// </para>
    /// </summary>
    public static TokenUsage EstimateUsage(ChatCompletionRequest request, ChatCompletionResponse? answer, int streamed, string model, int? countedPrompt)
    {
        var tokenizer = countedPrompt is null ? null : EncodingNamed(EncodingFor(model))?.IfLoaded(); // never waited for: ~4 characters a token while it loads
        var completion = 0;
        var read = false;
        foreach (var choice in answer?.Choices ?? [])
        {
            if (choice.Message is not { } message)
            {
                continue;
            }

            read = true;
            completion += Count(tokenizer, message.Content?.Text);
            foreach (var part in message.Content?.Parts ?? [])
            {
                completion += Count(tokenizer, part.Text);
            }

            foreach (var call in message.ToolCalls ?? [])
            {
                completion += 3 + Count(tokenizer, call.Function?.Name) + Count(tokenizer, call.Function?.Arguments);
            }
        }

        if (!read || (completion == 0 && streamed > 0))
        {
            completion = streamed;
        }

        var usage = TokenUsage.Of(countedPrompt ?? ApproximatePrompt(request), completion);
        usage.AdditionalProperties = new Dictionary<string, System.Text.Json.JsonElement> { ["estimated"] = Estimated };
        return usage;
    }

    private static readonly System.Text.Json.JsonElement Estimated = System.Text.Json.JsonDocument.Parse("true").RootElement;

    /// <summary>Two estimated usages as one (a hedged attempt's two legs, each of which read the prompt), marked estimated.</summary>
    public static TokenUsage Sum(TokenUsage a, TokenUsage b)
    {
        var usage = TokenUsage.Of(a.PromptTokens + b.PromptTokens, a.CompletionTokens + b.CompletionTokens);
        usage.AdditionalProperties = new Dictionary<string, System.Text.Json.JsonElement> { ["estimated"] = Estimated };
        return usage;
    }

    /// <summary>True when the usage is the gateway's estimate (<see cref="EstimateUsage"/>), not the upstream's count.</summary>
    public static bool IsEstimated(TokenUsage? usage) =>
        usage?.AdditionalProperties?.TryGetValue("estimated", out var flag) == true && flag.ValueKind == System.Text.Json.JsonValueKind.True;

    private static int Count(Tokenizer? tokenizer, string? text) =>
        string.IsNullOrEmpty(text) ? 0 : tokenizer is null ? Math.Max(1, text.Length / 4) : TokenCountCache.Shared.Count(tokenizer, text);

    /// <summary>Prompt tokens of a request for a model (the requested model name or the upstream one), with its tokenizer.</summary>
    public static int CountPrompt(ChatCompletionRequest request, string model) => CountPrompt(request, TokenizerFor(model));

    /// <summary>
    /// Prompt tokens as <see cref="CountPrompt(ChatCompletionRequest, string)"/> counts them once the model's tokenizer is
    /// loaded; until then at about four characters a token, its load started in the background (<see cref="Encoding.IfLoaded"/>).
    /// What token limits charge on admission's stage loop, which must not wait ~300 ms with every request behind it: the
    /// warm-up loads the configured models' tokenizers as the gateway starts, but a model a wildcard group takes
    /// (<c>openai/*</c>) is known only when asked for. The charge is corrected to the actual usage once answered.
    /// </summary>
    public static int CountPromptUnlessLoading(ChatCompletionRequest request, string model) =>
        CountPrompt(request, EncodingNamed(EncodingFor(model))?.IfLoaded());

    /// <summary>Prompt tokens at about four characters a token, whatever the model (no tokenizer loaded).</summary>
    public static int ApproximatePrompt(ChatCompletionRequest request) => CountPrompt(request, tokenizer: null);

    /// <summary>
    /// Texts' counts, remembered by content: an agent resends its system prompt, tools and history on every step
    /// (<see cref="TokenCountCache"/>).
    /// </summary>
    private static TokenCountCache Counts => TokenCountCache.Shared;

    /// <summary>Prompt tokens with <paramref name="tokenizer"/>, or at about four characters a token without one.</summary>
    private static int CountPrompt(ChatCompletionRequest request, Tokenizer? tokenizer)
    {
        if (request.Operation is { } operation)
        {
            return Providers.Operations.PromptTokens(operation, text => Count(tokenizer, text)); // the inputs, no chat framing
        }

        if (request.TextCompletion is { } completion)
        {
            return Providers.TextCompletions.PromptTokens(completion, text => Count(tokenizer, text)); // the prompts, no chat framing
        }

        if (tokenizer is null)
        {
            return TokenEstimate.Approximate(request);
        }

        var tokens = 3; // every reply is primed with <|start|>assistant<|message|>
        foreach (var m in request.Messages)
        {
            tokens += 3 + Counts.Count(tokenizer, m.Role);
            if (m.Name is { } name)
            {
                tokens += 1 + Counts.Count(tokenizer, name);
            }

            if (m.Content is { HasText: true } text)
            {
                tokens += Counts.Count(tokenizer, text);
            }
            else if (m.Content?.Parts is { } parts)
            {
                foreach (var p in parts)
                {
                    // Images are billed by tile, not text: 85 tokens is the low-detail price, the floor.
                    tokens += p.Text is { } t ? Counts.Count(tokenizer, t) : p.Type == "image_url" ? 85 : 0;
                }
            }

            foreach (var call in m.ToolCalls ?? [])
            {
                // (The arguments from what the request spelled when kept so: not made a string on every step.)
                tokens += 3 + (call.Function is { } function
                    ? Counts.Count(tokenizer, function.Name ?? string.Empty) + Counts.Count(tokenizer, function)
                    : 2 * Counts.Count(tokenizer, string.Empty));
            }
        }

        if (request.Tools is { Count: > 0 } tools)
        {
            foreach (var tool in tools)
            {
                tokens += 8 + Counts.Count(tokenizer, tool.Function?.Name ?? string.Empty)
                    + Counts.Count(tokenizer, tool.Function?.Description ?? string.Empty)
                    + (tool.Function?.Parameters is { } schema ? Counts.Count(tokenizer, schema) : 0);
            }
        }

        return tokens;
    }
}
