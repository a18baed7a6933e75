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

        public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
        {
            await Task.Yield();
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
}
