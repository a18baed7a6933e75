using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Sqlite;
using PipelineGateway.Simulator;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// The gateway's HTTP server in front of one simulator per provider (so every upstream call is counted), each with its
/// scripted fault if any, and model groups deploying them in priority order — what the HTTP contract tests run against.
/// Providers of every type but <c>OpenAICompatible</c> get an API key (their types require one).
/// </summary>
internal sealed class SimulatorFleet : IAsyncDisposable
{
    private SimulatorFleet(WebApplication app, Uri baseAddress, Dictionary<string, SimulatorServer> sims)
    {
        App = app;
        Base = baseAddress;
        Sims = sims;
    }

    public WebApplication App { get; }

    public Uri Base { get; }

    /// <summary>Provider name → its simulator.</summary>
    public Dictionary<string, SimulatorServer> Sims { get; }

    /// <summary>An OpenAI-compatible simulator behind model <c>gpt</c> and a Claude one behind <c>claude</c> (the Responses and interop tests' pair).</summary>
    public static Task<SimulatorFleet> GptAndClaudeAsync(CancellationToken cancellationToken, Action<IServiceCollection>? services = null) => StartAsync(
        [("sim", "OpenAICompatible", null), ("claude", "Anthropic", null)],
        [("gpt", ["sim"]), ("claude", ["claude"])],
        "claude-sonnet-4-5",
        [],
        cancellationToken,
        services);

    public static async Task<SimulatorFleet> StartAsync(
        (string Name, string Type, string? Fault)[] providers,
        (string Model, string[] Providers)[] models,
        string deploymentModel,
        Dictionary<string, string?> settings,
        CancellationToken cancellationToken,
        Action<IServiceCollection>? services = null)
    {
        const string KeyVariable = "PGW_TEST_FLEET_UPSTREAM_KEY";
        Environment.SetEnvironmentVariable(KeyVariable, "sk-test-upstream");
        var sims = new Dictionary<string, SimulatorServer>();
        for (var i = 0; i < providers.Length; i++)
        {
            var (name, type, fault) = providers[i];
            var sim = await SimulatorServer.StartAsync(new SimulatorOptions(), cancellationToken: cancellationToken);
            sims[name] = sim;
            settings[$"Gateway:Providers:{i}:Name"] = name;
            settings[$"Gateway:Providers:{i}:Type"] = type;
            settings[$"Gateway:Providers:{i}:BaseUrl"] = new Uri(sim.BaseAddress, "v1").ToString();
            settings[$"Gateway:Providers:{i}:ApiKeyEnvironmentVariable"] = type == "OpenAICompatible" ? null : KeyVariable;
            if (fault is not null)
            {
                settings[$"Gateway:Providers:{i}:Headers:x-sim-fault"] = fault;
            }
        }

        for (var m = 0; m < models.Length; m++)
        {
            settings[$"Gateway:Models:{m}:Name"] = models[m].Model;
            settings[$"Gateway:Models:{m}:Strategy"] = "Priority";
            for (var d = 0; d < models[m].Providers.Length; d++)
            {
                settings[$"Gateway:Models:{m}:Deployments:{d}:Provider"] = models[m].Providers[d];
                settings[$"Gateway:Models:{m}:Deployments:{d}:Model"] = deploymentModel;
                settings[$"Gateway:Models:{m}:Deployments:{d}:Priority"] = d.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        var app = GatewayServer.Build(new ConfigurationBuilder().AddInMemoryCollection(settings).Build(), "http://127.0.0.1:0", _ => { }, services);
        return new SimulatorFleet(app, await GatewayServer.StartAsync(app, cancellationToken), sims);
    }

    /// <summary>The same, with the SQLite request log at <paramref name="database"/> keeping prompts and answers.</summary>
    public static Task<SimulatorFleet> StartLoggedAsync(
        (string Name, string Type, string? Fault)[] providers,
        (string Model, string[] Providers)[] models,
        string deploymentModel,
        string database,
        Dictionary<string, string?> settings,
        CancellationToken cancellationToken)
    {
        settings["Gateway:RequestLog:Path"] = database;
        settings["Gateway:RequestLog:LogBodies"] = "true";
        return StartAsync(providers, models, deploymentModel, settings, cancellationToken, static s => s.AddPipelineGateway().AddSqliteRequestLog());
    }

    /// <summary>The request log's newest row (written out first), for the answer whose headers named <paramref name="requestId"/>.</summary>
    public async Task<JsonElement> LogRowAsync(string requestId, CancellationToken cancellationToken)
    {
        await App.Services.GetRequiredService<PipelineGateway.RequestLog.RequestLogWriter>().FlushAsync(cancellationToken);
        using var http = new HttpClient { BaseAddress = Base };
        var rows = JsonDocument.Parse(await http.GetStringAsync("v1/gateway/logs?limit=20", cancellationToken)).RootElement.GetProperty("data");
        return rows.EnumerateArray().Single(r => r.GetProperty("request_id").GetString() == requestId).Clone();
    }

    /// <summary>The request log's spend total equals the metrics' cost total: they bill alike.</summary>
    public async Task SpendShouldBeTheMetricsAsync(CancellationToken cancellationToken)
    {
        await App.Services.GetRequiredService<PipelineGateway.RequestLog.RequestLogWriter>().FlushAsync(cancellationToken);
        using var http = new HttpClient { BaseAddress = Base };
        var metrics = App.Services.GetRequiredService<PipelineGateway.Metrics.IGatewayMetrics>().GetSnapshot();
        JsonDocument.Parse(await http.GetStringAsync("v1/gateway/spend?since=1d", cancellationToken)).RootElement.GetProperty("total_cost_usd").GetDecimal()
            .Should().Be(metrics.TotalCost, "the request log and the metrics bill alike");
    }

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync();
        await App.DisposeAsync();
        foreach (var sim in Sims.Values)
        {
            await sim.DisposeAsync();
        }
    }
}
