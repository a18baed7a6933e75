using Microsoft.Extensions.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Dispatch;

/// <summary>Hosts every provider's worker pool: starts their workers and stops them after the drain.</summary>
internal sealed class DispatchStage(GatewayPipeline pipeline) : IHostedService, IDisposable
{
    private readonly CancellationTokenSource _stop = new();

    public Task StartAsync(CancellationToken cancellationToken)
    {
        foreach (var pool in pipeline.Pools.All)
        {
            pool.Start(pipeline, _stop.Token);
        }

        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(pipeline.Pools.All.Select(p => p.Completion))
            .WaitAsync(cancellationToken)
            .ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    public void Dispose() => _stop.Dispose();
}
