namespace PipelineGateway.Routing.Health;

/// <summary>
/// Carries health verdicts between gateway instances (for example over Redis pub/sub, in PipelineGateway.Redis):
/// when one instance opens a deployment's circuit or cools it down after a 429, the others stop sending to it too,
/// instead of each learning the outage with its own failed requests.
/// </summary>
internal interface IDistributedHealthChannel
{
    /// <summary>Tells the other instances; in the background, never throws.</summary>
    void Publish(HealthSignal signal);

    /// <summary>Starts delivering the other instances' signals (not this instance's own).</summary>
    void Subscribe(Action<HealthSignal> onSignal);

    /// <summary>
    /// Delivers the verdicts running on deployments this instance has just made (a wildcard's group for a new name: their
    /// signals were dropped when they came, as no deployment had the id) — in the background, never throws.
    /// </summary>
    void Recall(IReadOnlyList<string> deploymentIds, Action<HealthSignal> onSignal);
}

/// <summary>
/// A verdict on one deployment (<see cref="Deployment.Id"/>: group/provider/model, the same on every instance with
/// the same configuration) or, for <see cref="HealthSignalKind.ProviderPause"/>, on one provider (its name), valid for <see cref="Duration"/> from when it is received — durations rather than
/// instants, so instances whose clocks disagree still agree on how long to stay away.
/// </summary>
internal readonly record struct HealthSignal(string DeploymentId, HealthSignalKind Kind, TimeSpan Duration);

internal enum HealthSignalKind
{
    /// <summary>The upstream said 429: send nothing until the cooldown is over.</summary>
    Cooldown,

    /// <summary>The circuit opened: send nothing until it is over, then probe.</summary>
    CircuitOpen,

    /// <summary>The provider said 429: call none of its deployments until the pause is over (the id is the provider's name).</summary>
    ProviderPause,

    /// <summary>The provider refused the deployment's key or model (401, 403, 404): out of rotation for the duration.</summary>
    Rejected,
}
