using FluentAssertions;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Routing;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>The real adapters, configured like a user would, behind the whole pipeline.</summary>
public sealed class HttpProvidersThroughGatewayTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_failing_OpenAI_upstream_falls_back_to_Anthropic_over_real_HTTP()
    {
        var keyVar = "PGW_TEST_KEY_" + Guid.NewGuid().ToString("N");
        var key = "sk-" + Guid.NewGuid().ToString("N");
        Environment.SetEnvironmentVariable(keyVar, key);
        var logs = new CapturingLoggerProvider();
        try
        {
            await using var broken = await SimulatorServer.StartAsync(new SimulatorOptions { ApiKey = key, ErrorRate = 1, ErrorStatus = 503 }, cancellationToken: Ct);
            await using var healthy = await SimulatorServer.StartAsync(new SimulatorOptions { ApiKey = key }, cancellationToken: Ct);
            await using var gateway = await new GatewayBuilder()
                .ConfigureLogging(l => l.AddProvider(logs))
                .Configure(o =>
                {
                    o.Providers.Add(new ProviderOptions { Name = "openai", Type = ProviderTypes.OpenAI, BaseUrl = new Uri(broken.BaseAddress, "v1").ToString(), ApiKeyEnvironmentVariable = keyVar });
                    o.Providers.Add(new ProviderOptions { Name = "anthropic", Type = ProviderTypes.Anthropic, BaseUrl = new Uri(healthy.BaseAddress, "v1").ToString(), ApiKeyEnvironmentVariable = keyVar });
                    o.Models.Add(new ModelGroupOptions
                    {
                        Name = "smart",
                        Strategy = "Priority",
                        Deployments =
                        [
                            new DeploymentOptions { Provider = "openai", Model = "gpt-4o", Priority = 0 },
                            new DeploymentOptions { Provider = "anthropic", Model = "claude-sonnet-4-5", Priority = 1 },
                        ],
                    });
                })
                .StartAsync(Ct);

            var whole = await gateway.SubmitAsync(TestGateway.Request("smart"), Ct);
            var chunks = await gateway.StreamAsync(TestGateway.Request("smart"), Ct).ToListAsync(Ct);

            whole.Gateway!.Provider.Should().Be("anthropic");
            whole.Gateway.Attempts.Select(a => (a.Provider, a.StatusCode)).Should().Equal(("openai", 503), ("anthropic", null));
            whole.Content.Should().NotBeEmpty();
            chunks[0].Gateway!.Provider.Should().Be("anthropic");
            string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be(whole.Content);
            broken.Requests.Should().Be(2);
            logs.All.Should().NotContain(key);
        }
        finally
        {
            Environment.SetEnvironmentVariable(keyVar, null);
        }
    }

    [Fact]
    public async Task A_missing_key_stops_start_up_naming_the_variable()
    {
        var act = async () => await new GatewayBuilder()
            .Configure(o =>
            {
                o.Providers.Add(new ProviderOptions { Name = "openai", Type = ProviderTypes.OpenAI, ApiKeyEnvironmentVariable = "PGW_DEFINITELY_UNSET_" + Guid.NewGuid().ToString("N") });
                o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "openai" }] });
            })
            .StartAsync(Ct);

        (await act.Should().ThrowAsync<Microsoft.Extensions.Options.OptionsValidationException>())
            .Which.Failures.Should().Contain(f => f.Contains("Gateway:Providers:0:ApiKeyEnvironmentVariable names 'PGW_DEFINITELY_UNSET_"));
    }
}
