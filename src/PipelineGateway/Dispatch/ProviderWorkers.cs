using Microsoft.Extensions.Hosting;

namespace PipelineGateway.Dispatch;

/// <summary>
/// Hosts every provider's worker pool: starts their workers and stops them after the drain. Not a
/// <see cref="Pipeline.PipelineStage"/>: there is no one loop here; each pool's workers take from that provider's own
/// queue (<see cref="ProviderQueue"/>), which the router fills, and hand failed attempts to the dead-letter channel.
/// </summary>
internal sealed class ProviderWorkers(ProviderPools pools, WorkerServices services) : IHostedService, IDisposable
{
    private readonly CancellationTokenSource _stop = new();

    public Task StartAsync(CancellationToken cancellationToken)
    {
        foreach (var pool in pools.All)
        {
            pool.Start(services, _stop.Token);
        }

        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(pools.All.Select(p => p.Completion))
            .WaitAsync(cancellationToken)
            .ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    public void Dispose() => _stop.Dispose();
}
