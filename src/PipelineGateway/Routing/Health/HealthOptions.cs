using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Routing.Health;

/// <summary>The passive health model (section <c>Gateway:Health</c>): circuits per deployment.</summary>
public sealed class HealthOptions
{
    public bool Enabled { get; set; } = true;

    /// <summary>Consecutive failures (5xx, timeouts, broken streams) that open the circuit.</summary>
    [Range(1, 1_000_000)]
    public int ConsecutiveFailures { get; set; } = 5;

    /// <summary>Failure rate over <see cref="Window"/> that opens the circuit, once <see cref="MinimumRequests"/> were seen.</summary>
    [Range(0.0, 1.0)]
    public double FailureRate { get; set; } = 0.5;

    [Range(1, 1_000_000)]
    public int MinimumRequests { get; set; } = 20;

    /// <summary>How far back the failure rate looks.</summary>
    public TimeSpan Window { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How long an opened circuit stays open before one probe may go through.</summary>
    public TimeSpan Cooldown { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>A failed probe doubles the cooldown, up to this.</summary>
    public TimeSpan MaxCooldown { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>Cooldown after a 429 that carried no Retry-After.</summary>
    public TimeSpan RateLimitCooldown { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How long a deployment stays out of rotation after its provider refused its key or its model (401, 403, 404):
    /// requests go to the group's other deployments meanwhile. A fixed key takes effect after this long (or a restart).
    /// </summary>
    public TimeSpan RejectedCooldown { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>What to do when every deployment of a request's groups is unhealthy.</summary>
    public AllUnhealthyBehavior WhenAllUnhealthy { get; set; } = AllUnhealthyBehavior.TryEarliest;

    /// <summary>LowestLatency re-measures a deployment whose last sample is older than this.</summary>
    public TimeSpan LatencyProbeInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Weight of the newest sample in the latency average (0..1].</summary>
    [Range(0.01, 1.0)]
    public double LatencySmoothing { get; set; } = 0.3;
}

public enum AllUnhealthyBehavior
{
    /// <summary>Send the request to the deployment whose cooldown ends first.</summary>
    TryEarliest,

    /// <summary>Fail at once with a clear error.</summary>
    FailFast,
}

public enum CircuitState
{
    Closed,
    Open,
    HalfOpen,
}
