using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// First stage: applies the gateway-side rate limits, then gives each request an in-flight slot (or queues it,
/// fairly between tenants, for the next free one) and hands it on to the cache stage.
/// Its <see cref="StopAsync"/> drives the shutdown drain, since it is the first hosted stage to stop.
/// </summary>
internal sealed class AdmissionStage : PipelineStage
{
    private readonly AdmissionRateLimiter limiter;

    public AdmissionStage(GatewayPipeline pipeline, AdmissionRateLimiter limiter, ILogger<AdmissionStage> logger)
        : base(pipeline, logger)
    {
        this.limiter = limiter;
        limiter.OnWaitOver = OnWaitOver;
        limiter.OnWaitStarted = pipeline.Metrics.OnRateLimitWait;
    }

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

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (Pipeline.IsFailingRemaining)
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway shut down before the request was admitted."));
            return ValueTask.CompletedTask;
        }

        // Rate limits come before the in-flight slot: a request waiting for a permit holds no slot. Nothing here
        // waits: a request that must wait is parked (rate limit) or queued (slot) and comes back by callback, so one
        // tenant's waiting never holds up another's.
        switch (limiter.TryAdmit(item, out var refusal))
        {
            case AdmissionDecision.Refused:
                Pipeline.Metrics.OnRateLimited();
                Pipeline.FailAndRetire(item, refusal!);
                break;
            case AdmissionDecision.Parked:
                // The limiter hands it back through OnWaitOver, in order, as permits refill.
                Pipeline.Metrics.OnRateLimitWait();
                break;
            case AdmissionDecision.Pending:
                // A distributed store decides; the answer comes back through OnWaitOver.
                break;
            default:
                Pipeline.Admit(item);
                break;
        }

        return ValueTask.CompletedTask;
    }

    /// <summary>A waiting request's wait is over: admitted (continue), refused, or already answered.</summary>
    private void OnWaitOver(WorkItem item, RateLimitedException? refusal)
    {
        if (refusal is not null)
        {
            Pipeline.Metrics.OnRateLimited();
            Pipeline.FailAndRetire(item, refusal);
            return;
        }

        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
            return;
        }

        Pipeline.Admit(item);
    }
}
