using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PipelineGateway.Metrics;
using PipelineGateway.Routing;

namespace PipelineGateway.Hosting;

/// <summary>
/// Builds a gateway without a host of your own: the same registration <c>services.AddPipelineGateway()</c> makes,
/// in a private host, configured with the same typed methods (<see cref="GatewayBuilderExtensions"/>).
/// <c>await using var gateway = await new GatewayBuilder().AddSimulatedProvider("sim").AddModel("m", "sim").StartAsync();</c>
/// </summary>
public sealed class GatewayBuilder : IGatewayBuilder
{
    private readonly HostApplicationBuilder _host = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });

    public GatewayBuilder()
    {
        _host.Services.AddLogging();
        _host.Services.AddPipelineGateway();

        // The host waits for the pipeline's drain (and a margin) before it gives up on stopping.
        _host.Services.AddOptions<HostOptions>().Configure<Microsoft.Extensions.Options.IOptions<GatewayOptions>>((h, g) => h.ShutdownTimeout = g.Value.Pipeline.DrainTimeout + TimeSpan.FromSeconds(10));
    }

    public IServiceCollection Services => _host.Services;

    /// <summary>Logging for the private host (none by default).</summary>
    public GatewayBuilder ConfigureLogging(Action<ILoggingBuilder> configure)
    {
        configure(_host.Logging);
        return this;
    }

    /// <summary>Registers services of your own (extensions such as PipelineGateway.Redis use this).</summary>
    public GatewayBuilder ConfigureServices(Action<IServiceCollection> configure)
    {
        configure(_host.Services);
        return this;
    }

    /// <summary>A routing strategy that model groups can name.</summary>
    public GatewayBuilder AddRoutingStrategy<T>()
        where T : class, IRoutingStrategy
    {
        ((IGatewayBuilder)this).AddRoutingStrategy<T>();
        return this;
    }

    /// <summary>Builds and starts the gateway; fails with an <see cref="Microsoft.Extensions.Options.OptionsValidationException"/> naming the bad setting.</summary>
    public async Task<Gateway> StartAsync(CancellationToken cancellationToken = default)
    {
        var host = _host.Build();
        await host.StartAsync(cancellationToken).ConfigureAwait(false);
        return new Gateway(host);
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
