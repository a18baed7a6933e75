using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// First stage: takes an in-flight slot for each submitted request (waiting when <c>MaxInFlight</c>
/// requests are inside: backpressure), applies the gateway-side rate limits and hands the request on.
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
        if (item.IsCompleted)
        {
            // Cancelled or timed out while queued: it never took a slot.
            Pipeline.Retire(item);
            return ValueTask.CompletedTask;
        }

        if (Pipeline.IsFailingRemaining)
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway shut down before the request was admitted."));
            return ValueTask.CompletedTask;
        }

        // Rate limits come before the in-flight slot: a request waiting for a permit holds no slot.
        switch (limiter.TryAdmit(item, out var refusal))
        {
            case AdmissionDecision.Refused:
                Pipeline.Metrics.OnRateLimited();
                Pipeline.FailAndRetire(item, refusal!);
                return ValueTask.CompletedTask;
            case AdmissionDecision.Parked:
                // The limiter hands it back through OnWaitOver, in order, as permits refill.
                Pipeline.Metrics.OnRateLimitWait();
                return ValueTask.CompletedTask;
            case AdmissionDecision.Pending:
                // A distributed store decides; the answer comes back through OnWaitOver.
                return ValueTask.CompletedTask;
            default:
                return ForwardAsync(item, stopping);
        }
    }

    /// <summary>Takes an in-flight slot (waiting when MaxInFlight are inside) and hands the request on.</summary>
    private async ValueTask ForwardAsync(WorkItem item, CancellationToken stopping)
    {
        var slot = await Pipeline.AcquireSlotAsync(stopping).ConfigureAwait(false);
        Pipeline.Occupy(item, slot);
        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
            return;
        }

        var next = Pipeline.CacheLookup.Writer;
        if (!next.TryWrite(item))
        {
            await next.WriteAsync(item, stopping).ConfigureAwait(false);
        }
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

        _ = ContinueAsync(item);
    }

    private async Task ContinueAsync(WorkItem item)
    {
        try
        {
            await ForwardAsync(item, Stopping).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Pipeline.FailAndRetire(item, ex is OperationCanceledException
                ? new GatewayUnavailableException("The gateway shut down before the request was admitted.")
                : new GatewayUnavailableException("The gateway's admission stage failed while handling the request."));
        }
    }
}
