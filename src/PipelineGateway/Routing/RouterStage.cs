using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Routing;

/// <summary>
/// Third stage: picks a deployment of the request's model group — not one this request already tried,
/// unless every one was — and queues the request at that provider's worker pool. When the chosen pool's
/// queue is full it prefers another candidate with room, and only then waits (backpressure).
/// </summary>
internal sealed class RouterStage(GatewayPipeline pipeline, ILogger<RouterStage> logger)
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

        var candidates = Candidates(item);
        if (candidates.IsEmpty)
        {
            Pipeline.FailAndRetire(item, new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), "no deployment is available"));
            return ValueTask.CompletedTask;
        }

        var chosen = candidates[item.Group.Strategy.Select(candidates, new RoutingContext(item.Group, item.Request, item.AttemptCount))];
        if (chosen.Pool.QueueDepth >= chosen.Pool.QueueCapacity)
        {
            foreach (var other in candidates)
            {
                if (other.Pool.QueueDepth < other.Pool.QueueCapacity)
                {
                    chosen = other;
                    break;
                }
            }
        }

        item.Current = chosen;
        if (item.AttemptCount > 0)
        {
            Pipeline.Metrics.OnRetry(fallback: !item.HasTried(chosen));
        }

        var writer = chosen.Pool.Writer;
        return writer.TryWrite(item) ? ValueTask.CompletedTask : WaitForRoomAsync(writer, item);
    }

    private async ValueTask WaitForRoomAsync(ChannelWriter<WorkItem> writer, WorkItem item)
    {
        try
        {
            // The item's token fires on deadline, caller cancellation and shutdown.
            await writer.WriteAsync(item, item.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (item.Token.IsCancellationRequested)
        {
            Pipeline.FailAndRetire(item, item.CancellationError());
        }
    }

    private ReadOnlySpan<Deployment> Candidates(WorkItem item)
    {
        var all = item.Group.DeploymentArray;
        if (_scratch.Length < all.Length)
        {
            _scratch = new Deployment[all.Length];
        }

        var n = 0;
        foreach (var d in all)
        {
            if (!item.HasTried(d))
            {
                _scratch[n++] = d;
            }
        }

        // Every deployment already tried: the dead-letter stage has backed off; try them again.
        return n > 0 ? _scratch.AsSpan(0, n) : all;
    }
}
