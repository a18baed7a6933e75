using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using PipelineGateway.Admission;
using PipelineGateway.Caching;
using PipelineGateway.Cost;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Routing;
using PipelineGateway.Routing.Health;

namespace PipelineGateway.Hosting;

/// <summary>
/// What <c>services.AddPipelineGateway(…)</c> returns (as YARP's <c>AddReverseProxy()</c> returns an
/// <c>IReverseProxyBuilder</c>): the gateway's registration, to configure further with the typed methods of
/// <see cref="GatewayBuilderExtensions"/> — one for everything the configuration file can say. Calling
/// <c>AddPipelineGateway</c> again returns a builder over the same registration.
/// </summary>
public interface IGatewayBuilder
{
    IServiceCollection Services { get; }
}

/// <summary>The typed configuration of a gateway: each method is the code form of a section of <c>Gateway</c> in the configuration file.</summary>
public static class GatewayBuilderExtensions
{
    /// <summary>Changes any option (the escape hatch; the typed methods below cover every section).</summary>
    public static TBuilder Configure<TBuilder>(this TBuilder builder, Action<GatewayOptions> configure)
        where TBuilder : IGatewayBuilder
    {
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.Configure(configure);
        return builder;
    }

    /// <summary><c>Gateway:Providers</c>: a provider of any type (<see cref="ProviderTypes"/>), configured by <paramref name="configure"/>.</summary>
    public static TBuilder AddProvider<TBuilder>(this TBuilder builder, string name, string type, Action<ProviderOptions>? configure = null)
        where TBuilder : IGatewayBuilder
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        return builder.Configure(o =>
        {
            var provider = new ProviderOptions { Name = name, Type = type };
            configure?.Invoke(provider);
            o.Providers.Add(provider);
        });
    }

    /// <summary>OpenAI, its key read from the environment variable named (never from code or a file).</summary>
    public static TBuilder AddOpenAI<TBuilder>(this TBuilder builder, string name, string apiKeyEnvironmentVariable, Action<ProviderOptions>? configure = null)
        where TBuilder : IGatewayBuilder =>
        builder.AddProvider(name, ProviderTypes.OpenAI, p =>
        {
            p.ApiKeyEnvironmentVariable = apiKeyEnvironmentVariable;
            configure?.Invoke(p);
        });

    /// <summary>Any OpenAI-compatible endpoint (vLLM, Ollama, Groq, Together…), at <paramref name="baseUrl"/> (ending in <c>/v1</c>).</summary>
    public static TBuilder AddOpenAICompatible<TBuilder>(this TBuilder builder, string name, string baseUrl, string? apiKeyEnvironmentVariable = null, Action<ProviderOptions>? configure = null)
        where TBuilder : IGatewayBuilder =>
        builder.AddProvider(name, ProviderTypes.OpenAICompatible, p =>
        {
            p.BaseUrl = baseUrl;
            p.ApiKeyEnvironmentVariable = apiKeyEnvironmentVariable;
            configure?.Invoke(p);
        });

    /// <summary>Azure OpenAI at <paramref name="endpoint"/> (the resource URL); deployments name the Azure deployment as their model.</summary>
    public static TBuilder AddAzureOpenAI<TBuilder>(this TBuilder builder, string name, string endpoint, string apiKeyEnvironmentVariable, Action<ProviderOptions>? configure = null)
        where TBuilder : IGatewayBuilder =>
        builder.AddProvider(name, ProviderTypes.AzureOpenAI, p =>
        {
            p.BaseUrl = endpoint;
            p.ApiKeyEnvironmentVariable = apiKeyEnvironmentVariable;
            configure?.Invoke(p);
        });

    /// <summary>Anthropic's Messages API (requests and answers translated both ways).</summary>
    public static TBuilder AddAnthropic<TBuilder>(this TBuilder builder, string name, string apiKeyEnvironmentVariable, Action<ProviderOptions>? configure = null)
        where TBuilder : IGatewayBuilder =>
        builder.AddProvider(name, ProviderTypes.Anthropic, p =>
        {
            p.ApiKeyEnvironmentVariable = apiKeyEnvironmentVariable;
            configure?.Invoke(p);
        });

    /// <summary>A simulated provider (no keys; latency and failures as configured).</summary>
    public static TBuilder AddSimulatedProvider<TBuilder>(this TBuilder builder, string name, Action<SimulatedProviderOptions>? configure = null, int workers = 16)
        where TBuilder : IGatewayBuilder =>
        builder.AddProvider(name, ProviderTypes.Simulated, p =>
        {
            p.Workers = workers;
            p.Simulated = new SimulatedProviderOptions();
            configure?.Invoke(p.Simulated);
        });

    /// <summary>A provider implemented in code; deployments refer to it by <see cref="ILlmProvider.Name"/>.</summary>
    public static TBuilder AddProvider<TBuilder>(this TBuilder builder, ILlmProvider provider, int workers = 16, int queueCapacity = 256)
        where TBuilder : IGatewayBuilder
    {
        ArgumentNullException.ThrowIfNull(provider);
        builder.Services.AddSingleton(provider);
        return builder.AddProvider(provider.Name, ProviderTypes.Custom, p =>
        {
            p.Workers = workers;
            p.QueueCapacity = queueCapacity;
        });
    }

    /// <summary>A model group spread round-robin over the named providers (each serving the group's name as its model).</summary>
    public static TBuilder AddModel<TBuilder>(this TBuilder builder, string name, params string[] providers)
        where TBuilder : IGatewayBuilder =>
        builder.AddModel<TBuilder>(name, m =>
        {
            foreach (var provider in providers)
            {
                m.Deploy(provider);
            }
        });

    /// <summary><c>Gateway:Models</c>: a model group, its strategy, deployments, aliases, fallbacks and hedging.</summary>
    public static TBuilder AddModel<TBuilder>(this TBuilder builder, string name, Action<ModelGroupBuilder> configure)
        where TBuilder : IGatewayBuilder
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(configure);
        var model = new ModelGroupBuilder(name);
        configure(model);
        return builder.Configure(o => o.Models.Add(model.Options));
    }

    /// <summary>
    /// <c>Gateway:Admission:RateLimits</c>: a limit of <paramref name="limit"/> requests (or tokens) per
    /// <paramref name="window"/>, for example 60 a minute; partitioned as <see cref="PartitionRateLimitsBy"/> says.
    /// </summary>
    public static TBuilder AddRateLimit<TBuilder>(this TBuilder builder, long limit, TimeSpan window, RateLimitUnit unit = RateLimitUnit.Requests, RateLimitAlgorithm algorithm = RateLimitAlgorithm.TokenBucket, long? burst = null, string? name = null)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => o.Admission.RateLimits.Add(new RateLimitRule { Limit = limit, Window = window, Unit = unit, Algorithm = algorithm, Burst = burst, Name = name }));

    /// <summary><c>Gateway:Admission:PartitionBy</c>: one set of counters per gateway key, per user, both, or none (shared).</summary>
    public static TBuilder PartitionRateLimitsBy<TBuilder>(this TBuilder builder, RateLimitPartition partition)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => o.Admission.PartitionBy = partition);

    /// <summary><c>Gateway:Admission</c>: waiting for permits, token counting and the rest of admission.</summary>
    public static TBuilder ConfigureAdmission<TBuilder>(this TBuilder builder, Action<AdmissionOptions> configure)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => configure(o.Admission));

    /// <summary><c>Gateway:Cache</c>: turns the response cache on, with this TTL and entry limit, then <paramref name="configure"/>.</summary>
    public static TBuilder AddCache<TBuilder>(this TBuilder builder, TimeSpan ttl, int maxEntries = 10_000, Action<CacheOptions>? configure = null)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o =>
        {
            o.Cache.Enabled = true;
            o.Cache.DefaultTtl = ttl;
            o.Cache.MaxEntries = maxEntries;
            configure?.Invoke(o.Cache);
        });

    /// <summary><c>Gateway:Budgets</c>: a spending limit, for everyone (<see cref="BudgetScope.Global"/>) or per gateway key.</summary>
    public static TBuilder AddBudget<TBuilder>(this TBuilder builder, decimal usd, BudgetPeriod period = BudgetPeriod.Month, BudgetScope scope = BudgetScope.Global, string? key = null, string? name = null)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => o.Budgets.Add(new BudgetOptions { LimitUsd = usd, Period = period, Scope = scope, Key = key, Name = name }));

    /// <summary>
    /// <c>Gateway:Budgets</c>: a spending limit per end user (<see cref="BudgetScope.User"/>) — every user a request
    /// names, or only <paramref name="user"/>; with <paramref name="key"/>, only that key's users.
    /// </summary>
    public static TBuilder AddUserBudget<TBuilder>(this TBuilder builder, decimal usd, BudgetPeriod period = BudgetPeriod.Month, string? user = null, string? key = null, string? name = null, int maxUsers = 100_000)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => o.Budgets.Add(new BudgetOptions { LimitUsd = usd, Period = period, Scope = BudgetScope.User, User = user, Key = key, Name = name, MaxUsers = maxUsers }));

    /// <summary><c>Gateway:Pricing</c>: the price of an upstream model, USD per million tokens (over the shipped defaults).</summary>
    public static TBuilder AddPrice<TBuilder>(this TBuilder builder, string model, decimal inputPerMillion, decimal outputPerMillion, decimal? cachedInputPerMillion = null)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => o.Pricing[model] = new ModelPrice { InputPerMillion = inputPerMillion, OutputPerMillion = outputPerMillion, CachedInputPerMillion = cachedInputPerMillion });

    /// <summary><c>Gateway:Pipeline</c>: in-flight and queue bounds, deadlines, retries, the drain.</summary>
    public static TBuilder ConfigurePipeline<TBuilder>(this TBuilder builder, Action<PipelineOptions> configure)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => configure(o.Pipeline));

    /// <summary><c>Gateway:Health</c>: circuit breaking, cooldowns and the rejected-deployment cooldown.</summary>
    public static TBuilder ConfigureHealth<TBuilder>(this TBuilder builder, Action<HealthOptions> configure)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => configure(o.Health));

    /// <summary><c>Gateway:Fairness</c>: tenant weights and shares of the waiting room; <paramref name="key"/>'s weight.</summary>
    public static TBuilder WithTenantWeight<TBuilder>(this TBuilder builder, string key, double weight)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => o.Fairness.Weights[key] = weight);

    /// <summary><c>Gateway:Fairness</c>: everything else about sharing between tenants and priority classes.</summary>
    public static TBuilder ConfigureFairness<TBuilder>(this TBuilder builder, Action<FairnessOptions> configure)
        where TBuilder : IGatewayBuilder =>
        builder.Configure(o => configure(o.Fairness));

    /// <summary>A routing strategy that model groups can name.</summary>
    public static IGatewayBuilder AddRoutingStrategy<T>(this IGatewayBuilder builder)
        where T : class, IRoutingStrategy
    {
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, T>());
        return builder;
    }

    /// <summary>The clock every stage reads (a <c>FakeTimeProvider</c> in tests).</summary>
    public static TBuilder UseTimeProvider<TBuilder>(this TBuilder builder, TimeProvider time)
        where TBuilder : IGatewayBuilder
    {
        builder.Services.Replace(ServiceDescriptor.Singleton(time));
        return builder;
    }
}

/// <summary>One model group, in code: <c>m => m.Strategy(RoutingStrategyNames.Priority).Deploy("primary").Deploy("backup").FallbackTo("gpt-4o-mini")</c>.</summary>
public sealed class ModelGroupBuilder
{
    internal ModelGroupBuilder(string name) => Options = new ModelGroupOptions { Name = name };

    internal ModelGroupOptions Options { get; }

    /// <summary>The routing strategy by name (<see cref="RoutingStrategyNames"/>, or one added with <c>AddRoutingStrategy</c>).</summary>
    public ModelGroupBuilder Strategy(string strategy)
    {
        Options.Strategy = strategy;
        return this;
    }

    /// <summary>
    /// A deployment: <paramref name="provider"/> serving <paramref name="model"/> (default: the group's name). Its
    /// priority defaults to its position (for the Priority strategy); prices default to the pricing table's.
    /// </summary>
    public ModelGroupBuilder Deploy(string provider, string? model = null, int? priority = null, double weight = 1, decimal? inputPricePerMillion = null, decimal? outputPricePerMillion = null)
    {
        Options.Deployments.Add(new DeploymentOptions
        {
            Provider = provider,
            Model = model,
            Priority = priority ?? Options.Deployments.Count,
            Weight = weight,
            InputPricePerMillion = inputPricePerMillion,
            OutputPricePerMillion = outputPricePerMillion,
        });
        return this;
    }

    /// <summary>Other names callers may use for this group.</summary>
    public ModelGroupBuilder Alias(params string[] aliases)
    {
        Options.Aliases.AddRange(aliases);
        return this;
    }

    /// <summary>Groups to try, in order, when every deployment of this one failed.</summary>
    public ModelGroupBuilder FallbackTo(params string[] groups)
    {
        Options.Fallbacks.AddRange(groups);
        return this;
    }

    /// <summary>Groups with larger context windows to try when a prompt is too long for this one.</summary>
    public ModelGroupBuilder ContextWindowFallbackTo(params string[] groups)
    {
        Options.ContextWindowFallbacks.AddRange(groups);
        return this;
    }

    /// <summary>After <paramref name="delay"/> without an answer, race a second deployment; the first success wins.</summary>
    public ModelGroupBuilder Hedge(TimeSpan delay)
    {
        Options.Hedging = new HedgingOptions { Delay = delay };
        return this;
    }

    /// <summary>A wildcard group's bound (a name ending in <c>*</c>): the most distinct names it serves at once; default 1,000.</summary>
    public ModelGroupBuilder MaxModels(int models)
    {
        Options.MaxModels = models;
        return this;
    }

    /// <summary>A wildcard group's <c>/v1/models</c> lists its providers' own models too (<c>GET {base}/models</c>).</summary>
    public ModelGroupBuilder ListUpstreamModels(bool list = true)
    {
        Options.ListUpstreamModels = list;
        return this;
    }

    /// <summary>Completion tokens expected when a request of this model sets no <c>max_tokens</c> (CostOptimized, token limits, budgets); default <c>Admission:ExpectedCompletionTokens</c>.</summary>
    public ModelGroupBuilder ExpectCompletionTokens(int tokens)
    {
        Options.ExpectedCompletionTokens = tokens;
        return this;
    }
}
