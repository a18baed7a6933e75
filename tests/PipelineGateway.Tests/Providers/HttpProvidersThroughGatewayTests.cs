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

    /// <summary>
    /// <c>response_format</c> against an Anthropic deployment, which has none: the schema goes as a tool the model is made
    /// to call (the simulator, like Anthropic, calls a forced tool with no text before it) and its input comes back as
    /// the answer's content — whole and streamed, over real HTTP.
    /// </summary>
    [Fact]
    public async Task A_JSON_schema_answer_from_an_Anthropic_deployment_is_the_content_not_a_tool_call()
    {
        var keyVar = "PGW_TEST_KEY_" + Guid.NewGuid().ToString("N");
        Environment.SetEnvironmentVariable(keyVar, "sk-ant-test");
        try
        {
            await using var upstream = await SimulatorServer.StartAsync(new SimulatorOptions { ApiKey = "sk-ant-test" }, cancellationToken: Ct);
            await using var gateway = await new GatewayBuilder()
                .Configure(o =>
                {
                    o.Providers.Add(new ProviderOptions { Name = "anthropic", Type = ProviderTypes.Anthropic, BaseUrl = new Uri(upstream.BaseAddress, "v1").ToString(), ApiKeyEnvironmentVariable = keyVar });
                    o.Models.Add(new ModelGroupOptions { Name = "claude", Deployments = [new DeploymentOptions { Provider = "anthropic", Model = "claude-sonnet-4-5" }] });
                })
                .StartAsync(Ct);
            ChatCompletionRequest Ask() => System.Text.Json.JsonSerializer.Deserialize("""
                {"model":"claude","messages":[{"role":"user","content":"Weather in Oslo as JSON"}],
                 "response_format":{"type":"json_schema","json_schema":{"name":"weather","strict":true,
                   "schema":{"type":"object","properties":{"city":{"type":"string"},"celsius":{"type":"number"},"sunny":{"type":"boolean"}},"required":["city","celsius","sunny"],"additionalProperties":false}}}}
                """, GatewayJsonContext.Default.ChatCompletionRequest)!;

            var whole = await gateway.SubmitAsync(Ask(), Ct);
            var chunks = await gateway.StreamAsync(Ask(), Ct).ToListAsync(Ct);

            whole.Choices[0].Message!.ToolCalls.Should().BeNull("the JSON tool is the gateway's, not the caller's");
            whole.FinishReason.Should().Be(FinishReasons.Stop);
            var answer = System.Text.Json.JsonDocument.Parse(whole.Content!).RootElement;
            answer.GetProperty("city").GetString().Should().NotBeEmpty();
            answer.GetProperty("celsius").GetDouble().Should().Be(3);
            answer.GetProperty("sunny").GetBoolean().Should().BeTrue();
            var streamed = string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content));
            System.Text.Json.JsonDocument.Parse(streamed).RootElement.GetProperty("celsius").GetDouble().Should().Be(3);
            chunks.SelectMany(c => c.Choices).Should().NotContain(c => c.Delta.ToolCalls != null);
            chunks.SelectMany(c => c.Choices).Last(c => c.FinishReason != null).FinishReason.Should().Be(FinishReasons.Stop);
        }
        finally
        {
            Environment.SetEnvironmentVariable(keyVar, null);
        }
    }

    /// <summary>
    /// The simulator's <c>--openai-extras</c> (what the streaming benchmarks use to send events as OpenAI does): every
    /// event carries <c>service_tier</c>, <c>system_fingerprint</c> and a padding of varying length, and a stream through
    /// the gateway keeps them and the text.
    /// </summary>
    [Fact]
    public async Task Events_shaped_as_OpenAI_sends_them_keep_their_extra_members_and_text_through_the_gateway()
    {
        var keyVar = "PGW_TEST_KEY_" + Guid.NewGuid().ToString("N");
        var key = "sk-" + Guid.NewGuid().ToString("N");
        Environment.SetEnvironmentVariable(keyVar, key);
        try
        {
            await using var upstream = await SimulatorServer.StartAsync(new SimulatorOptions { ApiKey = key, OpenAIExtras = true }, cancellationToken: Ct);
            await using var gateway = await new GatewayBuilder()
                .Configure(o =>
                {
                    o.Providers.Add(new ProviderOptions { Name = "openai", Type = ProviderTypes.OpenAI, BaseUrl = new Uri(upstream.BaseAddress, "v1").ToString(), ApiKeyEnvironmentVariable = keyVar });
                    o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "openai", Model = "gpt-4o" }] });
                })
                .StartAsync(Ct);

            var whole = await gateway.SubmitAsync(TestGateway.Request("m"), Ct);
            var chunks = await gateway.StreamAsync(TestGateway.Request("m"), Ct).ToListAsync(Ct);

            var events = chunks.Where(c => c.Choices.Count > 0).ToList();
            events.Should().NotBeEmpty().And.OnlyContain(c => c.SystemFingerprint == "fp_sim0000001"
                && c.AdditionalProperties!["service_tier"].GetString() == "default"
                && c.AdditionalProperties["obfuscation"].GetString()!.Length > 0);
            events.Select(c => c.AdditionalProperties!["obfuscation"].GetString()!.Length).Distinct().Should().HaveCountGreaterThan(1, "the padding varies from event to event");
            string.Concat(events.Select(c => c.Choices[0].Delta.Content)).Should().Be(whole.Content);
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
