using Microsoft.Extensions.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Server;

/// <summary>
/// Starts the pipeline's drain when the host begins to stop, before Kestrel stops. Kestrel's own stop waits
/// for open requests up to the host's shutdown timeout and then drops their connections; draining first means
/// in-flight requests and streams finish within the gateway's grace period (<c>Pipeline:DrainTimeout</c>) and
/// the rest are answered with an explicit 503, while new requests get 503 and <c>/readyz</c> says not ready.
/// </summary>
internal sealed class DrainOnStopping(GatewayPipeline pipeline) : IHostedLifecycleService
{
    public Task StoppingAsync(CancellationToken cancellationToken) => pipeline.DrainAsync(cancellationToken);

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
