using PipelineGateway.Dispatch;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Routing;

/// <summary>
/// Where a hedge goes: a routing decision, so it is made here with the same selector and health as every other. When a
/// request's first attempt is slow, its worker asks for a second deployment; one is chosen among the group's healthy
/// deployments other than the first, and its provider is asked for room <i>now</i> (a concurrency permit and its
/// rate limits: <see cref="ProviderWorkerPool.TryReserve"/>). A hedge is only sent where there is room at once: it
/// never waits, and never pushes a provider past its limits.
/// </summary>
internal sealed class HedgeRouter(DeploymentSelector selector)
{
    /// <summary>A deployment with a reservation for the hedge, or null when no deployment has room now.</summary>
    public (Deployment Deployment, ProviderReservation Reservation)? TryChoose(WorkItem item, Deployment primary)
    {
        Deployment[] scratch = [];
        var other = selector.Select(item, item.Group, ref scratch, exclude: primary);
        if (other is null)
        {
            return null;
        }

        if (!other.Pool.TryReserve(item, out var reservation))
        {
            other.State.OnNeutral(); // give back a half-open probe we will not use
            return null;
        }

        return (other, reservation);
    }
}
