using System.Collections.Frozen;
using PipelineGateway.Dispatch;

namespace PipelineGateway.Routing;

/// <summary>One provider serving a model group under an upstream model name (resolved at start).</summary>
public sealed class Deployment
{
    /// <summary>Attempts, successes and cost here (for the metrics snapshot and the dashboard).</summary>
    internal Metrics.DeploymentCounters Counters { get; } = new();

    internal Deployment(string group, ProviderWorkerPool pool, string model, int priority, double weight, int index, decimal? inputPrice, decimal? outputPrice, Cost.PricingTable? pricing = null)
    {
        Group = group;
        Pool = pool;
        Model = model;
        Priority = priority;
        Weight = weight;
        Index = index;
        InputPricePerMillion = inputPrice;
        OutputPricePerMillion = outputPrice;

        // One price for ranking and for billing: the deployment's own, else the pricing table's (configured, then
        // shipped defaults). CostOptimized and the cost tracker read this same one.
        Price = Cost.PricingTable.Resolve(model, inputPrice, outputPrice, pricing);
        IsPriced = Price is not null;
        InputPrice = (double)(Price?.InputPerMillion ?? 0);
        OutputPrice = (double)(Price?.OutputPerMillion ?? 0);
        Id = $"{group}/{pool.Name}/{model}";
    }

    /// <summary>"group/provider/model": unique in a gateway.</summary>
    public string Id { get; }

    private const int MaxResponseModelLabels = 4;
    private string[] _responseModels = [];
    private readonly Lock _responseModelsLock = new();

    /// <summary>
    /// The label an answer's reported model (<c>gen_ai.response.model</c>) is recorded under: the first
    /// <see cref="MaxResponseModelLabels"/> names this deployment's upstream reports are labels of their own (a model and
    /// its dated snapshot, say), any later one this deployment's <see cref="Model"/> — an upstream that reported another
    /// name on every answer would otherwise make a series of every instrument per answer.
    /// </summary>
    internal string ResponseModelLabel(string reported)
    {
        var seen = Volatile.Read(ref _responseModels);
        foreach (var name in seen)
        {
            if (string.Equals(name, reported, StringComparison.Ordinal))
            {
                return name;
            }
        }

        if (seen.Length >= MaxResponseModelLabels)
        {
            return Model;
        }

        lock (_responseModelsLock)
        {
            seen = _responseModels; // another caller may have added names since the read above
            if (Array.IndexOf(seen, reported) >= 0)
            {
                return reported;
            }

            if (seen.Length >= MaxResponseModelLabels)
            {
                return Model;
            }

            Volatile.Write(ref _responseModels, [.. seen, reported]);
            return reported;
        }
    }

    public string Group { get; }

    public string ProviderName => Pool.Name;

    /// <summary>The upstream model name sent to the provider.</summary>
    public string Model { get; }

    public int Priority { get; }

    public double Weight { get; }

    /// <summary>Position in its group's deployment list.</summary>
    public int Index { get; }

    /// <summary>The input price configured on the deployment itself (null: the pricing table's applies, see <see cref="Price"/>).</summary>
    public decimal? InputPricePerMillion { get; }

    /// <summary>The output price configured on the deployment itself (null: the pricing table's applies, see <see cref="Price"/>).</summary>
    public decimal? OutputPricePerMillion { get; }

    /// <summary>The price this deployment is ranked and billed by, or null when no price is known anywhere.</summary>
    public Cost.ModelPrice? Price { get; }

    internal bool IsPriced { get; }

    internal double InputPrice { get; }

    internal double OutputPrice { get; }

    /// <summary>Live measurements strategies read: latency, requests in flight, circuit state.</summary>
    public DeploymentState State { get; } = new();

    internal ProviderWorkerPool Pool { get; }

    public override string ToString() => Id;
}

/// <summary>A model name callers ask for, with its deployments and the strategy that picks among them.</summary>
public sealed class ModelGroup
{
    private int _sequence = -1;

    internal ModelGroup(ModelGroupOptions options, IRoutingStrategy strategy, Deployment[] deployments, int defaultCompletionTokens = 256)
    {
        Name = options.Name;
        Aliases = [.. options.Aliases];
        Strategy = strategy;
        Deployments = deployments;
        ExpectedCompletionTokens = options.ExpectedCompletionTokens ?? defaultCompletionTokens;
        Hedging = options.Hedging;
        FallbackNames = [.. options.Fallbacks];
        ContextWindowFallbackNames = [.. options.ContextWindowFallbacks];
    }

    public string Name { get; }

    public IReadOnlyList<string> Aliases { get; }

    /// <summary>
    /// The name or alias <paramref name="requested"/> matched, spelled as configured: names are matched whatever their
    /// case, so what metrics label and the request log group by is the configured spelling — a caller varying the case
    /// ("GPT-4O-mini", "gpt-4O-MINI"…) would otherwise make a label value each, without bound.
    /// </summary>
    internal string Spelling(string requested)
    {
        if (string.Equals(requested, Name, StringComparison.Ordinal))
        {
            return Name;
        }

        foreach (var alias in Aliases)
        {
            if (string.Equals(requested, alias, StringComparison.OrdinalIgnoreCase))
            {
                return alias;
            }
        }

        return Name;
    }

    public IRoutingStrategy Strategy { get; }

    public IReadOnlyList<Deployment> Deployments { get; }

    /// <summary>Completion tokens expected when a request sets no max_tokens: the model's setting, else admission's. One value for routing, limits and budgets.</summary>
    public int ExpectedCompletionTokens { get; }

    public HedgingOptions? Hedging { get; }

    /// <summary>Groups tried, in order, after every deployment of this one failed.</summary>
    public IReadOnlyList<ModelGroup> Fallbacks { get; private set; } = [];

    /// <summary>Groups tried, in order, on a context-length error only.</summary>
    public IReadOnlyList<ModelGroup> ContextWindowFallbacks { get; private set; } = [];

    internal IReadOnlyList<string> FallbackNames { get; }

    internal IReadOnlyList<string> ContextWindowFallbackNames { get; }

    internal Deployment[] DeploymentArray => (Deployment[])Deployments;

    /// <summary>A per-group counter strategies may use for rotation; safe under concurrency.</summary>
    public int NextSequence() => Interlocked.Increment(ref _sequence);

    internal void Link(ModelCatalog catalog)
    {
        Fallbacks = [.. FallbackNames.Select(n => catalog.TryResolve(n, out var g) ? g : throw new InvalidOperationException($"Unknown fallback group '{n}'."))];
        ContextWindowFallbacks = [.. ContextWindowFallbackNames.Select(n => catalog.TryResolve(n, out var g) ? g : throw new InvalidOperationException($"Unknown fallback group '{n}'."))];
    }
}

/// <summary>Model names and aliases to groups, fixed at start.</summary>
internal sealed class ModelCatalog
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
        foreach (var g in Groups)
        {
            g.Link(this);
        }
    }

    public IReadOnlyList<ModelGroup> Groups { get; }

    public IEnumerable<Deployment> AllDeployments => Groups.SelectMany(g => g.Deployments);

    public bool TryResolve(string model, out ModelGroup group) => _byName.TryGetValue(model, out group!);
}
