using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// First stage: takes an in-flight slot for each submitted request (waiting when <c>MaxInFlight</c>
/// requests are inside: backpressure), applies the gateway-side rate limits and hands the request on.
/// Its <see cref="StopAsync"/> drives the shutdown drain, since it is the first hosted stage to stop.
/// </summary>
internal sealed class AdmissionStage(GatewayPipeline pipeline, AdmissionRateLimiter limiter, ILogger<AdmissionStage> logger)
    : PipelineStage(pipeline, logger)
{
    protected override string StageName => "admission";

    protected override ChannelReader<WorkItem> Input => Pipeline.Admission.Reader;

    public override Task StartAsync(CancellationToken cancellationToken)
    {
        Pipeline.MarkStarted();
        return base.StartAsync(cancellationToken);
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await Pipeline.DrainAsync(cancellationToken).ConfigureAwait(false);
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
    }

    protected override async ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (item.IsCompleted)
        {
            // Cancelled or timed out while queued: it never took a slot.
            Pipeline.Retire(item);
            return;
        }

        if (Pipeline.IsFailingRemaining)
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway shut down before the request was admitted."));
            return;
        }

        var slot = await Pipeline.AcquireSlotAsync(stopping).ConfigureAwait(false);
        Pipeline.Occupy(item, slot);
        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
            return;
        }

        var refusal = limiter.TryAdmit(item);
        if (refusal is not null)
        {
            Pipeline.Metrics.OnRateLimited();
            Pipeline.FailAndRetire(item, refusal);
            return;
        }

        var next = Pipeline.CacheLookup.Writer;
        if (!next.TryWrite(item))
        {
            await next.WriteAsync(item, stopping).ConfigureAwait(false);
        }
    }
}
