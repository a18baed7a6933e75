using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Routing;

/// <summary>A model name callers ask for, mapped to the deployments that can serve it.</summary>
public sealed class ModelGroupOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Name { get; set; } = string.Empty;

    /// <summary>Other names that resolve to this group.</summary>
    public List<string> Aliases { get; set; } = [];

    /// <summary>The routing strategy by name: RoundRobin or Priority.</summary>
    public string Strategy { get; set; } = RoutingStrategyNames.RoundRobin;

    public List<DeploymentOptions> Deployments { get; set; } = [];
}

/// <summary>One provider serving a model group under an upstream model name.</summary>
public sealed class DeploymentOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Provider { get; set; } = string.Empty;

    /// <summary>The upstream model name; defaults to the group name.</summary>
    public string? Model { get; set; }

    /// <summary>Lower is preferred by the Priority strategy.</summary>
    public int Priority { get; set; }

    [Range(0.0, 1_000_000.0)]
    public double Weight { get; set; } = 1;
}
