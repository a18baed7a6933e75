using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Routing;

/// <summary>A model name callers ask for, mapped to the deployments that can serve it.</summary>
public sealed class ModelGroupOptions
{
    /// <summary>
    /// The name callers ask for. A name ending in <c>*</c> is a wildcard (<c>openai/*</c>, or <c>*</c> alone): every name
    /// no other group has that starts with the rest is served by its deployments, a <c>*</c> in their <c>Model</c>
    /// replaced by what the caller's name has there (a deployment without a <c>Model</c> sends just that part).
    /// </summary>
    [Required(AllowEmptyStrings = false)]
    public string Name { get; set; } = string.Empty;

    /// <summary>
    /// A wildcard's bound: the most distinct names it serves at once (each is a group of its own, with its health,
    /// latency and metrics). A name no upstream has answered yet gives its place up to a new one. Unset: 1,000.
    /// Only for a wildcard group.
    /// </summary>
    [Range(1, 100_000)]
    public int? MaxModels { get; set; }

    /// <summary>
    /// A wildcard's <c>/v1/models</c>: besides the names an upstream answered, every name its providers' own model lists
    /// make (<c>GET {base}/models</c> of OpenAI, Anthropic or an OpenAI-compatible server; read at most every five
    /// minutes) — what a chat UI discovering models through the gateway needs. Only for a wildcard group.
    /// </summary>
    public bool ListUpstreamModels { get; set; }

    internal const int DefaultMaxModels = 1_000;

    /// <summary>A wildcard group's name ends in <c>*</c>.</summary>
    internal static bool IsWildcard(string? name) => name is { Length: > 0 } && name[^1] == '*';

    /// <summary>Other names that resolve to this group.</summary>
    public List<string> Aliases { get; set; } = [];

    /// <summary>
    /// The routing strategy by name: RoundRobin, LowestLatency, CostOptimized, Priority, Weighted, LeastBusy,
    /// or the name of one registered with <c>AddRoutingStrategy</c>.
    /// </summary>
    public string Strategy { get; set; } = RoutingStrategyNames.RoundRobin;

    public List<DeploymentOptions> Deployments { get; set; } = [];

    /// <summary>Groups to try, in order, once every deployment of this one has failed (for example gpt-4o → claude-sonnet).</summary>
    public List<string> Fallbacks { get; set; } = [];

    /// <summary>Groups with larger context windows, tried in order only when a deployment reports a context-length error.</summary>
    public List<string> ContextWindowFallbacks { get; set; } = [];

    /// <summary>
    /// Completion tokens expected when a request of this model sets no max_tokens: what CostOptimized ranks by, what
    /// admission charges the token limits and what the budget reserves. Unset: <c>Admission:ExpectedCompletionTokens</c>.
    /// </summary>
    [Range(0, 10_000_000)]
    public int? ExpectedCompletionTokens { get; set; }

    /// <summary>Send a second attempt to another deployment when the first is slow (non-streamed requests).</summary>
    public HedgingOptions? Hedging { get; set; }
}

/// <summary>One provider serving a model group under an upstream model name.</summary>
public sealed class DeploymentOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Provider { get; set; } = string.Empty;

    /// <summary>
    /// The upstream model name; defaults to the group name. In a wildcard group, a <c>*</c> here is replaced by what
    /// the caller's name has in the place of the group's <c>*</c> (unset: that part alone).
    /// </summary>
    public string? Model { get; set; }

    /// <summary>Lower is preferred by the Priority strategy.</summary>
    public int Priority { get; set; }

    /// <summary>Share of traffic under the Weighted strategy.</summary>
    [Range(0.0, 1_000_000.0)]
    public double Weight { get; set; } = 1;

    /// <summary>USD per million prompt tokens (for CostOptimized and cost tracking); falls back to the pricing table.</summary>
    [Range(0.0, 1_000_000.0)]
    public decimal? InputPricePerMillion { get; set; }

    /// <summary>USD per million completion tokens.</summary>
    [Range(0.0, 1_000_000.0)]
    public decimal? OutputPricePerMillion { get; set; }
}

/// <summary>Hedging: after <see cref="Delay"/> without an answer, race a second deployment; the first success wins.</summary>
public sealed class HedgingOptions
{
    public TimeSpan Delay { get; set; } = TimeSpan.FromSeconds(2);
}
