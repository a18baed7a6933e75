using System.Threading.Channels;
using PipelineGateway.Dispatch;
using Microsoft.Extensions.Logging;
using PipelineGateway.Cost;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing.Health;

namespace PipelineGateway.Routing;

/// <summary>
/// Third stage: picks a deployment for each request (see <see cref="DeploymentSelector"/>); when its group has
/// none available it moves along the group's fallback chain, and when no group has one it applies
/// <c>Health:WhenAllUnhealthy</c>. The request is then offered to that deployment's provider queue, which takes it
/// if its expected wait fits the request's allowed wait; otherwise another deployment of the group with room takes
/// it, or it is refused at once (503 <c>provider_overloaded</c>, or 429 when the providers' own limits are why).
/// The router never waits.
/// </summary>
internal sealed class RouterStage(
    ChannelReader<WorkItem> input,
    ChannelWriter<WorkItem> self,
    GatewayPipeline pipeline,
    DeploymentSelector selector,
    BudgetTracker budgets,
    Metrics.GatewayMetrics metrics,
    Microsoft.Extensions.Options.IOptions<Hosting.GatewayOptions> options,
    ILogger<RouterStage> logger)
    : PipelineStage(input, pipeline, logger)
{
    private readonly TimeSpan _maxQueueWait = options.Value.Pipeline.MaxQueueWait;

    // The router is one loop, so one scratch buffer serves every decision without allocating.
    private Deployment[] _scratch = new Deployment[16];

    protected override string StageName => "router";

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        item.Routed = true;
        if (item.AttemptCount == 0 && item.BudgetReservation is null && item.SharedBudgetReservation is null && budgets.IsDistributed)
        {
            // The shared store answers after a round trip: the router goes on meanwhile, and the request comes
            // back through the router's channel once its reservation is made (that channel never fills).
            _ = ReserveSharedThenRouteAsync(item);
            return ValueTask.CompletedTask;
        }

        if (item.AttemptCount == 0 && item.BudgetReservation is null && item.SharedBudgetReservation is null && budgets.IsEnabled)
        {
            // Budgets are reserved here, after the cache: a cache hit costs nothing and is never refused.
            try
            {
                budgets.Reserve(item);
            }
            catch (BudgetExceededException ex)
            {
                metrics.OnBudgetExceeded();
                Pipeline.FailAndRetire(item, ex);
                return ValueTask.CompletedTask;
            }
        }

        // One clock read for the whole decision: health, the fallbacks and the allowed wait all see the same instant.
        var now = selector.Health.Now;
        var chosen = selector.Select(item, item.Group, ref _scratch, at: now);
        while (chosen is null && item.TryAdvanceFallback())
        {
            metrics.OnFallback();
            chosen = selector.Select(item, item.Group, ref _scratch, at: now);
        }

        if (chosen is null)
        {
            if (selector.Health.Options.WhenAllUnhealthy == AllUnhealthyBehavior.FailFast)
            {
                Pipeline.FailAndRetire(item, new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), "every deployment is unhealthy (circuit open or cooling down after a 429)"));
                return ValueTask.CompletedTask;
            }

            chosen = DeploymentSelector.Earliest(item, item.Group, now);
            if (chosen is null)
            {
                // Every deployment's key or model is being refused by its provider: nothing to try.
                Pipeline.FailAndRetire(item, new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), "every deployment's credentials or model are being rejected by its provider (see the deployments' health)", "deployment_unavailable"));
                return ValueTask.CompletedTask;
            }
        }

        Dispatch(item, chosen, now);
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Offers the request to the chosen deployment's queue, then to the group's other usable deployments; the first
    /// with room within the request's allowed wait takes it. None: refused at once with an honest Retry-After. Never
    /// waits, so no provider's backlog ever holds up the router (and with it every other model).
    /// </summary>
    private void Dispatch(WorkItem item, Deployment chosen, DateTimeOffset now)
    {
        // Unparked for room at a provider: if it lands anywhere else (or nowhere), that room goes to the next one parked there.
        var room = item.ResumedFor;
        item.ResumedFor = null;
        var landed = DispatchTo(item, chosen, now);
        if (room is not null && !ReferenceEquals(landed, room))
        {
            room.PassRoomOn();
        }
    }

    /// <summary>Returns the pool that took or parked the request (null: refused).</summary>
    private ProviderWorkerPool? DispatchTo(WorkItem item, Deployment chosen, DateTimeOffset now)
    {
        var maxWait = AllowedWait(item, now);
        var best = Offer(item, chosen, maxWait);
        if (best.Accepted)
        {
            return chosen.Pool;
        }

        chosen.State.OnNeutral(); // give back a half-open probe the request will not use
        foreach (var other in item.Group.DeploymentArray)
        {
            if (ReferenceEquals(other, chosen) || item.HasTried(other) || !selector.Health.TryAcquire(other, now))
            {
                continue;
            }

            var offer = Offer(item, other, maxWait);
            if (offer.Accepted)
            {
                return other.Pool;
            }

            other.State.OnNeutral();
            best = Better(best, offer);
        }

        if (item.Mode == SubmitMode.Wait && best.Full)
        {
            // A waiting caller whose deployments are full waits for room at the chosen one, holding no slot.
            Park(item, chosen);
            return chosen.Pool;
        }

        Refuse(item, best, maxWait);
        return null;
    }

    /// <summary>
    /// Parks a waiting caller's request at a full provider queue: its slot goes back (so a stuck provider never holds
    /// more than its queue and workers), and it comes back through the router when the queue has room.
    /// </summary>
    private void Park(WorkItem item, Deployment at)
    {
        var pool = at.Pool;
        Pipeline.ReleaseSlot(item);
        if (!pool.Park(item))
        {
            // Room again already (or stopping): take a slot and come round again.
            Pipeline.Resume(item, null);
            return;
        }

        metrics.OnParked();
        if (item.IsCompleted && item.WaitingIn is { } room && room.TryRemove(item))
        {
            Pipeline.Retire(item); // ended as it was parked
        }
    }

    private QueueOffer Offer(WorkItem item, Deployment deployment, TimeSpan maxWait)
    {
        // Counted in the deployment's load before the offer: an idle worker may take the request at once.
        item.Current = deployment;
        var retry = item.AttemptCount > 0;
        var fallback = retry && !item.HasTried(deployment); // read before the offer: a worker may run the attempt at once
        var offer = deployment.Pool.Offer(item, maxWait, out var pushedOut);
        if (!offer.Accepted)
        {
            item.ReleaseDeployment();
        }
        else if (retry)
        {
            metrics.OnRetry(fallback);
        }

        if (pushedOut is not null)
        {
            // A tenant holding far more of the queue gave way to this one: its newest request is refused — or, if its
            // caller waits (SubmitMode.Wait), routed again (it will wait past the queue's capacity, see ProviderQueue).
            var victimDeployment = pushedOut.Current;
            pushedOut.ReleaseDeployment();
            victimDeployment?.State.OnNeutral();
            if (pushedOut.Mode == SubmitMode.Wait)
            {
                Forward(pushedOut, self);
                return offer;
            }

            metrics.OnOverloaded();
            Pipeline.FailAndRetire(pushedOut, new ProviderOverloadedException(pushedOut.Request.Model, offer.RetryAfter > TimeSpan.Zero ? offer.RetryAfter : TimeSpan.FromSeconds(1), offer.ExpectedWait, pushedOut.SnapshotAttempts(),
                $"The queue of model '{pushedOut.Request.Model}' is full and other tenants' requests took its place (this tenant held the most of it); retry shortly."));
        }

        return offer;
    }

    /// <summary>How long the request may wait in a provider's queue: its remaining deadline, and for fail-fast callers <c>Pipeline:MaxQueueWait</c>.</summary>
    private TimeSpan AllowedWait(WorkItem item, DateTimeOffset now)
    {
        var remaining = item.Deadline - now;
        return item.Mode == SubmitMode.FailFast && _maxQueueWait < remaining ? _maxQueueWait : remaining;
    }

    private static QueueOffer Better(QueueOffer a, QueueOffer b) => b.RetryAfter < a.RetryAfter ? b : a;

    /// <summary>No deployment had room in time: 429 when the providers' own limits (a 429 pause, RPM) are why, else 503.</summary>
    private void Refuse(WorkItem item, QueueOffer offer, TimeSpan maxWait)
    {
        // Up to a quarter later, at random: callers refused in the same instant should not all come back in the same one.
        var retryAfter = (offer.RetryAfter > TimeSpan.Zero ? offer.RetryAfter : TimeSpan.FromSeconds(1)) * (1 + (Random.Shared.NextDouble() / 4));
        if (offer.RateLimited)
        {
            metrics.OnRateLimited();
            Pipeline.FailAndRetire(item, new RateLimitedException($"providers of '{item.Request.Model}'", retryAfter,
                $"Every deployment of model '{item.Request.Model}' is rate-limited by its provider (a 429's Retry-After or its requests-per-minute limit) for longer than the request may wait ({maxWait.TotalSeconds:F1} s); retry after {retryAfter.TotalSeconds:F1} s."));
            return;
        }

        metrics.OnOverloaded();
        Pipeline.FailAndRetire(item, new ProviderOverloadedException(item.Request.Model, retryAfter, offer.ExpectedWait, item.SnapshotAttempts()));
    }

    private async Task ReserveSharedThenRouteAsync(WorkItem item)
    {
        try
        {
            await budgets.ReserveSharedAsync(item).ConfigureAwait(false);
        }
        catch (BudgetExceededException ex)
        {
            metrics.OnBudgetExceeded();
            Pipeline.FailAndRetire(item, ex);
            return;
        }

        if (item.BudgetReservation is null && item.SharedBudgetReservation is null)
        {
            // Reserved nowhere (no budget applies to this key): mark it so the router does not ask again.
            item.BudgetReservation = BudgetTracker.NoReservation;
        }

        Forward(item, self);
    }
}
