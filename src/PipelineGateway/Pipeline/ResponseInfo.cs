using PipelineGateway.Routing;

namespace PipelineGateway.Pipeline;

/// <summary>
/// Builds what every answer says about how it was served (<see cref="GatewayResponseInfo"/>), in one place: for an
/// answer an upstream gave (priced by <see cref="Cost.PricingTable"/>, the same price routing ranks by) and for one
/// served from a stored answer (a cache hit or a coalesced request: charged nothing, the avoided cost noted).
/// </summary>
internal static class ResponseInfo
{
    /// <summary>
    /// An upstream's answer (or a stream's opening, <paramref name="usage"/> null: its cost is not known yet).
    /// <paramref name="now"/>: a timestamp the caller just read (0: read one).
    /// </summary>
    public static GatewayResponseInfo Answered(WorkItem item, Deployment deployment, TokenUsage? usage, Cost.PricingTable pricing, TimeProvider time, IReadOnlyList<GatewayAttempt>? attempts = null, long now = 0) => new()
    {
        Provider = deployment.ProviderName,
        ProviderModel = deployment.Model,
        Attempts = attempts ?? item.FinalAttempts,
        Latency = time.GetElapsedTime(item.StartTimestamp, time.OrNow(now)),
        RequestSequence = item.Sequence,
        Cost = usage is null ? 0 : pricing.Cost(deployment, usage),
    };

    /// <summary>An answer served from <paramref name="stored"/>: a hit (<paramref name="cached"/>) or a follower of the call that produced it.</summary>
    public static GatewayResponseInfo Served(WorkItem item, Caching.StoredAnswer stored, bool cached, TimeProvider time) => new()
    {
        Provider = stored.Provider,
        ProviderModel = stored.ProviderModel,
        Attempts = [],
        Cached = cached,
        Coalesced = !cached,
        Cost = 0,
        CostSaved = stored.Cost,
        Latency = time.GetElapsedTime(item.StartTimestamp),
        RequestSequence = item.Sequence,
    };
}
