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

    /// <summary>The group this deployment serves (set when the group is made).</summary>
    internal ModelGroup Owner { get; set; } = null!;

    /// <summary>
    /// The <c>pgw.deployment</c> label of the instruments: <see cref="Id"/>, but for a deployment of a group a wildcard
    /// made that no upstream has answered yet, the wildcard's own deployment's (<c>openai/*/openai/*</c>) — a caller
    /// sending a made-up name per request would otherwise make a series per request.
    /// </summary>
    internal string MetricId => Owner.Established ? Id : Owner.Wildcard!.Template.DeploymentArray[Index].Id;

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
        foreach (var d in deployments)
        {
            d.Owner = this;
            _countingModel ??= Admission.TokenCounter.EncodingFor(d.Model) is not null ? d.Model : null;
        }
    }

    /// <summary>The first deployment model a tokenizer knows (null when none does): what a prompt asked by another name is counted with.</summary>
    private readonly string? _countingModel;

    /// <summary>
    /// The model whose tokenizer counts a prompt asked for as <paramref name="requested"/>: that name when a tokenizer
    /// knows it (<c>gpt-4o-mini</c>), else the first of this group's deployment models one knows — an alias (<c>m</c>,
    /// <c>fast</c>) over gpt deployments is counted as they count, not at ~4 characters a token — else the name itself
    /// (the approximation: Claude's, Llama's). What token limits charge, and what the estimates afterwards follow
    /// (<see cref="Pipeline.WorkItem.PromptTokensIfCounted"/>).
    /// </summary>
    internal string CountingModel(string requested) =>
        _countingModel is null || Admission.TokenCounter.EncodingFor(requested) is not null ? requested : _countingModel;

    /// <summary>The wildcard group (<c>openai/*</c>) this group was made by for a name it matched; null for a configured group.</summary>
    internal WildcardModels? Wildcard { get; init; }

    /// <summary>What the wildcard's <c>*</c> stood for in this group's name (null for a configured group).</summary>
    internal string? WildcardRest { get; init; }

    private int _established;

    /// <summary>
    /// A group a wildcard made is established once an upstream answered it: the name is a model then, not a caller's
    /// guess. Until then its metrics are recorded under the wildcard's name (a caller sending a new name per request
    /// would otherwise make a series per request), and it may be forgotten (an upstream 404, or room for another).
    /// </summary>
    internal bool Established => Wildcard is null || Volatile.Read(ref _established) != 0;

    /// <summary>Marks the group established on its first answer (a configured group always is).</summary>
    internal void Establish()
    {
        if (Wildcard is not null && Interlocked.Exchange(ref _established, 1) == 0)
        {
            Wildcard.OnEstablished(this);
        }
    }

    /// <summary>
    /// The name metrics record this group's requests under: the configured spelling of what was asked
    /// (<see cref="Spelling"/>), or for a group a wildcard made, its own name once established, else the wildcard's.
    /// </summary>
    internal string MetricName(string requested) => Wildcard is null ? Spelling(requested) : StatsName;

    /// <summary>The name the metrics snapshot counts this group's requests under: its own, or an unestablished group's wildcard's.</summary>
    internal string StatsName => Established ? Name : Wildcard!.Name;

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

    /// <summary>A group a wildcard made falls back where the wildcard's configuration says (linked once, at start).</summary>
    internal void LinkLike(ModelGroup template)
    {
        Fallbacks = template.Fallbacks;
        ContextWindowFallbacks = template.ContextWindowFallbacks;
    }
}

/// <summary>
/// Model names and aliases to groups. The configured names are fixed at start; a name no group has that a wildcard group
/// (<c>openai/*</c>) matches gets a group of its own, made on first use (<see cref="WildcardModels"/>).
/// </summary>
internal sealed class ModelCatalog
{
    private readonly FrozenDictionary<string, ModelGroup> _byName;
    private readonly FrozenDictionary<string, Deployment> _configuredDeployments;

    internal ModelCatalog(IEnumerable<ModelGroup> groups, IEnumerable<WildcardModels>? wildcards = null)
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
        _configuredDeployments = Groups.SelectMany(g => g.Deployments).ToFrozenDictionary(d => d.Id, StringComparer.Ordinal);

        // The longest prefix first: "openai/gpt-*" is asked before "openai/*", and "*" (everything else) last.
        Wildcards = [.. (wildcards ?? []).OrderByDescending(w => w.Prefix.Length)];
        foreach (var g in Groups)
        {
            g.Link(this);
        }

        foreach (var w in Wildcards)
        {
            w.Template.Link(this);
        }
    }

    /// <summary>The configured groups (not the wildcards, nor the groups they made).</summary>
    public IReadOnlyList<ModelGroup> Groups { get; }

    internal IReadOnlyList<WildcardModels> Wildcards { get; }

    /// <summary>Every deployment: the configured ones, then those of the groups wildcards have made so far.</summary>
    public IEnumerable<Deployment> AllDeployments => Groups.SelectMany(g => g.Deployments).Concat(Wildcards.SelectMany(w => w.Made).SelectMany(g => g.Deployments));

    /// <summary>
    /// The group for a requested name: a configured name or alias (case-insensitive), else the group a wildcard made for
    /// it — made now if it is the name's first use. False when nothing matches, or the matching wildcard has no room left.
    /// </summary>
    public bool TryResolve(string model, out ModelGroup group)
    {
        if (_byName.TryGetValue(model, out group!))
        {
            return true;
        }

        var wildcard = Match(model, out var rest);
        group = wildcard?.GetOrMake(rest!)!;
        return group is not null;
    }

    /// <summary>Whether the name would resolve, without making a group for it.</summary>
    public bool Knows(string model) => _byName.ContainsKey(model) || Match(model, out _) is not null;

    /// <summary>The configured group a name or alias is (no wildcard).</summary>
    public bool TryGetConfigured(string model, out ModelGroup group) => _byName.TryGetValue(model, out group!);

    /// <summary>The wildcard that matches a name no group has, and the part its <c>*</c> stands for.</summary>
    public WildcardModels? Match(string model, out string? rest)
    {
        foreach (var w in Wildcards)
        {
            if (w.Matches(model, out rest))
            {
                return w;
            }
        }

        rest = null;
        return null;
    }

    /// <summary>The deployment with this id, configured or made by a wildcard (a health signal from another instance names one).</summary>
    public Deployment? FindDeployment(string id)
    {
        if (_configuredDeployments.TryGetValue(id, out var d))
        {
            return d;
        }

        foreach (var w in Wildcards)
        {
            foreach (var g in w.Made)
            {
                foreach (var made in g.DeploymentArray)
                {
                    if (string.Equals(made.Id, id, StringComparison.Ordinal))
                    {
                        return made;
                    }
                }
            }
        }

        return null;
    }

    /// <summary>Why a name resolves to nothing, as the caller is told.</summary>
    public ModelNotFoundException NotFound(string model) =>
        _byName.ContainsKey(model) || Match(model, out _) is not { } wildcard
            ? new ModelNotFoundException(model)
            : new ModelNotFoundException(model,
                $"The model '{Providers.ProviderException.Quoted(model)}' matches the wildcard '{wildcard.Name}', which already serves its limit of {wildcard.Max} models that answered (MaxModels); configure this one by name.");
}
