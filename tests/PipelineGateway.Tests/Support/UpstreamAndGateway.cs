using Microsoft.AspNetCore.Builder;
using PipelineGateway.Server;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// A foreign upstream (a real Kestrel on 127.0.0.1, the test's routes) and a gateway in front of it (the usual simulated
/// configuration plus settings made from the upstream's address), with a client of the gateway; disposed together.
/// </summary>
public sealed class UpstreamAndGateway : IAsyncDisposable
{
    private UpstreamAndGateway(WebApplication upstream, WebApplication gateway, HttpClient http)
    {
        Upstream = upstream;
        Gateway = gateway;
        Http = http;
    }

    public WebApplication Upstream { get; }

    public WebApplication Gateway { get; }

    /// <summary>A client of the gateway (its base address set).</summary>
    public HttpClient Http { get; }

    public static async Task<UpstreamAndGateway> StartAsync(Action<WebApplication> routes, Func<Uri, Dictionary<string, string?>> settings, CancellationToken cancellationToken)
    {
        var upstream = LoopbackApp.Build();
        routes(upstream);
        var address = await LoopbackApp.StartAsync(upstream, cancellationToken);
        var gateway = GatewayServer.Build(TestServerConfig.Simulated(settings(address)), "http://127.0.0.1:0", _ => { });
        return new UpstreamAndGateway(upstream, gateway, new HttpClient { BaseAddress = await GatewayServer.StartAsync(gateway, cancellationToken) });
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Gateway.StopAsync();
        await Gateway.DisposeAsync();
        await Upstream.StopAsync();
        await Upstream.DisposeAsync();
    }
}
