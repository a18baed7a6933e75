using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PipelineGateway.Admission;
using PipelineGateway.Metrics;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Routing;

namespace PipelineGateway.Hosting;

/// <summary>
/// Builds a gateway without a host of your own: the same pipeline and hosted stages, run in a
/// private host. <c>await using var gateway = await new GatewayBuilder()...StartAsync();</c>
/// </summary>
public sealed class GatewayBuilder
{
    private readonly GatewayOptions _options = new();
    private readonly List<ILlmProvider> _custom = [];
    private TimeProvider? _time;
    private Action<ILoggingBuilder>? _logging;
    private readonly List<Action<IServiceCollection>> _services = [];

    /// <summary>Adds a simulated provider (no keys; latency and failures as configured).</summary>
    public GatewayBuilder AddSimulatedProvider(string name, Action<SimulatedProviderOptions>? configure = null, int workers = 16)
    {
        var sim = new SimulatedProviderOptions();
        configure?.Invoke(sim);
        _options.Providers.Add(new ProviderOptions { Name = name, Type = ProviderTypes.Simulated, Workers = workers, Simulated = sim });
        return this;
    }

    /// <summary>Adds a provider implemented in code.</summary>
    public GatewayBuilder AddProvider(ILlmProvider provider, int workers = 16, int queueCapacity = 256)
    {
        _custom.Add(provider);
        _options.Providers.Add(new ProviderOptions { Name = provider.Name, Type = ProviderTypes.Custom, Workers = workers, QueueCapacity = queueCapacity });
        return this;
    }

    /// <summary>Adds a model group served by the named providers (in order, for the Priority strategy).</summary>
    public GatewayBuilder AddModel(string name, string strategy = RoutingStrategyNames.RoundRobin, params string[] providers)
    {
        var group = new ModelGroupOptions { Name = name, Strategy = strategy };
        for (var i = 0; i < providers.Length; i++)
        {
            group.Deployments.Add(new DeploymentOptions { Provider = providers[i], Priority = i });
        }

        _options.Models.Add(group);
        return this;
    }

    /// <summary>Adds a request limit, for example 60 per minute.</summary>
    public GatewayBuilder WithRateLimit(long requests, TimeSpan per, RateLimitAlgorithm algorithm = RateLimitAlgorithm.TokenBucket)
    {
        _options.Admission.RateLimits.Add(new RateLimitRule { Limit = requests, Window = per, Algorithm = algorithm });
        return this;
    }

    /// <summary>Turns the response cache on with this TTL.</summary>
    public GatewayBuilder WithCache(TimeSpan ttl, int maxEntries = 10_000)
    {
        _options.Cache.Enabled = true;
        _options.Cache.DefaultTtl = ttl;
        _options.Cache.MaxEntries = maxEntries;
        return this;
    }

    /// <summary>Adds a spending limit, for example $50 a day for everyone.</summary>
    public GatewayBuilder WithBudget(decimal usd, Cost.BudgetPeriod period = Cost.BudgetPeriod.Month, Cost.BudgetScope scope = Cost.BudgetScope.Global)
    {
        _options.Budgets.Add(new Cost.BudgetOptions { LimitUsd = usd, Period = period, Scope = scope });
        return this;
    }

    /// <summary>Changes any other option.</summary>
    public GatewayBuilder Configure(Action<GatewayOptions> configure)
    {
        configure(_options);
        return this;
    }

    public GatewayBuilder WithTimeProvider(TimeProvider time)
    {
        _time = time;
        return this;
    }

    public GatewayBuilder WithLogging(Action<ILoggingBuilder> configure)
    {
        _logging = configure;
        return this;
    }

    /// <summary>Registers services of your own (extensions such as PipelineGateway.Redis use this).</summary>
    public GatewayBuilder ConfigureServices(Action<IServiceCollection> configure)
    {
        _services.Add(configure);
        return this;
    }

    /// <summary>Builds and starts the gateway; fails with an <see cref="Microsoft.Extensions.Options.OptionsValidationException"/> naming the bad setting.</summary>
    public async Task<Gateway> StartAsync(CancellationToken cancellationToken = default)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddLogging(l => _logging?.Invoke(l));
        if (_time is not null)
        {
            builder.Services.AddSingleton(_time);
        }

        foreach (var provider in _custom)
        {
            builder.Services.AddGatewayProvider(provider);
        }

        foreach (var configure in _services)
        {
            configure(builder.Services);
        }

        var snapshot = _options;
        builder.Services.AddPipelineGateway(o => Copy(snapshot, o));
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = snapshot.Pipeline.DrainTimeout + TimeSpan.FromSeconds(10));
        var host = builder.Build();
        await host.StartAsync(cancellationToken).ConfigureAwait(false);
        return new Gateway(host);
    }

    private static void Copy(GatewayOptions from, GatewayOptions to)
    {
        to.Pipeline = from.Pipeline;
        to.Providers = from.Providers;
        to.Models = from.Models;
        to.Admission = from.Admission;
        to.Cache = from.Cache;
        to.Health = from.Health;
        to.Pricing = from.Pricing;
        to.Budgets = from.Budgets;
        to.Fairness = from.Fairness;
    }
}

/// <summary>A running gateway built by <see cref="GatewayBuilder"/>. Disposing it drains and stops it.</summary>
public sealed class Gateway : IGatewayQueue, IAsyncDisposable
{
    private readonly IHost _host;
    private readonly IGatewayQueue _queue;

    internal Gateway(IHost host)
    {
        _host = host;
        _queue = host.Services.GetRequiredService<IGatewayQueue>();
        Metrics = host.Services.GetRequiredService<IGatewayMetrics>();
    }

    public IGatewayMetrics Metrics { get; }

    public IServiceProvider Services => _host.Services;

    public ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
        _queue.SubmitAsync(request, cancellationToken);

    public ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, SubmitMode mode, CancellationToken cancellationToken = default) =>
        _queue.SubmitAsync(request, mode, cancellationToken);

    public IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
        _queue.StreamAsync(request, cancellationToken);

    public IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, SubmitMode mode, CancellationToken cancellationToken = default) =>
        _queue.StreamAsync(request, mode, cancellationToken);

    /// <summary>Stops admission, drains in-flight work within the drain timeout, fails the rest explicitly.</summary>
    public Task StopAsync(CancellationToken cancellationToken = default) => _host.StopAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _host.StopAsync().ConfigureAwait(false);
        _host.Dispose();
    }
}
