using System.ComponentModel;
using FluentAssertions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Hosting;
using PipelineGateway.Simulator;

namespace PipelineGateway.Tests.AIClient;

/// <summary>
/// The gateway's own <c>IChatClient</c> in a Microsoft.Extensions.AI tool loop on Claude with reasoning on: Claude's signed
/// thinking blocks ride the answer's reasoning content (<c>ProtectedData</c>), which the function-invoking client replays
/// in the next step, so Claude thinks on there — whole and streamed. (Without them that step was answered without
/// thinking: Claude refuses a thinking request whose last tool-calling turn lacks its blocks.)
/// </summary>
public sealed class GatewayChatClientThinkingTests : IAsyncLifetime
{
    private const string KeyVariable = "PGW_TEST_MEAI_THINKING_KEY";
    private SimulatorServer _claude = null!;
    private IHost _host = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        Environment.SetEnvironmentVariable(KeyVariable, "sk-ant-test");
        _claude = await SimulatorServer.StartAsync(new SimulatorOptions(), cancellationToken: Ct);
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddPipelineGateway()
            .AddProvider("claude", ProviderTypes.Anthropic, p =>
            {
                p.BaseUrl = new Uri(_claude.BaseAddress, "v1").ToString();
                p.ApiKeyEnvironmentVariable = KeyVariable;
            })
            .AddModel("claude", m => m.Deploy("claude", "claude-sonnet-4-5"))
            .AddChatClient("claude");
        _host = builder.Build();
        await _host.StartAsync(Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _host.StopAsync(Ct);
        _host.Dispose();
        await _claude.DisposeAsync();
    }

    [Description("The weather in a city.")]
    private static string GetWeather(string city) => $"Sunny in {city}";

    private IChatClient Client() => new ChatClientBuilder(_host.Services.GetRequiredService<IChatClient>()).UseFunctionInvocation().Build();

    private static ChatOptions Options() => new()
    {
        Reasoning = new ReasoningOptions { Effort = ReasoningEffort.Low },
        MaxOutputTokens = 2048,
        Tools = [AIFunctionFactory.Create(GetWeather, "get_weather")],
    };

    private static void ThoughtAtEachStep(ChatResponse response)
    {
        var assistant = response.Messages.Where(m => m.Role == ChatRole.Assistant).ToList();
        assistant.Should().HaveCount(2, "a step that calls the tool, then the answer");
        assistant[0].Contents.OfType<FunctionCallContent>().Should().ContainSingle();
        assistant[^1].Text.Should().NotBeNullOrEmpty();
        assistant[^1].Contents.OfType<TextReasoningContent>().Should().Contain(r => r.Text.Length > 0, "given its blocks back, Claude thinks at the answer's step too");
    }

    [Fact]
    public async Task A_function_invoking_loop_gives_Claude_its_thinking_back()
    {
        ThoughtAtEachStep(await Client().GetResponseAsync("Use get_weather for Oslo.", Options(), Ct));
    }

    [Fact]
    public async Task A_streamed_function_invoking_loop_gives_Claude_its_thinking_back()
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in Client().GetStreamingResponseAsync("Use get_weather for Bergen.", Options(), Ct))
        {
            updates.Add(update);
        }

        ThoughtAtEachStep(updates.ToChatResponse());
    }
}
