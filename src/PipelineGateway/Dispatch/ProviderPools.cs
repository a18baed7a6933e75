using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Dispatch;

/// <summary>
/// What a provider's workers hand requests on to and report to: the pipeline's lifecycle (retire, fail, resume), the
/// dead-letter channel (their next stage), where hedges go, metrics, prices, the cache an answer fills and the attempts' trace spans.
/// </summary>
internal sealed record WorkerServices(
    GatewayPipeline Lifecycle,
    System.Threading.Channels.ChannelWriter<WorkItem> DeadLetter,
    HedgeRouter Hedges,
    Metrics.GatewayMetrics Metrics,
    Cost.PricingTable Pricing,
    Caching.ResponseCache Cache,
    Tracing.GatewayTracing Tracing);

/// <summary>Room reserved at a provider for a hedge: a concurrency permit held, and the rate limits' charge.</summary>
internal readonly record struct ProviderReservation(ProviderRateLimiter.Charge? Charge);

/// <summary>Every provider's worker pool, by name; disposes the providers the gateway created (their connection pools).</summary>
internal sealed class ProviderPools(IReadOnlyList<ProviderWorkerPool> pools, IReadOnlyList<IDisposable>? owned = null) : IDisposable
{
    private readonly Dictionary<string, ProviderWorkerPool> _byName = pools.ToDictionary(p => p.Name, StringComparer.Ordinal);

    public IReadOnlyList<ProviderWorkerPool> All { get; } = pools;

    public bool TryGet(string name, out ProviderWorkerPool pool) => _byName.TryGetValue(name, out pool!);

    public void Dispose()
    {
        foreach (var provider in owned ?? [])
        {
            provider.Dispose();
        }
    }
}
