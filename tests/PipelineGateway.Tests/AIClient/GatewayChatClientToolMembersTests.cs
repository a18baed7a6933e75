using System.ComponentModel;
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.AIClient;

/// <summary>
/// The gateway as an IChatClient in a function-invoking loop over Gemini's OpenAI-compatible endpoint (a real Kestrel
/// answering as Gemini does: <c>gemini-tools</c>): the call's thought signature (<c>extra_content</c>) rides on the
/// <see cref="FunctionCallContent"/>'s additional properties, the loop keeps it in the conversation, and the next turn
/// sends it back — without it the upstream answers that turn with a 400.
/// </summary>
public sealed class GatewayChatClientToolMembersTests : IAsyncLifetime
{
    private ScriptedUpstream _gemini = null!;
    private IHost _host = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _gemini = await ScriptedUpstream.StartAsync(Ct);
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddPipelineGateway()
            .AddProvider("gemini", ProviderTypes.OpenAICompatible, p =>
            {
                p.BaseUrl = new Uri(_gemini.BaseAddress, "v1").ToString();
                p.Headers["x-fault"] = "gemini-tools";
            })
            .AddModel("m", m => m.Deploy("gemini", "gemini-3-pro-preview"))
            .AddChatClient("m");
        _host = builder.Build();
        await _host.StartAsync(Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _host.StopAsync(Ct);
        _host.Dispose();
        await _gemini.DisposeAsync();
    }

    [Description("The weather in a city.")]
    private static string GetWeather(string city) => $"Sunny in {city}";

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_function_invoking_loop_sends_Geminis_thought_signature_back(bool stream)
    {
        var client = new ChatClientBuilder(_host.Services.GetRequiredService<IChatClient>()).UseFunctionInvocation().Build();
        var options = new ChatOptions { Tools = [AIFunctionFactory.Create(GetWeather, "get_weather")] };

        var response = stream
            ? await client.GetStreamingResponseAsync("Weather in Paris?", options, Ct).ToChatResponseAsync(Ct)
            : await client.GetResponseAsync("Weather in Paris?", options, Ct);

        var call = response.Messages.SelectMany(static m => m.Contents).OfType<FunctionCallContent>().Should().ContainSingle().Subject;
        call.AdditionalProperties.Should().NotBeNull();
        var extra = (JsonElement)call.AdditionalProperties!["extra_content"]!;
        extra.GetProperty("google").GetProperty("thought_signature").GetString().Should().Be(ScriptedUpstream.GeminiSignature);
        response.Text.Should().Be("It is sunny in Paris.", "the loop's second turn carried the signature back");
    }
}
