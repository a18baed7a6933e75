using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Routing;

/// <summary>
/// Exponentially weighted latency (time to first token for streams). A deployment with no sample, or none
/// for <c>Health:LatencyProbeInterval</c>, is probed first — one request per interval, chosen at random among
/// those due, so list order never decides — then the fastest average wins.
/// </summary>
/// <remarks>
/// The options are read on first use, not in the constructor: the options validator lists the strategies by
/// name, so a strategy that needed the validated options to be built would make a dependency cycle.
/// </remarks>
internal sealed class LowestLatencyStrategy(IServiceProvider services, TimeProvider time) : IRoutingStrategy
{
    private TimeSpan _interval;

    public string Name => RoutingStrategyNames.LowestLatency;

    public int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context)
    {
        if (_interval == TimeSpan.Zero)
        {
            _interval = services.GetRequiredService<IOptions<GatewayOptions>>().Value.Health.LatencyProbeInterval;
        }

        var now = time.GetUtcNow();
        var due = 0;
        Span<int> dueIndexes = stackalloc int[Math.Min(candidates.Length, 128)];
        for (var i = 0; i < candidates.Length && due < dueIndexes.Length; i++)
        {
            if (candidates[i].State.DueForProbe(now, _interval))
            {
                dueIndexes[due++] = i;
            }
        }

        if (due > 0)
        {
            var start = Random.Shared.Next(due);
            for (var k = 0; k < due; k++)
            {
                var i = dueIndexes[(start + k) % due];
                if (candidates[i].State.TryClaimProbe(now))
                {
                    return i;
                }
            }
        }

        var best = -1;
        var bestMs = double.MaxValue;
        for (var i = 0; i < candidates.Length; i++)
        {
            var ms = candidates[i].State.LatencyMs;
            if (!double.IsNaN(ms) && ms < bestMs)
            {
                best = i;
                bestMs = ms;
            }
        }

        return best >= 0 ? best : Random.Shared.Next(candidates.Length);
    }
}

/// <summary>
/// The cheapest deployment for this request: estimated prompt tokens times the input price plus expected
/// completion tokens (max_tokens, else the group's ExpectedCompletionTokens) times the output price — the price the
/// cost tracker bills by (<see cref="Deployment.Price"/>: the deployment's own, else the pricing table's, else the
/// shipped defaults). Deployments with no price anywhere rank last; ties rotate.
/// </summary>
internal sealed class CostOptimizedStrategy : IRoutingStrategy
{
    public string Name => RoutingStrategyNames.CostOptimized;

    public int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context)
    {
        var prompt = TokenEstimate.Approximate(context.Request);
        var completion = context.Request.RequestedCompletionTokens ?? context.Group.ExpectedCompletionTokens;
        Span<int> ties = stackalloc int[Math.Min(candidates.Length, 128)];
        var count = 0;
        var best = double.MaxValue;
        for (var i = 0; i < candidates.Length; i++)
        {
            // Ranking in double (prices are pre-converted): decimal arithmetic here measured 6x slower at 128
            // deployments. Money itself is accounted in decimal elsewhere.
            var d = candidates[i];
            var cost = d.IsPriced ? (d.InputPrice * prompt) + (d.OutputPrice * completion) : double.MaxValue;
            if (cost < best)
            {
                best = cost;
                count = 0;
            }

            if (cost == best && count < ties.Length)
            {
                ties[count++] = i;
            }
        }

        return ties[(int)((uint)context.Group.NextSequence() % (uint)count)];
    }

    /// <summary>The estimated cost in USD of a request on a deployment (for display and tests).</summary>
    public static decimal Estimate(Deployment d, int promptTokens, int completionTokens) =>
        d.Price is not { } price
            ? decimal.MaxValue
            : ((price.InputPerMillion * promptTokens) + (price.OutputPerMillion * completionTokens)) / 1_000_000m;
}

/// <summary>Random, in proportion to <see cref="DeploymentOptions.Weight"/>.</summary>
internal sealed class WeightedStrategy : IRoutingStrategy
{
    public string Name => RoutingStrategyNames.Weighted;

    public int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context)
    {
        var total = 0.0;
        foreach (var d in candidates)
        {
            total += d.Weight;
        }

        if (total <= 0)
        {
            return Random.Shared.Next(candidates.Length);
        }

        var roll = Random.Shared.NextDouble() * total;
        for (var i = 0; i < candidates.Length; i++)
        {
            roll -= candidates[i].Weight;
            if (roll < 0)
            {
                return i;
            }
        }

        return candidates.Length - 1;
    }
}

/// <summary>The deployment with the fewest requests in flight (queued at its provider or running); ties rotate.</summary>
internal sealed class LeastBusyStrategy : IRoutingStrategy
{
    public string Name => RoutingStrategyNames.LeastBusy;

    public int Select(ReadOnlySpan<Deployment> candidates, in RoutingContext context)
    {
        var offset = (int)((uint)context.Group.NextSequence() % (uint)candidates.Length);
        var best = offset;
        var bestLoad = int.MaxValue;
        for (var k = 0; k < candidates.Length; k++)
        {
            var i = (offset + k) % candidates.Length;
            var load = candidates[i].State.InFlight;
            if (load < bestLoad)
            {
                best = i;
                bestLoad = load;
            }
        }

        return best;
    }
}
