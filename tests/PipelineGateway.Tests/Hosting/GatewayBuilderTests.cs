using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using PipelineGateway.Admission;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Hosting;

/// <summary><c>AddPipelineGateway</c>'s builder: typed methods that say what the configuration file says, and idempotent registration.</summary>
public sealed class GatewayBuilderTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private const string Json = """
        {
          "Gateway": {
            "Providers": [
              { "Name": "sim", "Type": "Simulated", "Workers": 8 },
              { "Name": "backup", "Type": "Simulated" }
            ],
            "Models": [
              { "Name": "chat", "Strategy": "Priority", "Aliases": [ "default" ], "Fallbacks": [ "small" ],
                "Hedging": { "Delay": "00:00:03" },
                "Deployments": [ { "Provider": "sim", "Model": "gpt-4o", "Priority": 0, "Weight": 1 },
                                 { "Provider": "backup", "Model": "gpt-4o-mini", "Priority": 1, "Weight": 1, "InputPricePerMillion": 0.1, "OutputPricePerMillion": 0.4 } ] },
              { "Name": "small", "Strategy": "RoundRobin", "Deployments": [ { "Provider": "sim", "Priority": 0, "Weight": 1 } ] }
            ],
            "Admission": { "PartitionBy": "Key", "RateLimits": [ { "Limit": 100000, "Window": "00:01:00", "Unit": "Tokens", "Algorithm": "SlidingWindow", "Burst": 150 } ] },
            "Cache": { "Enabled": true, "DefaultTtl": "00:10:00", "MaxEntries": 500 },
            "Budgets": [ { "LimitUsd": 20, "Period": "Day", "Scope": "Key", "Key": "team-a" } ],
            "Pricing": { "my-model": { "InputPerMillion": 1, "OutputPerMillion": 2 } },
            "Pipeline": { "MaxInFlight": 64 },
            "Fairness": { "Weights": { "team-a": 3 } }
          }
        }
        """;

    private static GatewayOptions Options(Action<IServiceCollection> register)
    {
        var services = new ServiceCollection();
        register(services);
        return services.BuildServiceProvider().GetRequiredService<IOptions<GatewayOptions>>().Value;
    }

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static string Canonical(GatewayOptions o) => JsonSerializer.Serialize(o, Indented);

    [Fact]
    public void The_typed_methods_say_what_the_configuration_file_says()
    {
        var fromFile = Options(s => s.AddPipelineGateway(new ConfigurationBuilder().AddJsonStream(new MemoryStream(System.Text.Encoding.UTF8.GetBytes(Json))).Build()));
        var fromCode = Options(s => s.AddPipelineGateway()
            .AddSimulatedProvider("sim", workers: 8)
            .AddSimulatedProvider("backup")
            .AddModel("chat", m => m
                .Strategy(RoutingStrategyNames.Priority)
                .Alias("default")
                .FallbackTo("small")
                .Hedge(TimeSpan.FromSeconds(3))
                .Deploy("sim", model: "gpt-4o")
                .Deploy("backup", model: "gpt-4o-mini", inputPricePerMillion: 0.1m, outputPricePerMillion: 0.4m))
            .AddModel("small", "sim")
            .PartitionRateLimitsBy(RateLimitPartition.Key)
            .AddRateLimit(100_000, TimeSpan.FromMinutes(1), RateLimitUnit.Tokens, RateLimitAlgorithm.SlidingWindow, burst: 150)
            .AddCache(TimeSpan.FromMinutes(10), maxEntries: 500)
            .AddBudget(20m, BudgetPeriod.Day, BudgetScope.Key, key: "team-a")
            .AddPrice("my-model", 1m, 2m)
            .ConfigurePipeline(p => p.MaxInFlight = 64)
            .WithTenantWeight("team-a", 3));

        // The simulated providers' own options are created by the builder and left null by the file: the rest is equal.
        fromFile.Providers.ForEach(p => p.Simulated ??= new PipelineGateway.Providers.Simulated.SimulatedProviderOptions());
        Canonical(fromCode).Should().Be(Canonical(fromFile));
    }

    /// <summary>
    /// A setting nothing reads anywhere in the Gateway section — a provider, its simulated options, a model group, a
    /// deployment, a rate-limit rule, the cache, a price, the section itself — stops start-up naming it: a typo would
    /// leave the default in force, and an API key written into the file would leave the provider without one — that
    /// message says where keys go, and never repeats the value. Sections other parts read (Server, Redis) are theirs.
    /// </summary>
    [Fact]
    public void A_setting_nothing_reads_stops_start_up_naming_it_and_a_key_in_the_file_is_never_echoed()
    {
        const string Secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
        var json = Json
            .Replace("""{ "Name": "sim", "Type": "Simulated", "Workers": 8 }""", $$"""{ "Name": "sim", "Type": "Simulated", "Workers": 8, "ApiKey": "{{Secret}}", "Timout": "00:00:05", "Simulated": { "LatencyMss": 5 } }""", StringComparison.Ordinal)
            .Replace("""{ "Name": "small", "Strategy": "RoundRobin",""", """{ "Name": "small", "Stratgy": "Priority", "Strategy": "RoundRobin",""", StringComparison.Ordinal)
            .Replace("""{ "Provider": "sim", "Model": "gpt-4o", "Priority": 0, "Weight": 1 }""", """{ "Provider": "sim", "Model": "gpt-4o", "Priority": 0, "Weight": 1, "Prio": 2 }""", StringComparison.Ordinal)
            .Replace("""{ "Limit": 100000,""", """{ "Windw": "00:00:01", "Limit": 100000,""", StringComparison.Ordinal)
            .Replace("\"Cache\": { \"Enabled\": true,", "\"Cache\": { \"Enabeld\": false, \"Enabled\": true,", StringComparison.Ordinal)
            .Replace("""{ "InputPerMillion": 1,""", """{ "InputPerMilion": 1, "InputPerMillion": 1,""", StringComparison.Ordinal)
            .Replace("\"Pipeline\": {", "\"Pipline\": { \"MaxInFlight\": 8 }, \"Server\": { \"Anything\": 1 }, \"Redis\": { \"Anything\": 1 }, \"Pipeline\": {", StringComparison.Ordinal);
        var services = new ServiceCollection();
        services.AddPipelineGateway(new ConfigurationBuilder().AddJsonStream(new MemoryStream(System.Text.Encoding.UTF8.GetBytes(json))).Build());

        var act = () => services.BuildServiceProvider().GetRequiredService<IOptions<GatewayOptions>>().Value;

        var failures = act.Should().Throw<OptionsValidationException>().Which.Failures.ToList();
        failures.Should().HaveCount(9, "the sections other parts read (Server, Redis) are theirs");
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Providers:0:ApiKey is not read", StringComparison.Ordinal)).Which.Should().Contain("ApiKeyEnvironmentVariable");
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Providers:0:Timout is not a setting the gateway reads", StringComparison.Ordinal)).Which.Should().Contain("the settings read there are ").And.Contain(" Timeout,");
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Providers:0:Simulated:LatencyMss is not", StringComparison.Ordinal));
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Models:1:Stratgy is not a setting the gateway reads", StringComparison.Ordinal));
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Models:0:Deployments:0:Prio is not a setting the gateway reads", StringComparison.Ordinal));
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Admission:RateLimits:0:Windw is not", StringComparison.Ordinal)).Which.Should().Contain("Window");
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Cache:Enabeld is not", StringComparison.Ordinal));
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Pricing:my-model:InputPerMilion is not", StringComparison.Ordinal));
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Pipline is not", StringComparison.Ordinal)).Which.Should().Contain("Pipeline").And.Contain("Server, Redis, Telemetry");
        string.Join("\n", failures).Should().NotContain("abcdefghijklmnop", "the key's value is never repeated");
    }

    /// <summary>
    /// The sections other packages read are checked by them the same way: a typo in <c>Gateway:Server</c> stops the
    /// server's build, one in <c>Gateway:Redis</c> stops start-up; a gateway key written in plain text is told to
    /// be stored as its SHA-256, and not repeated.
    /// </summary>
    [Fact]
    public void The_server_and_Redis_sections_refuse_a_setting_nothing_reads_too()
    {
        var server = () => PipelineGateway.Server.GatewayServer.Build(TestServerConfig.Simulated(new()
        {
            ["Gateway:Server:MaxRequestBodyByte"] = "5",
            ["Gateway:Server:Keys:0:Id"] = "a",
            ["Gateway:Server:Keys:0:Sha256"] = new string('0', 64),
            ["Gateway:Server:Keys:0:Key"] = "sk-gw-plaintext-abcdefghijk",
        }), "http://127.0.0.1:0", _ => { });

        var failures = server.Should().Throw<OptionsValidationException>().Which.Failures.ToList();
        failures.Should().HaveCount(2);
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Server:MaxRequestBodyByte is not", StringComparison.Ordinal)).Which.Should().Contain("MaxRequestBodyBytes");
        failures.Should().ContainSingle(f => f.StartsWith("Gateway:Server:Keys:0:Key is not read", StringComparison.Ordinal)).Which.Should().Contain("Sha256").And.NotContain("abcdefghijk");

        var services = new ServiceCollection();
        PipelineGateway.Redis.RedisServiceCollectionExtensions.AddPipelineGatewayRedis(services, new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Redis:Configuration"] = "127.0.0.1:1",
            ["Gateway:Redis:RateLimts"] = "true",
        }).Build());

        var redis = () => services.BuildServiceProvider().GetRequiredService<IOptions<PipelineGateway.Redis.RedisOptions>>().Value;
        redis.Should().Throw<OptionsValidationException>().Which.Message.Should().Contain("Gateway:Redis:RateLimts is not a setting the gateway reads").And.Contain("RateLimits");
    }

    [Fact]
    public async Task Registering_twice_is_one_gateway_with_its_configuration_bound_once()
    {
        var configuration = new ConfigurationBuilder().AddJsonStream(new MemoryStream(System.Text.Encoding.UTF8.GetBytes(Json))).Build();
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });

        var first = builder.Services.AddPipelineGateway(configuration);
        var second = builder.Services.AddPipelineGateway(configuration);
        builder.Services.AddPipelineGateway().AddModel("extra", "sim");

        second.Should().BeSameAs(first);
        builder.Services.Count(d => d.ServiceType == typeof(IHostedService)).Should().Be(8, "five stages, the pipeline lifetime, the request log writer and the tokenizer warm-up, registered once");
        using var host = builder.Build();
        await host.StartAsync(Ct);
        var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        options.Providers.Select(p => p.Name).Should().Equal("sim", "backup");
        options.Models.Select(m => m.Name).Should().Equal("chat", "small", "extra");
        var answer = await host.Services.GetRequiredService<IGatewayQueue>().SubmitAsync(TestGateway.Request("extra"), Ct);
        answer.Choices.Should().NotBeEmpty();
        await host.StopAsync(Ct);
    }

    [Fact]
    public async Task A_model_named_with_its_providers_spreads_over_all_of_them()
    {
        await using var gateway = await new GatewayBuilder()
            .AddProvider(new FakeProvider("p1"))
            .AddProvider(new FakeProvider("p2"))
            .AddModel("m", "p1", "p2")
            .StartAsync(Ct);

        var group = gateway.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Models.Single();
        group.Strategy.Should().Be(RoutingStrategyNames.RoundRobin);
        group.Deployments.Select(d => d.Provider).Should().Equal(["p1", "p2"], "no provider is taken for a strategy");
    }

    [Fact]
    public async Task A_models_expected_completion_tokens_default_to_admissions_and_one_value_serves_routing_limits_and_budgets()
    {
        await using var gateway = await new GatewayBuilder()
            .AddProvider(new FakeProvider("p"))
            .AddModel("long", m => m.Deploy("p").ExpectCompletionTokens(4000))
            .AddModel("short", "p")
            .Configure(o => o.Admission.ExpectedCompletionTokens = 64)
            .StartAsync(Ct);

        var catalog = gateway.Services.GetRequiredService<ModelCatalog>();
        catalog.Groups.Single(g => g.Name == "long").ExpectedCompletionTokens.Should().Be(4000);
        catalog.Groups.Single(g => g.Name == "short").ExpectedCompletionTokens.Should().Be(64, "a model without its own setting uses admission's");
    }
}
