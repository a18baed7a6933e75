using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
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
    /// Adds the gateway, configured from <paramref name="configuration"/> (the <c>Gateway</c> section, or the
    /// section itself), validated at start. Register it before hosted services that submit work, so it stops
    /// after them (hosted services stop in reverse order).
    /// </summary>
    public static IServiceCollection AddPipelineGateway(this IServiceCollection services, IConfiguration configuration, Action<GatewayOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        var section = configuration.GetSection(GatewayOptions.SectionName);
        var source = section.Exists() ? section : configuration;
        return services.AddPipelineGateway(o =>
        {
            source.Bind(o);
            configure?.Invoke(o);
        });
    }

    /// <summary>Adds the gateway, configured in code.</summary>
    public static IServiceCollection AddPipelineGateway(this IServiceCollection services, Action<GatewayOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);

        services.AddOptions<GatewayOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<GatewayOptions>, GatewayOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.AddLogging();

        services.TryAddEnumerable(ServiceDescriptor.Singleton<IProviderFactory, SimulatedProviderFactory>());
        services.AddHttpClient();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IConfigureOptions<HttpClientFactoryOptions>, ProviderHttpClients>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IPostConfigureOptions<LoggerFilterOptions>, ProviderClientLogging>());
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
        services.TryAddSingleton<Cost.BudgetTracker>();
        services.TryAddSingleton(sp => new GatewayInstruments(sp.GetService<System.Diagnostics.Metrics.IMeterFactory>()));
        services.TryAddSingleton<GatewayMetrics>();
        services.TryAddSingleton<IGatewayMetrics>(sp => sp.GetRequiredService<GatewayMetrics>());
        services.TryAddSingleton<ResponseCache>();
        services.TryAddSingleton<AdmissionRateLimiter>();
        services.TryAddSingleton<AdmissionGate>();
        services.TryAddSingleton(sp =>
        {
            var pipeline = ActivatorUtilities.CreateInstance<GatewayPipeline>(sp);
            pipeline.Metrics.Attach(pipeline.GetQueueDepths, [.. pipeline.Catalog.AllDeployments], pipeline.Time);
            pipeline.Metrics.AttachCache(pipeline.Cache);
            pipeline.Metrics.SetSystems(sp.GetRequiredService<IOptions<GatewayOptions>>().Value.Providers.ToDictionary(
                p => p.Name,
                p => p.Type.ToUpperInvariant() switch { "OPENAI" or "OPENAICOMPATIBLE" => "openai", "AZUREOPENAI" => "az.ai.openai", "ANTHROPIC" => "anthropic", _ => p.Name },
                StringComparer.Ordinal));
            return pipeline;
        });
        services.TryAddSingleton<IGatewayQueue, GatewayQueue>();

        // Hosted services start in registration order and stop in reverse: consumers start before
        // producers, and admission (which drives the drain) stops first while the rest still run.
        services.AddHostedService<DeadLetterStage>();
        services.AddHostedService<DispatchStage>();
        services.AddHostedService<RouterStage>();
        services.AddHostedService<CacheStage>();
        services.AddHostedService<AdmissionStage>();
        return services;
    }

    /// <summary>Registers a provider implemented in code; deployments refer to it by <see cref="ILlmProvider.Name"/>.</summary>
    public static IServiceCollection AddGatewayProvider(this IServiceCollection services, ILlmProvider provider)
    {
        services.AddSingleton(provider);
        return services;
    }

    /// <summary>Registers a routing strategy that model groups can name.</summary>
    public static IServiceCollection AddRoutingStrategy<T>(this IServiceCollection services)
        where T : class, IRoutingStrategy
    {
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoutingStrategy, T>());
        return services;
    }

    private static ProviderPools BuildPools(IServiceProvider sp)
    {
        var options = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
        var factories = sp.GetServices<IProviderFactory>().ToDictionary(f => f.Type, StringComparer.OrdinalIgnoreCase);
        var custom = sp.GetServices<ILlmProvider>().ToDictionary(p => p.Name, StringComparer.Ordinal);
        var logger = sp.GetRequiredService<ILoggerFactory>().CreateLogger<ProviderWorkerPool>();
        var time = sp.GetRequiredService<TimeProvider>();
        var pools = new List<ProviderWorkerPool>();
        foreach (var o in options.Providers)
        {
            var provider = custom.Remove(o.Name, out var registered)
                ? registered
                : factories[o.Type].Create(o, sp);
            pools.Add(new ProviderWorkerPool(provider, o.Workers, o.QueueCapacity, logger, options.Fairness, time, o.RequestsPerMinute, o.TokensPerMinute));
        }

        // Providers registered in code with no configuration entry get the defaults.
        var defaults = new ProviderOptions();
        foreach (var provider in custom.Values)
        {
            pools.Add(new ProviderWorkerPool(provider, defaults.Workers, defaults.QueueCapacity, logger, options.Fairness, time));
        }

        return new ProviderPools(pools);
    }

    private static ModelCatalog BuildCatalog(IServiceProvider sp)
    {
        var options = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
        var pools = sp.GetRequiredService<ProviderPools>();
        var strategies = sp.GetServices<IRoutingStrategy>().ToDictionary(s => s.Name, StringComparer.OrdinalIgnoreCase);
        var pricing = sp.GetRequiredService<Cost.PricingTable>();
        var groups = options.Models.Select(g =>
        {
            var deployments = g.Deployments.Select((d, i) =>
            {
                pools.TryGet(d.Provider, out var pool);
                return new Deployment(g.Name, pool, d.Model ?? g.Name, d.Priority, d.Weight, i, d.InputPricePerMillion, d.OutputPricePerMillion, pricing);
            }).ToArray();
            return new ModelGroup(g, strategies[g.Strategy], deployments);
        });
        return new ModelCatalog(groups);
    }
}
