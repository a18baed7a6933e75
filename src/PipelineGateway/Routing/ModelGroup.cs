using System.Collections.Frozen;
using PipelineGateway.Dispatch;

namespace PipelineGateway.Routing;

/// <summary>One provider serving a model group under an upstream model name (resolved at start).</summary>
public sealed class Deployment
{
    internal Deployment(string group, ProviderWorkerPool pool, string model, int priority, double weight, int index)
    {
        Group = group;
        Pool = pool;
        Model = model;
        Priority = priority;
        Weight = weight;
        Index = index;
    }

    public string Group { get; }

    public string ProviderName => Pool.Name;

    /// <summary>The upstream model name sent to the provider.</summary>
    public string Model { get; }

    public int Priority { get; }

    public double Weight { get; }

    /// <summary>Position in its group's deployment list.</summary>
    public int Index { get; }

    internal ProviderWorkerPool Pool { get; }

    public override string ToString() => $"{ProviderName}/{Model}";
}

/// <summary>A model name callers ask for, with its deployments and the strategy that picks among them.</summary>
public sealed class ModelGroup
{
    private int _sequence = -1;

    internal ModelGroup(string name, IReadOnlyList<string> aliases, IRoutingStrategy strategy, Deployment[] deployments)
    {
        Name = name;
        Aliases = aliases;
        Strategy = strategy;
        Deployments = deployments;
    }

    public string Name { get; }

    public IReadOnlyList<string> Aliases { get; }

    public IRoutingStrategy Strategy { get; }

    public IReadOnlyList<Deployment> Deployments { get; }

    internal Deployment[] DeploymentArray => (Deployment[])Deployments;

    /// <summary>A per-group counter strategies may use for rotation; safe under concurrency.</summary>
    public int NextSequence() => Interlocked.Increment(ref _sequence);
}

/// <summary>Model names and aliases to groups, fixed at start.</summary>
public sealed class ModelCatalog
{
    private readonly FrozenDictionary<string, ModelGroup> _byName;

    internal ModelCatalog(IEnumerable<ModelGroup> groups)
    {
        Groups = groups.ToArray();
        var map = new Dictionary<string, ModelGroup>(StringComparer.OrdinalIgnoreCase);
        foreach (var g in Groups)
        {
            map[g.Name] = g;
            foreach (var alias in g.Aliases)
            {
                map[alias] = g;
            }
        }

        _byName = map.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
    }

    public IReadOnlyList<ModelGroup> Groups { get; }

    public bool TryResolve(string model, out ModelGroup group) => _byName.TryGetValue(model, out group!);
}
