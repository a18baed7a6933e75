using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Routing;

namespace PipelineGateway.Cost;

/// <summary>USD per million tokens for one model.</summary>
public sealed class ModelPrice
{
    public decimal InputPerMillion { get; set; }

    public decimal OutputPerMillion { get; set; }

    /// <summary>Price of prompt tokens served from the provider's prompt cache, when it differs.</summary>
    public decimal? CachedInputPerMillion { get; set; }

    /// <summary>
    /// Price of prompt tokens written to the provider's prompt cache (Anthropic's cache writes: 1.25× the input price for
    /// the 5-minute cache), when it differs from <see cref="InputPerMillion"/>.
    /// </summary>
    public decimal? CacheWriteInputPerMillion { get; set; }

    /// <summary>
    /// USD per 1,000 web searches a model's server tool runs (Anthropic's <c>web_search</c>: $10 per 1,000, on top of the
    /// tokens), billed from the usage's <c>server_tool_use.web_search_requests</c>. Null: searches are not priced.
    /// </summary>
    public decimal? WebSearchPerThousand { get; set; }

    /// <summary>
    /// USD per standard 1024x1024 image an image model makes (<c>/v1/images/generations</c>, <c>/edits</c>; DALL·E's are
    /// priced per image), each image weighed by its size and quality as OpenAI prices them (<c>Images.Weight</c>: ×2 an HD
    /// or wide one, ×3 an HD wide one, less for DALL·E 2's smaller squares), on top of the tokens when the model counts
    /// them (gpt-image-1). Null: images are not priced by the image.
    /// </summary>
    public decimal? PerImage { get; set; }

    /// <summary>
    /// USD per minute of audio a speech-to-text model transcribes (<c>/v1/audio/transcriptions</c>, <c>translations</c>;
    /// whisper-1: $0.006), billed from the answer's seconds (<c>usage.seconds</c>, or verbose_json's <c>duration</c>) on top
    /// of its tokens when it counts them (gpt-4o-transcribe). Null: audio is not priced by the minute.
    /// </summary>
    public decimal? PerAudioMinute { get; set; }
}

/// <summary>
/// Prices by upstream model name: the deployment's own prices first, then <c>Gateway:Pricing</c>, then the
/// defaults shipped here (public list prices of common OpenAI and Anthropic models; override them in
/// configuration when they change). A dated or suffixed name matches its longest known prefix
/// (<c>gpt-4o-mini-2024-07-18</c> → <c>gpt-4o-mini</c>). Money is <see cref="decimal"/>.
/// </summary>
internal sealed partial class PricingTable
{
    /// <summary>Shipped defaults, USD per million tokens (input, output).</summary>
    public static IReadOnlyDictionary<string, ModelPrice> Defaults { get; } = new Dictionary<string, ModelPrice>(StringComparer.OrdinalIgnoreCase)
    {
        ["gpt-5"] = new() { InputPerMillion = 1.25m, OutputPerMillion = 10.00m, CachedInputPerMillion = 0.125m },
        ["gpt-5-mini"] = new() { InputPerMillion = 0.25m, OutputPerMillion = 2.00m, CachedInputPerMillion = 0.025m },
        ["gpt-5-nano"] = new() { InputPerMillion = 0.05m, OutputPerMillion = 0.40m, CachedInputPerMillion = 0.005m },
        ["gpt-4o"] = new() { InputPerMillion = 2.50m, OutputPerMillion = 10.00m, CachedInputPerMillion = 1.25m },
        ["gpt-4o-mini"] = new() { InputPerMillion = 0.15m, OutputPerMillion = 0.60m, CachedInputPerMillion = 0.075m },
        ["gpt-4.1"] = new() { InputPerMillion = 2.00m, OutputPerMillion = 8.00m, CachedInputPerMillion = 0.50m },
        ["gpt-4.1-mini"] = new() { InputPerMillion = 0.40m, OutputPerMillion = 1.60m, CachedInputPerMillion = 0.10m },
        ["gpt-4.1-nano"] = new() { InputPerMillion = 0.10m, OutputPerMillion = 0.40m, CachedInputPerMillion = 0.025m },
        ["gpt-4-turbo"] = new() { InputPerMillion = 10.00m, OutputPerMillion = 30.00m },
        ["gpt-3.5-turbo"] = new() { InputPerMillion = 0.50m, OutputPerMillion = 1.50m },
        ["o1"] = new() { InputPerMillion = 15.00m, OutputPerMillion = 60.00m, CachedInputPerMillion = 7.50m },
        ["o1-mini"] = new() { InputPerMillion = 1.10m, OutputPerMillion = 4.40m, CachedInputPerMillion = 0.55m },
        ["o3"] = new() { InputPerMillion = 2.00m, OutputPerMillion = 8.00m, CachedInputPerMillion = 0.50m },
        ["o3-mini"] = new() { InputPerMillion = 1.10m, OutputPerMillion = 4.40m, CachedInputPerMillion = 0.55m },
        ["o4-mini"] = new() { InputPerMillion = 1.10m, OutputPerMillion = 4.40m, CachedInputPerMillion = 0.275m },
        // Embeddings: input only.
        ["text-embedding-3-small"] = new() { InputPerMillion = 0.02m, OutputPerMillion = 0m },
        ["text-embedding-3-large"] = new() { InputPerMillion = 0.13m, OutputPerMillion = 0m },
        ["text-embedding-ada-002"] = new() { InputPerMillion = 0.10m, OutputPerMillion = 0m },
        // Images: DALL·E by the image (standard quality, 1024x1024), gpt-image-1 by the token (text in, image out).
        ["dall-e-3"] = new() { InputPerMillion = 0m, OutputPerMillion = 0m, PerImage = 0.04m },
        ["dall-e-2"] = new() { InputPerMillion = 0m, OutputPerMillion = 0m, PerImage = 0.02m },
        ["gpt-image-1"] = new() { InputPerMillion = 5.00m, OutputPerMillion = 40.00m },
        ["gpt-image-1-mini"] = new() { InputPerMillion = 2.00m, OutputPerMillion = 8.00m },
        // Speech: per character of input (a speech request's prompt count is its characters). gpt-4o-mini-tts is billed by
        // text and audio tokens the speech API does not report: OpenAI's estimate of $0.015 a minute, ~1,000 characters.
        ["tts-1"] = new() { InputPerMillion = 15.00m, OutputPerMillion = 0m },
        ["tts-1-hd"] = new() { InputPerMillion = 30.00m, OutputPerMillion = 0m },
        ["gpt-4o-mini-tts"] = new() { InputPerMillion = 15.00m, OutputPerMillion = 0m },
        // Speech to text: whisper by the minute of audio, gpt-4o-transcribe by the token (audio in, text out).
        ["whisper-1"] = new() { InputPerMillion = 0m, OutputPerMillion = 0m, PerAudioMinute = 0.006m },
        ["gpt-4o-transcribe"] = new() { InputPerMillion = 6.00m, OutputPerMillion = 10.00m },
        ["gpt-4o-mini-transcribe"] = new() { InputPerMillion = 3.00m, OutputPerMillion = 5.00m },
        // Moderations: free.
        ["omni-moderation"] = new() { InputPerMillion = 0m, OutputPerMillion = 0m },
        ["text-moderation"] = new() { InputPerMillion = 0m, OutputPerMillion = 0m },
        ["claude-3-5-haiku"] = new() { InputPerMillion = 0.80m, OutputPerMillion = 4.00m, CachedInputPerMillion = 0.08m, CacheWriteInputPerMillion = 1.00m, WebSearchPerThousand = 10.00m },
        ["claude-3-5-sonnet"] = new() { InputPerMillion = 3.00m, OutputPerMillion = 15.00m, CachedInputPerMillion = 0.30m, CacheWriteInputPerMillion = 3.75m, WebSearchPerThousand = 10.00m },
        ["claude-3-7-sonnet"] = new() { InputPerMillion = 3.00m, OutputPerMillion = 15.00m, CachedInputPerMillion = 0.30m, CacheWriteInputPerMillion = 3.75m, WebSearchPerThousand = 10.00m },
        ["claude-sonnet-4"] = new() { InputPerMillion = 3.00m, OutputPerMillion = 15.00m, CachedInputPerMillion = 0.30m, CacheWriteInputPerMillion = 3.75m, WebSearchPerThousand = 10.00m },
        ["claude-opus-4-5"] = new() { InputPerMillion = 5.00m, OutputPerMillion = 25.00m, CachedInputPerMillion = 0.50m, CacheWriteInputPerMillion = 6.25m, WebSearchPerThousand = 10.00m },
        ["claude-opus-4"] = new() { InputPerMillion = 15.00m, OutputPerMillion = 75.00m, CachedInputPerMillion = 1.50m, CacheWriteInputPerMillion = 18.75m, WebSearchPerThousand = 10.00m },
        ["claude-haiku-4"] = new() { InputPerMillion = 1.00m, OutputPerMillion = 5.00m, CachedInputPerMillion = 0.10m, CacheWriteInputPerMillion = 1.25m, WebSearchPerThousand = 10.00m },
    };

    private readonly Dictionary<string, ModelPrice> _prices;

    public PricingTable(IOptions<GatewayOptions> options)
        : this(options.Value.Pricing)
    {
    }

    public PricingTable(IReadOnlyDictionary<string, ModelPrice>? overrides)
    {
        _prices = new Dictionary<string, ModelPrice>(Defaults, StringComparer.OrdinalIgnoreCase);
        foreach (var (model, price) in overrides ?? new Dictionary<string, ModelPrice>())
        {
            _prices[model] = price;
        }
    }

    /// <summary>The price of a model, by exact name or longest known prefix.</summary>
    public ModelPrice? Find(string model)
    {
        if (_prices.TryGetValue(model, out var exact))
        {
            return exact;
        }

        ModelPrice? best = null;
        var bestLength = 0;
        foreach (var (name, price) in _prices)
        {
            if (name.Length > bestLength && model.StartsWith(name, StringComparison.OrdinalIgnoreCase))
            {
                best = price;
                bestLength = name.Length;
            }
        }

        return best;
    }

    /// <summary>
    /// The price a deployment is ranked and billed by: its own prices when either is set (the other counts as 0),
    /// else the table's (configured, then shipped defaults), else null (unpriced: ranked last by CostOptimized).
    /// </summary>
    public static ModelPrice? Resolve(string model, decimal? inputPerMillion, decimal? outputPerMillion, PricingTable? table) =>
        inputPerMillion is not null || outputPerMillion is not null
            ? new ModelPrice { InputPerMillion = inputPerMillion ?? 0, OutputPerMillion = outputPerMillion ?? 0 }
            : (table ?? DefaultsOnly).Find(model);

    private static readonly PricingTable DefaultsOnly = new((IReadOnlyDictionary<string, ModelPrice>?)null);

    /// <summary>USD for a usage on a deployment (0 when the model has no known price): the same price CostOptimized ranks by.</summary>
    public decimal Cost(Deployment deployment, TokenUsage usage)
    {
        // Resolved the way the deployment's own Price was (with the gateway's table), so ranking and billing agree.
        if (Resolve(deployment.Model, deployment.InputPricePerMillion, deployment.OutputPricePerMillion, this) is not { } price)
        {
            return 0;
        }

        var cached = Math.Min(PromptCacheTokens.ReadOf(usage), usage.PromptTokens);
        var written = Math.Min(PromptCacheTokens.WrittenOf(usage), usage.PromptTokens - cached);
        var fresh = Math.Max(0, usage.PromptTokens - cached - written);
        return ((fresh * price.InputPerMillion)
            + (cached * (price.CachedInputPerMillion ?? price.InputPerMillion))
            + (written * (price.CacheWriteInputPerMillion ?? price.InputPerMillion))
            + (usage.CompletionTokens * price.OutputPerMillion)) / 1_000_000m
            + (usage.AdditionalProperties is not null && ServerToolUse.WebSearches(usage) is > 0 and var searches
                // A search's price does not depend on the token prices a deployment may set: else the table's.
                ? searches * (price.WebSearchPerThousand ?? Find(deployment.Model)?.WebSearchPerThousand ?? 0) / 1_000m
                : 0)
            + (usage.AdditionalProperties is not null && Providers.Images.Generated(usage) is > 0 and var images
                ? images * (price.PerImage ?? Find(deployment.Model)?.PerImage ?? 0) // likewise
                : 0)
            + (usage.AdditionalProperties is not null && Providers.Transcriptions.Seconds(usage) is > 0 and var seconds
                ? (decimal)seconds / 60m * (price.PerAudioMinute ?? Find(deployment.Model)?.PerAudioMinute ?? 0) // likewise
                : 0);
    }

    /// <summary>
    /// Says which deployments have no price anywhere (their answers count as $0 in cost metrics, the request log and
    /// budgets): a warning when budgets are configured — a budget that never sees their spending is not a limit — and
    /// information otherwise (a local model may well be free).
    /// </summary>
    public static void ReportUnpriced(IEnumerable<Deployment> deployments, bool budgets, Microsoft.Extensions.Logging.ILogger logger)
    {
        foreach (var d in deployments)
        {
            if (!d.IsPriced)
            {
                if (budgets)
                {
                    LogUnpricedUnderBudget(logger, d.Id, d.Model);
                }
                else
                {
                    LogUnpriced(logger, d.Id, d.Model);
                }
            }
        }
    }

    [Microsoft.Extensions.Logging.LoggerMessage(EventId = 90, Level = Microsoft.Extensions.Logging.LogLevel.Warning, Message = "Deployment {Deployment}: no price is known for model '{Model}', so its answers count as $0 against the configured budgets and in cost metrics. Set the deployment's InputPricePerMillion / OutputPricePerMillion, or Gateway:Pricing.")]
    private static partial void LogUnpricedUnderBudget(Microsoft.Extensions.Logging.ILogger logger, string deployment, string model);

    [Microsoft.Extensions.Logging.LoggerMessage(EventId = 91, Level = Microsoft.Extensions.Logging.LogLevel.Information, Message = "Deployment {Deployment}: no price is known for model '{Model}'; its answers count as $0 in cost metrics (set a price to track its spending).")]
    private static partial void LogUnpriced(Microsoft.Extensions.Logging.ILogger logger, string deployment, string model);
}
