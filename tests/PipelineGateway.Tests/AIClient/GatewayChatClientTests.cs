using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;
using AI = Microsoft.Extensions.AI;

namespace PipelineGateway.Tests.AIClient;

/// <summary>
/// The gateway as an IChatClient, used the way Microsoft.Extensions.AI applications use one: through a ChatClientBuilder
/// pipeline with UseFunctionInvocation and UseOpenTelemetry on top, over a provider that asks for a tool and then answers.
/// </summary>
public sealed class GatewayChatClientTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Asks for get_weather until a tool result is in the conversation, then answers with it.</summary>
    private static FakeProvider WeatherModel(ConcurrentQueue<ChatCompletionRequest> seen) => new("p")
    {
        OnComplete = (r, _) =>
        {
            seen.Enqueue(r.Request);
            var result = r.Request.Messages.LastOrDefault(m => m.Role == ChatRoles.Tool);
            return ValueTask.FromResult(result is null
                ? new ChatCompletionResponse
                {
                    Id = "c1",
                    Model = r.Model,
                    Choices = [new ChatChoice { Message = new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Id = "call_1", Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = """{"city":"Oslo"}""" } }] }, FinishReason = FinishReasons.ToolCalls }],
                    Usage = TokenUsage.Of(10, 5),
                }
                : FakeProvider.Answer(r.Model, "It is " + result.Content!.GetText() + " in Oslo."));
        },
        OnStream = (r, ct) => StreamWeather(r, seen),
    };

    private static async IAsyncEnumerable<ChatCompletionChunk> StreamWeather(ProviderRequest r, ConcurrentQueue<ChatCompletionRequest> seen)
    {
        await Task.Yield();
        seen.Enqueue(r.Request);
        if (r.Request.Messages.LastOrDefault(m => m.Role == ChatRoles.Tool) is { } result)
        {
            yield return FakeProvider.Chunk(r.Model, "It is ");
            yield return FakeProvider.Chunk(r.Model, result.Content!.GetText() + " in Oslo.", FinishReasons.Stop);
            yield break;
        }

        // The tool call in pieces, as OpenAI streams it: id and name first, the arguments in fragments.
        yield return ToolChunk(r.Model, new ToolCall { Index = 0, Id = "call_1", Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = "{\"ci" } });
        yield return ToolChunk(r.Model, new ToolCall { Index = 0, Function = new FunctionCall { Arguments = "ty\":\"Oslo\"}" } });
        yield return new ChatCompletionChunk { Id = "s", Model = r.Model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta(), FinishReason = FinishReasons.ToolCalls }] };
    }

    private static ChatCompletionChunk ToolChunk(string model, ToolCall call) =>
        new() { Id = "s", Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { ToolCalls = [call] } }] };

    private static IChatClient Pipeline(Gateway gateway, ActivityListenerScope? spans = null) =>
        new ChatClientBuilder(gateway.AsChatClient("m"))
            .UseFunctionInvocation()
            .UseOpenTelemetry(sourceName: spans?.SourceName)
            .Build();

    /// <summary>
    /// A model that declines (the chat format's <c>refusal</c>) reaches a Microsoft.Extensions.AI caller as an
    /// <see cref="ErrorContent"/> with the code <c>Refusal</c>, whole and streamed (whole, in the finishing update) —
    /// what its OpenAI chat client gives; it was left out, the answer read as empty.
    /// </summary>
    [Fact]
    public async Task A_refusal_is_an_error_content_coded_Refusal_whole_and_streamed()
    {
        var model = new FakeProvider("p")
        {
            OnComplete = (r, _) => ValueTask.FromResult(new ChatCompletionResponse
            {
                Id = "c1",
                Model = r.Model,
                Choices = [new ChatChoice { Message = new ChatCompletionMessage { Role = ChatRoles.Assistant, Refusal = "I can't help with that." }, FinishReason = FinishReasons.Stop }],
                Usage = TokenUsage.Of(3, 6),
            }),
            OnStream = (r, _) => Refusing(r.Model),
        };
        await using var gateway = await TestGateway.With(model).StartAsync(Ct);
        var client = gateway.AsChatClient("m");

        var whole = await client.GetResponseAsync("Do something bad", cancellationToken: Ct);
        var error = whole.Messages.Single().Contents.OfType<ErrorContent>().Should().ContainSingle().Which;
        (error.Message, error.ErrorCode).Should().Be(("I can't help with that.", "Refusal"));

        var updates = await client.GetStreamingResponseAsync("Do something bad", cancellationToken: Ct).ToListAsync(Ct);
        var streamed = updates.SelectMany(u => u.Contents).OfType<ErrorContent>().Should().ContainSingle().Which;
        (streamed.Message, streamed.ErrorCode).Should().Be(("I can't help with that.", "Refusal"));
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> Refusing(string model)
    {
        await Task.Yield();
        yield return new ChatCompletionChunk { Id = "s", Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Role = ChatRoles.Assistant, Refusal = "I can't " } }] };
        yield return new ChatCompletionChunk { Id = "s", Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Refusal = "help with that." }, FinishReason = FinishReasons.Stop }] };
    }

    private static AIFunction Weather(ConcurrentQueue<string> calls) =>
        AIFunctionFactory.Create((string city) => { calls.Enqueue(city); return "12 °C"; }, "get_weather", "The weather in a city.");

    [Fact]
    public async Task A_whole_answer_with_a_tool_call_runs_the_tool_through_use_function_invocation_and_every_call_goes_through_the_gateway()
    {
        var seen = new ConcurrentQueue<ChatCompletionRequest>();
        await using var gateway = await TestGateway.With(WeatherModel(seen)).StartAsync(Ct);
        using var spans = new ActivityListenerScope();
        var calls = new ConcurrentQueue<string>();

        var response = await Pipeline(gateway, spans).GetResponseAsync("What is the weather in Oslo?", new ChatOptions { Tools = [Weather(calls)] }, Ct);

        response.Text.Should().Be("It is 12 °C in Oslo.");
        calls.Should().Equal("Oslo");
        seen.Should().HaveCount(2);
        var first = seen.First();
        first.Tools!.Single().Function!.Name.Should().Be("get_weather");
        first.Tools!.Single().Function!.Parameters!.Value.GetProperty("properties").TryGetProperty("city", out _).Should().BeTrue();
        var second = seen.Last();
        second.Messages.Select(m => m.Role).Should().Equal(ChatRoles.User, ChatRoles.Assistant, ChatRoles.Tool);
        second.Messages[1].ToolCalls!.Single().Function!.Arguments.Should().Contain("Oslo");
        second.Messages[2].ToolCallId.Should().Be("call_1");

        gateway.Metrics.GetSnapshot().TotalRequests.Should().Be(2, "both model calls went through the gateway");
        response.Usage!.InputTokenCount.Should().BeGreaterThan(0);
        spans.Stopped.Should().Contain(a => a.DisplayName.StartsWith("chat", StringComparison.Ordinal), "UseOpenTelemetry recorded its spans");
    }

    [Fact]
    public async Task A_streamed_answer_puts_the_tool_call_fragments_together_and_streams_the_final_text()
    {
        var seen = new ConcurrentQueue<ChatCompletionRequest>();
        await using var gateway = await TestGateway.With(WeatherModel(seen)).StartAsync(Ct);
        var calls = new ConcurrentQueue<string>();

        var text = new List<string>();
        await foreach (var update in Pipeline(gateway).GetStreamingResponseAsync("What is the weather in Oslo?", new ChatOptions { Tools = [Weather(calls)] }, Ct))
        {
            if (!string.IsNullOrEmpty(update.Text))
            {
                text.Add(update.Text);
            }
        }

        calls.Should().Equal("Oslo");
        string.Concat(text).Should().Be("It is 12 °C in Oslo.");
        seen.Should().HaveCount(2);
    }

    [Fact]
    public async Task A_models_tool_arguments_that_are_not_a_JSON_object_come_back_as_the_calls_exception_not_as_no_arguments()
    {
        var model = new FakeProvider("p")
        {
            OnComplete = (r, _) => ValueTask.FromResult(new ChatCompletionResponse
            {
                Id = "c1",
                Model = r.Model,
                Choices = [new ChatChoice { Message = new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Id = "call_1", Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = "city=Oslo" } }] }, FinishReason = FinishReasons.ToolCalls }],
            }),
            OnStream = (r, _) => new[]
            {
                ToolChunk(r.Model, new ToolCall { Index = 0, Id = "call_1", Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = "[\"Os" } }),
                ToolChunk(r.Model, new ToolCall { Index = 0, Function = new FunctionCall { Arguments = "lo\"]" } }),
                new ChatCompletionChunk { Id = "s", Model = r.Model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta(), FinishReason = FinishReasons.ToolCalls }] },
            }.ToAsyncEnumerable(),
        };
        await using var gateway = await TestGateway.With(model).StartAsync(Ct);

        var whole = (await gateway.AsChatClient("m").GetResponseAsync("Weather?", cancellationToken: Ct)).Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().Single();
        var streamed = (await gateway.AsChatClient("m").GetStreamingResponseAsync("Weather?", cancellationToken: Ct).ToListAsync(Ct)).SelectMany(u => u.Contents).OfType<FunctionCallContent>().Single();

        whole.Exception.Should().NotBeNull("a function-invoking client reports it to the model instead of calling the tool with no arguments");
        whole.Exception!.InnerException!.Message.Should().Contain("not JSON");
        whole.Arguments.Should().BeNull();
        streamed.Exception!.InnerException!.Message.Should().Contain("JSON array, not an object");
        streamed.Name.Should().Be("get_weather");
    }

    [Fact]
    public async Task A_reasoning_models_thinking_comes_back_as_reasoning_content_and_the_effort_goes_out()
    {
        var seen = new ConcurrentQueue<ChatCompletionRequest>();
        static System.Text.Json.JsonElement Text(string s) => System.Text.Json.JsonDocument.Parse(System.Text.Json.JsonSerializer.Serialize(s)).RootElement.Clone();
        var model = new FakeProvider("p")
        {
            OnComplete = (r, _) =>
            {
                seen.Enqueue(r.Request);
                var answer = FakeProvider.Answer(r.Model, "42");
                answer.Choices[0].Message!.AdditionalProperties = new() { ["reasoning_content"] = Text("Thinking it over.") };
                return ValueTask.FromResult(answer);
            },
            OnStream = (r, _) => new[]
            {
                new ChatCompletionChunk { Id = "s", Model = r.Model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { AdditionalProperties = new() { ["reasoning_content"] = Text("Hm.") } } }] },
                FakeProvider.Chunk(r.Model, "42", FinishReasons.Stop),
            }.ToAsyncEnumerable(),
        };
        await using var gateway = await TestGateway.With(model).StartAsync(Ct);
        var options = new ChatOptions { Reasoning = new ReasoningOptions { Effort = ReasoningEffort.Medium }, FrequencyPenalty = 0.5f };

        var whole = await gateway.AsChatClient("m").GetResponseAsync("Why?", options, Ct);
        var streamed = await gateway.AsChatClient("m").GetStreamingResponseAsync("Why?", options, Ct).ToListAsync(Ct);

        whole.Messages.Single().Contents.OfType<TextReasoningContent>().Single().Text.Should().Be("Thinking it over.");
        whole.Text.Should().Be("42");
        streamed.SelectMany(u => u.Contents).OfType<TextReasoningContent>().Single().Text.Should().Be("Hm.");
        var sent = seen.Single();
        sent.AdditionalProperties!["reasoning_effort"].GetString().Should().Be("medium");
        sent.AdditionalProperties["frequency_penalty"].GetDouble().Should().Be(0.5);
    }

    [Fact]
    public async Task Chat_options_reach_the_provider_as_the_gateway_request()
    {
        var seen = new ConcurrentQueue<ChatCompletionRequest>();
        var provider = new FakeProvider("p") { OnComplete = (r, _) => { seen.Enqueue(r.Request); return ValueTask.FromResult(FakeProvider.Answer(r.Model, "{}")); } };
        await using var gateway = await TestGateway.With(provider).StartAsync(Ct);
        var schema = JsonDocument.Parse("""{"type":"object","properties":{"a":{"type":"string"}}}""").RootElement;

        await gateway.AsChatClient("m").GetResponseAsync(
            [new AI.ChatMessage(ChatRole.System, "Be brief."), new AI.ChatMessage(ChatRole.User, "Hi")],
            new ChatOptions
            {
                Temperature = 0.25f,
                TopP = 0.5f,
                MaxOutputTokens = 42,
                Seed = 7,
                StopSequences = ["END"],
                ResponseFormat = ChatResponseFormat.ForJsonSchema(schema, "answer"),
                Tools = [AIFunctionFactory.Create(() => "x", "lookup")],
                ToolMode = ChatToolMode.RequireSpecific("lookup"),
            },
            Ct);

        var r = seen.Single();
        r.Messages.Select(m => (m.Role, m.Content!.GetText())).Should().Equal((ChatRoles.System, "Be brief."), (ChatRoles.User, "Hi"));
        r.Temperature.Should().BeApproximately(0.25, 1e-6);
        r.TopP.Should().BeApproximately(0.5, 1e-6);
        r.MaxTokens.Should().Be(42);
        r.Seed.Should().Be(7);
        r.Stop.Should().Equal("END");
        r.ResponseFormat!.Value.GetProperty("type").GetString().Should().Be("json_schema");
        r.ResponseFormat!.Value.GetProperty("json_schema").GetProperty("name").GetString().Should().Be("answer");
        r.ToolChoice!.Value.GetProperty("function").GetProperty("name").GetString().Should().Be("lookup");

        var none = await gateway.AsChatClient("m").GetResponseAsync("Hi", new ChatOptions { Tools = [AIFunctionFactory.Create(() => "x", "lookup")], ToolMode = ChatToolMode.None, ResponseFormat = ChatResponseFormat.Json }, Ct);
        none.Text.Should().Be("{}");
        seen.Last().ToolChoice!.Value.GetString().Should().Be("none");
        seen.Last().ResponseFormat!.Value.GetProperty("type").GetString().Should().Be("json_object");
        none.AdditionalProperties!["gateway.provider"].Should().Be("p");
    }

    [Fact]
    public async Task Gateway_failures_surface_typed_and_cancellation_as_an_operation_cancelled_exception()
    {
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // never set: the call ends only by cancellation
        var provider = FakeProvider.Gated("p", never);
        await using var gateway = await TestGateway.With(provider).StartAsync(Ct);
        var client = gateway.AsChatClient("m");

        var unknown = async () => await client.GetResponseAsync("Hi", new ChatOptions { ModelId = "no-such-model" }, Ct);
        await unknown.Should().ThrowAsync<ModelNotFoundException>();

        using var cts = new CancellationTokenSource();
        var call = client.GetResponseAsync("Hi", cancellationToken: cts.Token);
        await Wait.Until(() => provider.Calls == 1, "the call is upstream");
        await cts.CancelAsync();
        await FluentActions.Awaiting(() => call).Should().ThrowAsync<OperationCanceledException>();
        await Wait.Until(() => provider.Cancelled == 1, "the cancellation reached the upstream call");
    }

    [Fact]
    public async Task A_di_registration_gives_applications_an_ichatclient_over_the_gateway()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddPipelineGateway()
            .AddProvider(new FakeProvider("p"))
            .AddModel("m", m => m.Deploy("p"))
            .AddChatClient("m");
        using var host = builder.Build();
        await host.StartAsync(Ct);

        var client = host.Services.GetRequiredService<IChatClient>();
        (await client.GetResponseAsync("Hi", cancellationToken: Ct)).Text.Should().Be("ok");
        client.GetService<ChatClientMetadata>()!.DefaultModelId.Should().Be("m");
        host.Services.GetRequiredService<PipelineGateway.Metrics.IGatewayMetrics>().GetSnapshot().TotalRequests.Should().Be(1);
        await host.StopAsync(Ct);
    }

    /// <summary>Collects the spans of UseOpenTelemetry's source.</summary>
    private sealed class ActivityListenerScope : IDisposable
    {
        private readonly ActivityListener _listener;

        public ActivityListenerScope()
        {
            _listener = new ActivityListener
            {
                ShouldListenTo = s => s.Name == SourceName,
                Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
                ActivityStopped = a => Stopped.Enqueue(a),
            };
            ActivitySource.AddActivityListener(_listener);
        }

        public string SourceName { get; } = "pgw-tests-" + Guid.NewGuid().ToString("N");

        public ConcurrentQueue<Activity> Stopped { get; } = new();

        public void Dispose() => _listener.Dispose();
    }
}
