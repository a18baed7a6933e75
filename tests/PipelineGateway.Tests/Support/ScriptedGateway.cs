using Microsoft.AspNetCore.Builder;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// The gateway's HTTP server in front of a well-behaved simulator (<c>sim</c>) and one scripted provider per fault of a
/// <see cref="ScriptedUpstream"/> (each sends its fault's <c>x-fault</c> header): a model group named for each fault (its
/// one deployment) and <c>{fault}-then-sim</c> (the fault first, then <c>sim</c>) — how the operation routes' tests show a
/// hostile answer failing over and an upstream's refusal keeping its status.
/// </summary>
internal sealed class ScriptedGateway : IAsyncDisposable
{
    private readonly GatewayApp _gateway;

    private ScriptedGateway(GatewayApp gateway) => _gateway = gateway;

    public WebApplication App => _gateway.App;

    public HttpClient Http => _gateway.Http;

    /// <param name="model">The deployments' upstream model (null: the provider's default, none sent).</param>
    /// <param name="keyVariable">An environment variable holding the scripted providers' key (their answers may echo it).</param>
    public static async Task<ScriptedGateway> StartAsync(Uri simBase, ScriptedUpstream scripted, string[] faults, string? model, CancellationToken cancellationToken, string? keyVariable = null)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Providers:0:Type"] = "OpenAICompatible",
            ["Gateway:Providers:0:BaseUrl"] = new Uri(simBase, "v1").ToString(),
            ["Gateway:Pipeline:RetryBaseDelay"] = "00:00:00.001",
        };
        for (var f = 0; f < faults.Length; f++)
        {
            settings[$"Gateway:Providers:{f + 1}:Name"] = faults[f];
            settings[$"Gateway:Providers:{f + 1}:Type"] = "OpenAICompatible";
            settings[$"Gateway:Providers:{f + 1}:BaseUrl"] = new Uri(scripted.BaseAddress, "v1").ToString();
            settings[$"Gateway:Providers:{f + 1}:ApiKeyEnvironmentVariable"] = keyVariable;
            settings[$"Gateway:Providers:{f + 1}:Headers:x-fault"] = faults[f];
            settings[$"Gateway:Models:{2 * f}:Name"] = faults[f];
            settings[$"Gateway:Models:{2 * f}:Deployments:0:Provider"] = faults[f];
            settings[$"Gateway:Models:{2 * f}:Deployments:0:Model"] = model;
            settings[$"Gateway:Models:{(2 * f) + 1}:Name"] = faults[f] + "-then-sim";
            settings[$"Gateway:Models:{(2 * f) + 1}:Strategy"] = "Priority";
            settings[$"Gateway:Models:{(2 * f) + 1}:Deployments:0:Provider"] = faults[f];
            settings[$"Gateway:Models:{(2 * f) + 1}:Deployments:0:Model"] = model;
            settings[$"Gateway:Models:{(2 * f) + 1}:Deployments:0:Priority"] = "0";
            settings[$"Gateway:Models:{(2 * f) + 1}:Deployments:1:Provider"] = "sim";
            settings[$"Gateway:Models:{(2 * f) + 1}:Deployments:1:Model"] = model;
            settings[$"Gateway:Models:{(2 * f) + 1}:Deployments:1:Priority"] = "1";
        }

        return new ScriptedGateway(await GatewayApp.StartAsync(settings, cancellationToken));
    }

    public ValueTask DisposeAsync() => _gateway.DisposeAsync();
}
