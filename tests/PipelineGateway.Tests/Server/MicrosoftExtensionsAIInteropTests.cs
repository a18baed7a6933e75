#pragma warning disable OPENAI001 // the OpenAI SDK marks its Responses client as evaluation-only
using System.ClientModel;
using FluentAssertions;
using Microsoft.Extensions.AI;
using OpenAI;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// The gateway from .NET's own AI abstraction: Microsoft.Extensions.AI's <c>IChatClient</c> over the OpenAI SDK
/// (<c>Microsoft.Extensions.AI.OpenAI</c>), with automatic function invocation — over the chat route and over the
/// Responses API, where the client continues a conversation by its id (<c>previous_response_id</c>, the tool's result
/// alone in the next request) once an answer says it was stored. Through Claude, thinking on, on both. (Streamed over
/// the Responses API it is not run: Microsoft.Extensions.AI.OpenAI 10.11 and 11.0 are built against the OpenAI SDK
/// 2.14, whose streaming method 2.15 changed — a MissingMethodException inside the adapter, before any request.)
/// </summary>
public sealed class MicrosoftExtensionsAIInteropTests : IAsyncLifetime
{
    private SimulatorFleet _fleet = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.GptAndClaudeAsync(Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private OpenAIClient OpenAI() => new(new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(_fleet.Base, "v1") });

    private IChatClient Client(string model, bool responses) =>
        new ChatClientBuilder(responses ? OpenAI().GetResponsesClient().AsIChatClient(model) : OpenAI().GetChatClient(model).AsIChatClient())
            .UseFunctionInvocation()
            .Build();

    [Theory]
    [InlineData("gpt", false, false)]
    [InlineData("gpt", true, false)]
    [InlineData("claude", false, false)]
    [InlineData("claude", true, false)]
    [InlineData("claude", false, true)]
    public async Task A_function_invoking_client_runs_a_tool_loop_to_its_answer_with_thinking_on(string model, bool responses, bool stream)
    {
        var calls = 0;
        var weather = AIFunctionFactory.Create((string city) => { calls++; return $"Sunny in {city}, 21 °C"; }, "get_weather", "The weather in a city.");
        var options = new ChatOptions
        {
            Tools = [weather],
            ToolMode = ChatToolMode.Auto,
            Reasoning = new ReasoningOptions { Effort = ReasoningEffort.Low },
        };

        var client = Client(model, responses);
        var answer = stream
            ? await client.GetStreamingResponseAsync("Use get_weather for Oslo.", options, Ct).ToChatResponseAsync(Ct)
            : await client.GetResponseAsync("Use get_weather for Oslo.", options, Ct);

        calls.Should().Be(1, "the model called the tool once and answered with its result");
        answer.Text.Should().NotBeNullOrWhiteSpace();
        if (responses)
        {
            answer.ConversationId.Should().StartWith("resp_", "the answer was stored: the client went on by its id");
        }
    }

    /// <summary>
    /// The Anthropic SDK's own <c>IChatClient</c> (<c>AsIChatClient</c>) on <c>/v1/messages</c>, with automatic function
    /// invocation: its tool loop runs to the answer, whole and streamed. (The adapter does not turn
    /// <c>ChatOptions.Reasoning</c> into Claude's thinking: Claude does not think here.)
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_Anthropic_SDKs_chat_client_runs_a_tool_loop_on_the_messages_route(bool stream)
    {
        var calls = 0;
        var weather = AIFunctionFactory.Create((string city) => { calls++; return $"Sunny in {city}, 21 °C"; }, "get_weather", "The weather in a city.");
        var anthropic = new Anthropic.AnthropicClient { ApiKey = "sk-unused", BaseUrl = _fleet.Base.ToString().TrimEnd('/'), MaxRetries = 0 };
        var client = new ChatClientBuilder(anthropic.AsIChatClient("claude")).UseFunctionInvocation().Build();
        var options = new ChatOptions { Tools = [weather], MaxOutputTokens = 4096 };

        var answer = stream
            ? await client.GetStreamingResponseAsync("Use get_weather for Oslo.", options, Ct).ToChatResponseAsync(Ct)
            : await client.GetResponseAsync("Use get_weather for Oslo.", options, Ct);

        calls.Should().Be(1);
        answer.Text.Should().NotBeNullOrWhiteSpace();
    }

    [Fact]
    public async Task A_conversation_goes_on_by_its_id_over_the_Responses_API()
    {
        var client = Client("claude", responses: true);
        var first = await client.GetResponseAsync("My name is Ada.", cancellationToken: Ct);
        first.ConversationId.Should().NotBeNull();

        var next = await client.GetResponseAsync("What is my name?", new ChatOptions { ConversationId = first.ConversationId }, Ct);

        next.Text.Should().NotBeNullOrWhiteSpace();
        next.Usage!.InputTokenCount.Should().BeGreaterThan(first.Usage!.InputTokenCount!.Value, "the earlier turn was sent before the new one");
    }
}
