using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// First stage: applies the gateway-side rate limits, then gives each request an in-flight slot (or queues it,
/// fairly between tenants, for the next free one) and hands it on to the cache stage.
/// (The shutdown drain is started by <see cref="PipelineLifetime"/>, which stops before every stage.)
/// </summary>
internal sealed class AdmissionStage : PipelineStage
{
    private readonly AdmissionRateLimiter limiter;
    private readonly Metrics.GatewayMetrics metrics;

    public AdmissionStage(ChannelReader<WorkItem> input, GatewayPipeline pipeline, AdmissionRateLimiter limiter, Metrics.GatewayMetrics metrics, ILogger<AdmissionStage> logger)
        : base(input, pipeline, logger)
    {
        this.limiter = limiter;
        this.metrics = metrics;
        limiter.OnWaitOver = OnWaitOver;
        limiter.OnWaitStarted = metrics.OnRateLimitWait;
    }

    protected override string StageName => "admission";

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
                metrics.OnRateLimited();
                Pipeline.FailAndRetire(item, refusal!);
                break;
            case AdmissionDecision.Parked:
                // The limiter hands it back through OnWaitOver, in order, as permits refill.
                metrics.OnRateLimitWait();
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
            metrics.OnRateLimited();
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
