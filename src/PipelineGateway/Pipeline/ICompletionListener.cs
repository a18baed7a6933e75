namespace PipelineGateway.Pipeline;

/// <summary>
/// A folder's share of ending a request, so each keeps its own state and settles it itself: Caching answers the
/// requests that waited on this one, Cost turns the budget reservation into the billed cost, Admission turns the
/// token charge into the upstream usage, Metrics records the outcome. Called exactly once per request, in that
/// order, by whichever thread completed it (<see cref="GatewayPipeline"/> holds the list).
/// </summary>
internal interface ICompletionListener
{
    void OnCompleted(in Completion completion);
}

/// <summary>How a request ended, as every listener sees it.</summary>
internal readonly record struct Completion(WorkItem Item, ChatCompletionResponse? Response, Exception? Error, TimeSpan Latency)
{
    /// <summary>
    /// A stream that failed after its content reached the caller (the caller went away, its deadline passed, the upstream
    /// broke), or a whole request given up on while its upstream call was in flight: what the upstream used for it, billed
    /// (docs/metrics.md). Null for every other request.
    /// </summary>
    public ConsumedUpstream? Consumed { get; init; }

    /// <summary>
    /// True when this request made the upstream call its answer came from: the one rule of the accounting
    /// (docs/metrics.md): only a billed request is charged its cost and its tokens.
    /// </summary>
    public bool Billed => Error is null && Response?.Gateway is { Billed: true };

    /// <summary>The upstream usage of a billed answer (its stream's usage when the answer carried none), else null.</summary>
    public TokenUsage? BilledUsage => Billed ? Response!.Usage ?? Item.StreamUsage : Consumed?.TotalUsage;

    /// <summary>What a billed answer cost (or an interrupted stream or call consumed), else 0.</summary>
    public decimal BilledCost => Billed ? Response!.Gateway!.Cost : Consumed?.TotalCost ?? 0;
}

/// <summary>What an interrupted stream or call consumed upstream: the deployment it went to, its usage and their price.</summary>
internal sealed record ConsumedUpstream(Routing.Deployment Deployment, TokenUsage Usage, decimal Cost)
{
    /// <summary>A hedged attempt's second leg, in flight too when the request was given up on: its upstream read the prompt as well.</summary>
    public ConsumedUpstream? Hedge { get; init; }

    /// <summary>Both legs' usage (the one leg's when not hedged).</summary>
    public TokenUsage TotalUsage => Hedge is null ? Usage : Admission.TokenCounter.Sum(Usage, Hedge.Usage);

    /// <summary>Both legs' cost.</summary>
    public decimal TotalCost => Cost + (Hedge?.Cost ?? 0);
}
