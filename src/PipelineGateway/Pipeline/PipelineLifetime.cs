using Microsoft.Extensions.Hosting;

namespace PipelineGateway.Pipeline;

/// <summary>
/// Registered after every stage: it starts last, so the gateway accepts requests only once every stage runs, and it
/// stops first, draining the pipeline while every stage still runs (hosted services stop in reverse order).
/// </summary>
internal sealed class PipelineLifetime(GatewayPipeline pipeline) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        pipeline.MarkStarted();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => pipeline.DrainAsync(cancellationToken);
}
