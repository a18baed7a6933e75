using PipelineGateway.Pipeline;
using PipelineGateway.Routing.Health;

namespace PipelineGateway.Routing;

/// <summary>
/// Chooses a deployment for a request: the candidates are the group's deployments this request has not tried
/// (all of them once every one was tried) that health allows; the group's strategy picks; the choice is then
/// acquired from the health tracker (which hands out a half-open circuit's single probe to one caller only).
/// </summary>
internal sealed class DeploymentSelector(HealthTracker health)
{
    public HealthTracker Health => health;

    /// <summary>Picks and acquires a deployment, or returns null when none is available now (<paramref name="at"/>: the caller's clock read, if it has one).</summary>
    public Deployment? Select(WorkItem item, ModelGroup group, ref Deployment[] scratch, Deployment? exclude = null, DateTimeOffset? at = null)
    {
        var all = group.DeploymentArray;
        if (scratch.Length < all.Length)
        {
            scratch = new Deployment[all.Length];
        }

        var now = at ?? health.Now;
        var n = 0;
        var anyUntried = false;
        foreach (var d in all)
        {
            if (!item.HasTried(d) && !ReferenceEquals(d, exclude))
            {
                anyUntried = true;
                if (health.IsSelectable(d, now))
                {
                    scratch[n++] = d;
                }
            }
        }

        if (!anyUntried)
        {
            // Every deployment was tried already (the dead-letter stage has backed off): any healthy one again.
            foreach (var d in all)
            {
                if (!ReferenceEquals(d, exclude) && health.IsSelectable(d, now))
                {
                    scratch[n++] = d;
                }
            }
        }

        while (n > 0)
        {
            var i = group.Strategy.Select(scratch.AsSpan(0, n), new RoutingContext(group, item.Request, item.AttemptCount));
            var chosen = scratch[i];
            if (health.TryAcquire(chosen, now))
            {
                return chosen;
            }

            scratch[i] = scratch[--n]; // lost the half-open probe to another request: choose again without it
        }

        return null;
    }

    /// <summary>
    /// How long until some deployment of the group may be called again (its cooldown and its provider's 429 pause
    /// both over); <paramref name="atLeast"/> (the last Retry-After) when nothing is known, and never under a second.
    /// </summary>
    public TimeSpan EarliestAvailable(ModelGroup group, TimeSpan? atLeast)
    {
        var now = health.Now;
        var earliest = TimeSpan.MaxValue;
        foreach (var d in group.DeploymentArray)
        {
            if (d.State.IsRejected(now))
            {
                continue;
            }

            var cooling = d.State.AvailableAt - now;
            var paused = health.PausedFor(d.ProviderName);
            var free = cooling > paused ? cooling : paused;
            earliest = free < earliest ? free : earliest;
        }

        if (earliest == TimeSpan.MaxValue || earliest <= TimeSpan.Zero)
        {
            earliest = atLeast ?? TimeSpan.FromSeconds(1);
        }

        return earliest < TimeSpan.FromSeconds(1) ? TimeSpan.FromSeconds(1) : earliest;
    }

    /// <summary>The deployment whose cooldown ends first (untried ones preferred), for the TryEarliest policy.</summary>
    public static Deployment? Earliest(WorkItem item, ModelGroup group, DateTimeOffset now, Deployment? exclude = null)
    {
        Deployment? best = null;
        var bestUntried = false;
        foreach (var d in group.DeploymentArray)
        {
            if (ReferenceEquals(d, exclude) || d.State.IsRejected(now))
            {
                continue; // a deployment whose key or model the provider rejects is not worth trying earliest
            }

            var untried = !item.HasTried(d);
            if (best is null || (untried && !bestUntried) || (untried == bestUntried && d.State.AvailableAt < best.State.AvailableAt))
            {
                best = d;
                bestUntried = untried;
            }
        }

        return best;
    }
}
