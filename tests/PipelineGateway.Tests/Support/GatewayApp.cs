using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Server;

namespace PipelineGateway.Tests.Support;

/// <summary>The gateway's HTTP server on 127.0.0.1 (port 0) built from the test's settings alone, with a client; disposed together.</summary>
public sealed class GatewayApp : IAsyncDisposable
{
    private GatewayApp(WebApplication app, HttpClient http)
    {
        App = app;
        Http = http;
    }

    public WebApplication App { get; }

    /// <summary>A client of the gateway (its base address set).</summary>
    public HttpClient Http { get; }

    public static async Task<GatewayApp> StartAsync(Dictionary<string, string?> settings, CancellationToken cancellationToken, Action<IServiceCollection>? services = null)
    {
        var app = GatewayServer.Build(new ConfigurationBuilder().AddInMemoryCollection(settings).Build(), "http://127.0.0.1:0", _ => { }, services);
        return new GatewayApp(app, new HttpClient { BaseAddress = await GatewayServer.StartAsync(app, cancellationToken) });
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
    }
}
