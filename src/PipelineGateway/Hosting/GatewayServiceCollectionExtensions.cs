using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Admission;
using PipelineGateway.Caching;
using PipelineGateway.DeadLetter;
using PipelineGateway.Dispatch;
using PipelineGateway.Metrics;
using PipelineGateway.Pipeline;
using Microsoft.Extensions.Http;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Http;
using PipelineGateway.Routing;
using PipelineGateway.Routing.Health;

namespace PipelineGateway.Hosting;

public static class GatewayServiceCollectionExtensions
{
    /// <summary>
    /// Adds the GC gen1 guard to a process that hosts the gateway: after a collection, when the GC's generation 1
    /// holds more than <paramref name="limitMiB"/> MiB and more than twice what that collection promoted, it asks for
    /// one gen1 collection — the dead requests .NET's GC otherwise lets pile up in gen1 under load from a cold start,
    /// and with slow upstreams (docs/server.md, "Runtime settings"; measured in docs/benchmarks.md, issue 21). The HTTP
    /// server runs it by default (<c>Gateway:Server:GcGen1GuardMiB</c>); a worker service hosting the library opts in
    /// here, or sets <c>DOTNET_GCGen1MaxBudget</c> in its environment instead.
    /// </summary>
    public static IServiceCollection AddGatewayGcGen1Guard(this IServiceCollection services, int limitMiB = 4)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limitMiB);
        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton(new Gen1Guard.Limit(limitMiB));
        services.TryAddSingleton<Gen1Guard>();
        services.AddHostedService(static sp => sp.GetRequiredService<Gen1Guard>()); // added once (TryAddEnumerable)

        return services;
    }

    /// <summary>
    /// Adds the gateway, configured from <paramref name="configuration"/> (the <c>Gateway</c> section, or the
    /// section itself), validated at start, and returns its builder for anything more in code. Register it before
    /// hosted services that submit work, so it stops after them (hosted services stop in reverse order). Calling it
    /// again is harmless: the same registration, the same configuration bound once.
    /// </summary>
    public static IGatewayBuilder AddPipelineGateway(this IServiceCollection services, IConfiguration configuration, Action<GatewayOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        var builder = services.AddPipelineGateway();
        var section = configuration.GetSection(GatewayOptions.SectionName);
        var source = section.Exists() ? section : configuration;
        if (Registration(services).Bound.Add(configuration))
        {
            services.Configure<GatewayOptions>(o =>
            {
                source.Bind(o);
                if (source is IConfigurationSection gateway)
                {
                    // A section (Gateway, or one the host named): not a whole configuration root without one, whose
                    // other sections (Logging, Kestrel…) are not the gateway's.
                    o.UnknownSettings.AddRange(UnknownSettings.In(gateway, gateway.Path));
                }
            });
        }

        if (configure is not null)
        {
            services.Configure(configure);
        }

        return builder;
    }

    /// <summary>Adds the gateway, configured in code.</summary>
    public static IGatewayBuilder AddPipelineGateway(this IServiceCollection services, Action<GatewayOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        var builder = services.AddPipelineGateway();
        services.Configure(configure);
        return builder;
    }

    /// <summary>
    /// Adds the gateway with nothing configured yet: configure it with the returned builder's typed methods
    /// (<see cref="GatewayBuilderExtensions"/>). Idempotent: a second call returns a builder over the same registration.
    /// </summary>
    public static IGatewayBuilder AddPipelineGateway(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        if (services.FirstOrDefault(d => d.ServiceType == typeof(GatewayRegistration))?.ImplementationInstance is GatewayRegistration existing)
        {
            return existing;
        }

        var registration = new GatewayRegistration(services);
        services.AddSingleton(registration);
        services.AddOptions<GatewayOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<GatewayOptions>, GatewayOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.AddLogging();

        services.TryAddEnumerable(ServiceDescriptor.Singleton<IProviderFactory, SimulatedProviderFactory>());
        foreach (var type in new[] { ProviderTypes.OpenAI, ProviderTypes.OpenAICompatible, ProviderTypes.AzureOpenAI, ProviderTypes.Anthropic })
        {
            services.AddSingleton<IProviderFactory>(new HttpProviderFactory(type));
        }

        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, RoundRobinStrategy>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, PriorityStrategy>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, LowestLatencyStrategy>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, CostOptimizedStrategy>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, WeightedStrategy>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, LeastBusyStrategy>());
        services.TryAddSingleton<HealthTracker>();
        services.TryAddSingleton<DeploymentSelector>();

        services.TryAddSingleton(BuildPools);
        services.TryAddSingleton(BuildCatalog);
        services.TryAddSingleton<Cost.PricingTable>();
        services.TryAddSingleton<UpstreamModelList>();
        services.TryAddSingleton<Cost.BudgetTracker>();
        services.TryAddSingleton<Cost.IGatewayBudgets>(static sp => sp.GetRequiredService<Cost.BudgetTracker>());
        services.TryAddSingleton(sp => new GatewayInstruments(sp.GetService<System.Diagnostics.Metrics.IMeterFactory>(),
            GatewayInstruments.LatestConventionsAsked(Environment.GetEnvironmentVariable("OTEL_SEMCONV_STABILITY_OPT_IN"))));
        services.TryAddSingleton<GatewayMetrics>();
        services.TryAddSingleton<IGatewayMetrics>(sp => sp.GetRequiredService<GatewayMetrics>());
        services.TryAddSingleton<ResponseCache>();
        services.TryAddSingleton<AdmissionRateLimiter>();
        services.TryAddSingleton<AdmissionGate>();
        services.TryAddSingleton<PipelineChannels>();
        services.TryAddSingleton<RequestLog.RequestLogWriter>();
        services.TryAddSingleton<Tracing.GatewayTracing>();
        services.TryAddSingleton(sp =>
        {
            var metrics = sp.GetRequiredService<GatewayMetrics>();
            var pipeline = ActivatorUtilities.CreateInstance<GatewayPipeline>(sp);
            var catalog = sp.GetRequiredService<ModelCatalog>();
            metrics.Attach(pipeline.GetQueueDepths, () => catalog.AllDeployments, sp.GetRequiredService<TimeProvider>());
            Cost.PricingTable.ReportUnpriced(catalog.Groups.SelectMany(g => g.Deployments), sp.GetRequiredService<IOptions<GatewayOptions>>().Value.Budgets.Count > 0,
                sp.GetService<Microsoft.Extensions.Logging.ILoggerFactory>()?.CreateLogger("PipelineGateway.Cost") ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            metrics.AttachCache(sp.GetRequiredService<ResponseCache>());
            metrics.AttachRequestLog(sp.GetRequiredService<RequestLog.RequestLogWriter>());
            metrics.SetSystems(Tracing.GatewayTracing.Systems(sp.GetRequiredService<IOptions<GatewayOptions>>().Value));
            return pipeline;
        });
        services.TryAddSingleton(sp => sp.GetRequiredService<GatewayPipeline>().Flights);
        services.TryAddSingleton<HedgeRouter>();
        services.TryAddSingleton(sp => ActivatorUtilities.CreateInstance<WorkerServices>(sp, sp.GetRequiredService<PipelineChannels>().DeadLetter.Writer));
        services.TryAddSingleton<IGatewayQueue, GatewayQueue>();

        // Each stage is given the channel it reads and the one it feeds, and its own services (PipelineChannels).
        // Hosted services start in registration order and stop in reverse: consumers start before producers, the
        // lifetime (which accepts requests once every stage runs, and drives the drain) starts last and stops first.
        // The request log's writer starts first (the log is ready, budgets restored) and stops last (after the drain,
        // so every answered request is written).
        services.AddHostedService(sp => sp.GetRequiredService<RequestLog.RequestLogWriter>());
        services.TryAddSingleton<Admission.TokenizerWarmup>();
        services.AddHostedService(sp => sp.GetRequiredService<Admission.TokenizerWarmup>()); // before requests are accepted
        services.AddHostedService(sp => Stage<DeadLetterStage>(sp, c => c.DeadLetter, c => c.Routing.Writer));
        services.AddHostedService<ProviderWorkers>();
        services.AddHostedService(sp => Stage<RouterStage>(sp, c => c.Routing, c => c.Routing.Writer));
        services.AddHostedService(sp => Stage<CacheStage>(sp, c => c.CacheLookup, c => c.Routing.Writer));
        services.AddHostedService(sp => Stage<AdmissionStage>(sp, c => c.Admission, next: null));
        services.AddHostedService<PipelineLifetime>();
        return registration;
    }

    /// <summary>A stage over its input channel (which may hand it writes directly, see StageChannel) and the writer it feeds.</summary>
    private static TStage Stage<TStage>(IServiceProvider sp, Func<PipelineChannels, StageChannel> input, Func<PipelineChannels, System.Threading.Channels.ChannelWriter<WorkItem>>? next)
        where TStage : PipelineStage
    {
        var channels = sp.GetRequiredService<PipelineChannels>();
        var channel = input(channels);
        var stage = next is null
            ? ActivatorUtilities.CreateInstance<TStage>(sp, channel.Reader)
            : ActivatorUtilities.CreateInstance<TStage>(sp, channel.Reader, next(channels));
        channel.Attach(stage);
        return stage;
    }

    private static GatewayRegistration Registration(IServiceCollection services) =>
        (GatewayRegistration)services.First(d => d.ServiceType == typeof(GatewayRegistration)).ImplementationInstance!;

    /// <summary>The gateway's registration in a service collection: there is one, whatever the number of AddPipelineGateway calls.</summary>
    private sealed class GatewayRegistration(IServiceCollection services) : IGatewayBuilder
    {
        public IServiceCollection Services { get; } = services;

        /// <summary>Configuration sources already bound (binding one twice would add its providers and models twice).</summary>
        public HashSet<IConfiguration> Bound { get; } = new(ReferenceEqualityComparer.Instance);
    }

    private static ProviderPools BuildPools(IServiceProvider sp)
    {
        var options = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
        var factories = sp.GetServices<IProviderFactory>().ToDictionary(f => f.Type, StringComparer.OrdinalIgnoreCase);
        var custom = sp.GetServices<ILlmProvider>().ToDictionary(p => p.Name, StringComparer.Ordinal);
        var logger = sp.GetRequiredService<ILoggerFactory>().CreateLogger<ProviderWorkerPool>();
        var time = sp.GetRequiredService<TimeProvider>();
        var health = sp.GetRequiredService<HealthTracker>();
        var pools = new List<ProviderWorkerPool>();
        var owned = new List<IDisposable>();
        foreach (var o in options.Providers)
        {
            ILlmProvider provider;
            if (custom.Remove(o.Name, out var registered))
            {
                provider = registered; // the container owns it
            }
            else
            {
                provider = factories[o.Type].Create(o, sp);
                if (provider is IDisposable disposable)
                {
                    owned.Add(disposable);
                }
            }

            pools.Add(new ProviderWorkerPool(provider, o.Workers, o.QueueCapacity, logger, options.Fairness, time, health, o.RequestsPerMinute, o.TokensPerMinute));
        }

        // Providers registered in code with no configuration entry get the defaults.
        var defaults = new ProviderOptions();
        foreach (var provider in custom.Values)
        {
            pools.Add(new ProviderWorkerPool(provider, defaults.Workers, defaults.QueueCapacity, logger, options.Fairness, time, health));
        }

        return new ProviderPools(pools, owned);
    }

    private static ModelCatalog BuildCatalog(IServiceProvider sp)
    {
        var options = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
        var pools = sp.GetRequiredService<ProviderPools>();
        var strategies = sp.GetServices<IRoutingStrategy>().ToDictionary(s => s.Name, StringComparer.OrdinalIgnoreCase);
        var pricing = sp.GetRequiredService<Cost.PricingTable>();
        var logger = sp.GetService<Microsoft.Extensions.Logging.ILoggerFactory>()?.CreateLogger("PipelineGateway.Cost") ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        var budgets = options.Budgets.Count > 0;
        var health = sp.GetRequiredService<HealthTracker>();

        ModelGroup Make(ModelGroupOptions g, Func<string?, string> upstreamModel, WildcardModels? wildcard = null, string? rest = null)
        {
            var deployments = g.Deployments.Select((d, i) =>
            {
                pools.TryGet(d.Provider, out var pool);
                return new Deployment(g.Name, pool, upstreamModel(d.Model), d.Priority, d.Weight, i, d.InputPricePerMillion, d.OutputPricePerMillion, pricing);
            }).ToArray();
            return new ModelGroup(g, strategies[g.Strategy], deployments, options.Admission.ExpectedCompletionTokens) { Wildcard = wildcard, WildcardRest = rest };
        }

        var groups = new List<ModelGroup>();
        var wildcards = new List<WildcardModels>();
        foreach (var g in options.Models)
        {
            if (!ModelGroupOptions.IsWildcard(g.Name))
            {
                groups.Add(Make(g, model => model ?? g.Name));
                continue;
            }

            // A wildcard: its configuration as a template (never routed to), and the groups it makes, one per name.
            var template = Make(g, model => model ?? "*");
            wildcards.Add(new WildcardModels(template, g.MaxModels ?? ModelGroupOptions.DefaultMaxModels, g.ListUpstreamModels,
                (wildcard, rest) => Recalled(Make(
                    new ModelGroupOptions
                    {
                        Name = wildcard.Prefix + rest, // the prefix as configured, the rest as the caller wrote it
                        Strategy = g.Strategy,
                        Deployments = g.Deployments,
                        ExpectedCompletionTokens = g.ExpectedCompletionTokens,
                        Hedging = g.Hedging,
                    },
                    model => (model ?? "*").Replace("*", rest, StringComparison.Ordinal), wildcard, rest)),
                made => Cost.PricingTable.ReportUnpriced(made.Deployments, budgets, logger)));
        }

        return new ModelCatalog(groups, wildcards);

        // Another instance's verdicts on a group made here now (Redis health): asked for, applied a moment later.
        ModelGroup Recalled(ModelGroup made)
        {
            health.Recall(made);
            return made;
        }
    }
}
