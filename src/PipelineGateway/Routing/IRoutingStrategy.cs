namespace PipelineGateway.Routing;

/// <summary>
/// Picks one deployment among the candidates the router offers (healthy, not yet tried by this request).
/// Strategies are registered in DI and looked up by <see cref="Name"/> once at start; an unknown name in
/// configuration fails validation.
/// </summary>
public interface IRoutingStrategy
{
    string Name { get; }

    /// <summary>Returns the index into <paramref name="candidates"/> of the deployment to use. Called concurrently.</summary>
    int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context);
}

/// <summary>What a strategy may look at about the request.</summary>
public readonly record struct RoutingContext(ModelGroup Group, ChatCompletionRequest Request, int Attempt);

public static class RoutingStrategyNames
{
    public const string RoundRobin = "RoundRobin";
    public const string Priority = "Priority";
    public const string LowestLatency = "LowestLatency";
    public const string CostOptimized = "CostOptimized";
    public const string Weighted = "Weighted";
    public const string LeastBusy = "LeastBusy";
}

/// <summary>Even spread across candidates; an interlocked counter keeps it correct under concurrency.</summary>
internal sealed class RoundRobinStrategy : IRoutingStrategy
{
    public string Name => RoutingStrategyNames.RoundRobin;

    public int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context)
    {
        // The cursor lives on the group, so each group is spread evenly on its own.
        var n = (uint)context.Group.NextSequence();
        return (int)(n % (uint)candidates.Length);
    }
}

/// <summary>The candidate with the lowest <see cref="Deployment.Priority"/>; ties go to list order.</summary>
internal sealed class PriorityStrategy : IRoutingStrategy
{
    public string Name => RoutingStrategyNames.Priority;

    public int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context)
    {
        var best = 0;
        for (var i = 1; i < candidates.Length; i++)
        {
            if (candidates[i].Priority < candidates[best].Priority)
            {
                best = i;
            }
        }

        return best;
    }
}
