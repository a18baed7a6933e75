using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Cost;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing.Health;

namespace PipelineGateway.Routing;

/// <summary>
/// Third stage: picks a deployment for each request (see <see cref="DeploymentSelector"/>); when its group has
/// none available it moves along the group's fallback chain, and when no group has one it applies
/// <c>Health:WhenAllUnhealthy</c>. The request is then queued at that provider's worker pool; a full queue
/// makes the router prefer another candidate with room, and only then wait (backpressure).
/// </summary>
internal sealed class RouterStage(GatewayPipeline pipeline, DeploymentSelector selector, ILogger<RouterStage> logger)
    : PipelineStage(pipeline, logger)
{
    // The router is one loop, so one scratch buffer serves every decision without allocating.
    private Deployment[] _scratch = new Deployment[16];

    protected override string StageName => "router";

    protected override ChannelReader<WorkItem> Input => Pipeline.Routing.Reader;

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
            return ValueTask.CompletedTask;
        }

        if (item.AttemptCount == 0 && item.BudgetReservation is null && item.SharedBudgetReservation is null && Pipeline.Budgets.IsDistributed)
        {
            // The shared store answers after a round trip: the router goes on meanwhile, and the request comes
            // back through the router's channel once its reservation is made (that channel never fills).
            _ = ReserveSharedThenRouteAsync(item);
            return ValueTask.CompletedTask;
        }

        if (item.AttemptCount == 0 && item.BudgetReservation is null && item.SharedBudgetReservation is null && Pipeline.Budgets.IsEnabled)
        {
            // Budgets are reserved here, after the cache: a cache hit costs nothing and is never refused.
            try
            {
                Pipeline.Budgets.Reserve(item);
            }
            catch (BudgetExceededException ex)
            {
                Pipeline.Metrics.OnBudgetExceeded();
                Pipeline.FailAndRetire(item, ex);
                return ValueTask.CompletedTask;
            }
        }

        var chosen = selector.Select(item, item.Group, ref _scratch);
        while (chosen is null && item.TryAdvanceFallback())
        {
            Pipeline.Metrics.OnFallback();
            chosen = selector.Select(item, item.Group, ref _scratch);
        }

        if (chosen is null)
        {
            if (selector.Health.Options.WhenAllUnhealthy == AllUnhealthyBehavior.FailFast)
            {
                Pipeline.FailAndRetire(item, new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), "every deployment is unhealthy (circuit open or cooling down after a 429)"));
                return ValueTask.CompletedTask;
            }

            chosen = DeploymentSelector.Earliest(item, item.Group)!;
        }

        chosen = PreferRoom(chosen, item);
        item.Current = chosen;
        if (item.AttemptCount > 0)
        {
            Pipeline.Metrics.OnRetry(fallback: !item.HasTried(chosen));
        }

        var writer = chosen.Pool.Writer;
        return writer.TryWrite(item) ? ValueTask.CompletedTask : WaitForRoomAsync(writer, item, chosen);
    }

    private async Task ReserveSharedThenRouteAsync(WorkItem item)
    {
        try
        {
            await Pipeline.Budgets.ReserveSharedAsync(item).ConfigureAwait(false);
        }
        catch (BudgetExceededException ex)
        {
            Pipeline.Metrics.OnBudgetExceeded();
            Pipeline.FailAndRetire(item, ex);
            return;
        }

        if (item.BudgetReservation is null && item.SharedBudgetReservation is null)
        {
            // Reserved nowhere (no budget applies to this key): mark it so the router does not ask again.
            item.BudgetReservation = BudgetTracker.NoReservation;
        }

        if (!Pipeline.Routing.Writer.TryWrite(item))
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    /// <summary>When the chosen provider's queue is full, another healthy candidate with room goes first.</summary>
    private Deployment PreferRoom(Deployment chosen, WorkItem item)
    {
        if (chosen.Pool.QueueDepth < chosen.Pool.QueueCapacity)
        {
            return chosen;
        }

        var now = selector.Health.Now;
        foreach (var other in item.Group.DeploymentArray)
        {
            if (!ReferenceEquals(other, chosen) && !item.HasTried(other) && other.Pool.QueueDepth < other.Pool.QueueCapacity && other.State.Circuit == CircuitState.Closed && selector.Health.IsSelectable(other, now))
            {
                return other;
            }
        }

        return chosen;
    }

    private async ValueTask WaitForRoomAsync(ChannelWriter<WorkItem> writer, WorkItem item, Deployment chosen)
    {
        try
        {
            // The item's token fires on deadline, caller cancellation and shutdown.
            await writer.WriteAsync(item, item.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (item.Token.IsCancellationRequested)
        {
            item.ReleaseDeployment();
            chosen.State.OnNeutral();
            Pipeline.FailAndRetire(item, item.CancellationError());
        }
    }
}
