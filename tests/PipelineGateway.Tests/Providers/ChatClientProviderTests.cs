using System.Net;
using System.Runtime.CompilerServices;
using FluentAssertions;
using Microsoft.Extensions.AI;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.ChatClient;
using PipelineGateway.Tests.Support;
using AI = Microsoft.Extensions.AI;

namespace PipelineGateway.Tests.Providers;

public sealed class ChatClientProviderTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A small IChatClient whose answers are callbacks; records what it was asked.</summary>
    private sealed class FakeChatClient : IChatClient
    {
        public List<AI.ChatMessage> LastMessages { get; } = [];

        public ChatOptions? LastOptions { get; private set; }

        public Func<AI.ChatResponse> Answer { get; set; } = () => new AI.ChatResponse(new AI.ChatMessage(ChatRole.Assistant, "from the chat client"))
        {
            ModelId = "fake-model",
            FinishReason = ChatFinishReason.Stop,
            Usage = new UsageDetails { InputTokenCount = 7, OutputTokenCount = 4 },
        };

        public Task<AI.ChatResponse> GetResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            LastMessages.AddRange(messages);
            LastOptions = options;
            return Task.FromResult(Answer());
        }

        /// <summary>What a stream yields first, before the fixed text (a reasoning model's thinking, say).</summary>
        public List<ChatResponseUpdate> Opening { get; } = [];

        public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
        {
            LastOptions = options;
            await Task.Yield();
            foreach (var update in Opening)
            {
                yield return update;
            }

            yield return new ChatResponseUpdate(ChatRole.Assistant, "streamed");
            yield return new ChatResponseUpdate(null, " text") { FinishReason = ChatFinishReason.Stop };
            yield return new ChatResponseUpdate { Contents = [new UsageContent(new UsageDetails { InputTokenCount = 3, OutputTokenCount = 2 })] };
        }

        public object? GetService(Type serviceType, object? serviceKey = null) => null;

        public void Dispose()
        {
        }
    }

    [Theory]
    [InlineData(400, typeof(UpstreamRejectedException), 0)]
    [InlineData(422, typeof(UpstreamRejectedException), 0)]
    [InlineData(401, null, 1)]
    [InlineData(503, null, 1)]
    public async Task An_IChatClients_errors_go_through_the_same_classifier_as_HTTP_providers(int status, Type? failure, int backupCalls)
    {
        var failing = new FakeChatClient { Answer = () => throw new HttpRequestException("upstream said no", null, (HttpStatusCode)status) };
        var backup = new FakeProvider("backup");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(new ChatClientProvider("meai", failing))
            .AddProvider(backup)
            .AddModel("m", m => m.Strategy("Priority").Deploy("meai").Deploy("backup"))
            .StartAsync(Ct);

        var act = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct);

        if (failure is null)
        {
            (await act()).Content.Should().Be("ok", "a revoked key or an outage fails over to the backup");
        }
        else
        {
            var rejected = (await act.Should().ThrowAsync<UpstreamRejectedException>()).Which;
            rejected.StatusCode.Should().Be(status, "the caller's own mistake keeps its status and is not failed over");
        }

        backup.Calls.Should().Be(backupCalls);
    }

    [Fact]
    public async Task Any_IChatClient_serves_as_a_provider_through_the_pipeline()
    {
        var client = new FakeChatClient();
        await using var gateway = await new GatewayBuilder()
            .AddProvider(new ChatClientProvider("meai", client))
            .AddModel("m", "meai")
            .StartAsync(Ct);
        var request = TestGateway.Request();
        request.Messages.Insert(0, ChatCompletionMessage.System("be brief"));
        request.Temperature = 0.5;
        request.MaxTokens = 40;
        request.Stop = "END";

        var response = await gateway.SubmitAsync(request, Ct);

        response.Content.Should().Be("from the chat client");
        response.Usage!.TotalTokens.Should().Be(11);
        response.Gateway!.Provider.Should().Be("meai");
        client.LastMessages.Select(m => m.Role).Should().Equal(ChatRole.System, ChatRole.User);
        client.LastOptions!.Temperature.Should().Be(0.5f);
        client.LastOptions.MaxOutputTokens.Should().Be(40);
        client.LastOptions.StopSequences.Should().Equal("END");
        client.LastOptions.ModelId.Should().Be("m");

        var chunks = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);
        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("streamed text");
        chunks.Last(c => c.Usage is not null).Usage!.CompletionTokens.Should().Be(2);
    }

    [Fact]
    public async Task Tool_calls_from_the_chat_client_come_back_as_canonical_tool_calls()
    {
        var client = new FakeChatClient
        {
            Answer = () => new AI.ChatResponse(new AI.ChatMessage(ChatRole.Assistant, [new FunctionCallContent("c1", "lookup", new Dictionary<string, object?> { ["q"] = "x" })])),
        };
        var provider = new ChatClientProvider("meai", client);
        var request = TestGateway.Request();
        request.Tools = [new ToolDefinition { Function = new FunctionDefinition { Name = "lookup", Parameters = System.Text.Json.JsonDocument.Parse("""{"type":"object"}""").RootElement } }];

        var response = await provider.CompleteAsync(new PipelineGateway.Providers.ProviderRequest(request, "m"), Ct);

        var call = response.Choices[0].Message!.ToolCalls!.Single();
        call.Id.Should().Be("c1");
        call.Function!.Name.Should().Be("lookup");
        call.Function.Arguments.Should().Be("""{"q":"x"}""");
        response.FinishReason.Should().Be(FinishReasons.ToolCalls);
        client.LastOptions!.Tools!.Single().Name.Should().Be("lookup");
    }

    private static ChatCompletionRequest Parse(string json) => System.Text.Json.JsonSerializer.Deserialize(json, GatewayJsonContext.Default.ChatCompletionRequest)!;

    [Fact]
    public void Audio_and_file_parts_become_data_and_hosted_file_contents()
    {
        var request = Parse("""
            {"model":"m","messages":[{"role":"user","content":[
              {"type":"text","text":"Listen, read"},
              {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},
              {"type":"input_audio","input_audio":{"data":"SUQz","format":"mp3"}},
              {"type":"file","file":{"filename":"a.pdf","file_data":"data:application/pdf;base64,JVBERi0="}},
              {"type":"file","file":{"file_id":"file-abc123"}}]}]}
            """);

        var (messages, _) = ChatClientProvider.ToChatClient(new PipelineGateway.Providers.ProviderRequest(request, "m"));

        var contents = messages.Single().Contents;
        contents.Should().HaveCount(5);
        var wav = contents[1].Should().BeOfType<DataContent>().Which;
        wav.MediaType.Should().Be("audio/wav");
        wav.Data.ToArray().Should().Equal(Convert.FromBase64String("UklGRg=="));
        contents[2].Should().BeOfType<DataContent>().Which.MediaType.Should().Be("audio/mpeg");
        var pdf = contents[3].Should().BeOfType<DataContent>().Which;
        pdf.MediaType.Should().Be("application/pdf");
        pdf.Name.Should().Be("a.pdf");
        pdf.Data.ToArray().Should().Equal(Convert.FromBase64String("JVBERi0="));
        contents[4].Should().BeOfType<HostedFileContent>().Which.FileId.Should().Be("file-abc123");
    }

    public static TheoryData<string, string> NoForm => new()
    {
        { """{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"city=Oslo"}}]}""", "messages[1].tool_calls[0].function.arguments" },
        { """{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"[1]"}}]}""", "messages[1].tool_calls[0].function.arguments" },
        { """{"role":"user","content":[{"type":"video_url","video_url":{"url":"https://example.test/v.mp4"}}]}""", "messages[1].content[0]" },
        { """{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"not base64!","format":"wav"}}]}""", "messages[1].content[0]" },
        { """{"role":"tool","tool_call_id":"c","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"https://example.test/a.png"}}]}""", "messages[1].content[1]" },
        { """{"role":"assistant","content":"Sunny.","anthropic_content":[{"type":"server_tool_use","id":"s","name":"web_search","input":{}}]}""", "messages[1].anthropic_content" },
    };

    [Theory]
    [InlineData("""{"type":"web_search_20250305","name":"web_search"}""")]
    [InlineData("""{"type":"custom","custom":{"name":"grammar"}}""")]
    [InlineData("""{"type":"function"}""")]
    public void A_tool_that_is_not_a_function_is_named_not_left_out(string tool)
    {
        var request = Parse("""{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}},TOOL]}""".Replace("TOOL", tool, StringComparison.Ordinal));

        var act = () => ChatClientProvider.ToChatClient(new PipelineGateway.Providers.ProviderRequest(request, "m"));

        var e = act.Should().Throw<PipelineGateway.Providers.ProviderException>().Which;
        e.NotSent.Should().BeTrue();
        e.Param.Should().StartWith("tools[1]");
    }

    [Theory]
    [MemberData(nameof(NoForm))]
    public async Task What_an_IChatClient_has_no_form_for_is_named_and_the_request_goes_as_it_is_to_a_deployment_that_can_take_it(string message, string param)
    {
        var client = new FakeChatClient();
        var backup = new FakeProvider("backup");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(new ChatClientProvider("meai", client))
            .AddProvider(backup)
            .AddModel("m", m => m.Strategy("Priority").Deploy("meai").Deploy("backup"))
            .AddModel("only", "meai")
            .StartAsync(Ct);
        var json = """{"model":"MODEL","messages":[{"role":"user","content":"hi"},""" + message + "]}";

        (await gateway.SubmitAsync(Parse(json.Replace("MODEL", "m", StringComparison.Ordinal)), Ct)).Content.Should().Be("ok");
        backup.Calls.Should().Be(1, "the backup takes the request as the caller sent it");

        var act = async () => await gateway.SubmitAsync(Parse(json.Replace("MODEL", "only", StringComparison.Ordinal)), Ct);
        var rejected = (await act.Should().ThrowAsync<UpstreamRejectedException>()).Which;
        rejected.StatusCode.Should().Be(400);
        rejected.Code.Should().Be("unsupported_value");
        rejected.Param.Should().Be(param);
        client.LastMessages.Should().BeEmpty("nothing was sent to the chat client, with a part left out or otherwise");
    }

    [Fact]
    public async Task A_reasoning_chat_clients_thinking_and_the_callers_effort_cross_both_ways()
    {
        var client = new FakeChatClient
        {
            Answer = () => new AI.ChatResponse(new AI.ChatMessage(ChatRole.Assistant, [new TextReasoningContent("Thinking it over."), new TextContent("42")])),
        };
        client.Opening.Add(new ChatResponseUpdate { Role = ChatRole.Assistant, Contents = [new TextReasoningContent("Hm, ")] });
        client.Opening.Add(new ChatResponseUpdate { Contents = [new TextReasoningContent("yes.")] });
        await using var gateway = await new GatewayBuilder().AddProvider(new ChatClientProvider("meai", client)).AddModel("m", "meai").StartAsync(Ct);
        var request = Parse("""{"model":"m","messages":[{"role":"user","content":"Why?"}],"reasoning_effort":"high"}""");

        var whole = await gateway.SubmitAsync(request, Ct);
        whole.Content.Should().Be("42");
        whole.Choices[0].Message!.AdditionalProperties!["reasoning_content"].GetString().Should().Be("Thinking it over.");
        client.LastOptions!.Reasoning!.Effort.Should().Be(ReasoningEffort.High);

        var chunks = await gateway.StreamAsync(Parse("""{"model":"m","messages":[{"role":"user","content":"Why?"}],"reasoning_effort":"low"}"""), Ct).ToListAsync(Ct);
        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.AdditionalProperties?.GetValueOrDefault("reasoning_content").ToString())).Should().Be("Hm, yes.");
        client.LastOptions!.Reasoning!.Effort.Should().Be(ReasoningEffort.Low);
    }
}
