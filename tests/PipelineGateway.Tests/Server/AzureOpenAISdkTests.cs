using System.ClientModel;
using Azure.AI.OpenAI;
using FluentAssertions;
using OpenAI.Chat;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// The Azure OpenAI .NET SDK (<c>AzureOpenAIClient</c>, the SDK most .NET teams call OpenAI models with) pointed at the
/// gateway: Azure's routes (<c>/openai/deployments/{deployment}/…</c>, the deployment the model group) and its
/// <c>api-key</c> header as the gateway key — chat whole and streamed, embeddings, and the key's refusals.
/// </summary>
public sealed class AzureOpenAISdkTests : IAsyncLifetime
{
    private const string Key = "sk-gw-azure-0123456789";
    private const string NarrowKey = "sk-gw-azure-narrow-0123456789";
    private SimulatorFleet _fleet = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.StartAsync(
        [("sim", "OpenAICompatible", null)],
        [("gpt", ["sim"]), ("text-embedding-3-small", ["sim"])],
        "gpt-4o-mini",
        new Dictionary<string, string?>
        {
            ["Gateway:Server:Keys:0:Id"] = "azure",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:1:Id"] = "narrow",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(NarrowKey),
            ["Gateway:Server:Keys:1:AllowedModels:0"] = "text-embedding-3-small",
        },
        Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private AzureOpenAIClient Client(string key) => new(_fleet.Base, new ApiKeyCredential(key));

    [Fact]
    public async Task The_Azure_OpenAI_SDK_chats_streams_and_embeds_through_the_gateway()
    {
        var chat = Client(Key).GetChatClient("gpt");
        var whole = (await chat.CompleteChatAsync([new UserChatMessage("Hello through Azure's route")], cancellationToken: Ct)).Value;
        whole.Content[0].Text.Should().NotBeNullOrWhiteSpace();
        whole.FinishReason.Should().Be(ChatFinishReason.Stop);

        var streamed = new System.Text.StringBuilder();
        await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage("Stream through Azure's route")], cancellationToken: Ct))
        {
            streamed.Append(string.Concat(update.ContentUpdate.Select(p => p.Text)));
        }

        streamed.ToString().Should().NotBeNullOrWhiteSpace();

        var embedding = (await Client(Key).GetEmbeddingClient("text-embedding-3-small").GenerateEmbeddingAsync("hello", cancellationToken: Ct)).Value;
        embedding.ToFloats().Length.Should().Be(1536);
        _fleet.Sims["sim"].Requests.Should().Be(3);

        // The path names the model; a body without one (as Azure's API allows), or naming another, is for the path's.
        using var http = new HttpClient { BaseAddress = _fleet.Base };
        http.DefaultRequestHeaders.Add("api-key", Key);
        foreach (var (path, body) in new[]
        {
            ("openai/deployments/gpt/chat/completions?api-version=2024-10-21", """{"messages":[{"role":"user","content":"no model in the body"}]}"""),
            ("openai/deployments/gpt/chat/completions?api-version=2024-10-21", """{"model":"text-embedding-3-small","messages":[{"role":"user","content":"another model in the body"}]}"""),
            ("openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21", """{"input":"no model in the body"}"""),
        })
        {
            using var response = await http.PostAsync(path, new StringContent(body, System.Text.Encoding.UTF8, "application/json"), Ct);
            response.StatusCode.Should().Be(System.Net.HttpStatusCode.OK, path + " " + body);
            response.Headers.GetValues("x-gateway-provider").Single().Should().Be("sim");
        }
    }

    [Fact]
    public async Task The_api_key_header_is_the_gateway_key_with_its_model_list()
    {
        var wrong = async () => await Client("sk-not-a-gateway-key").GetChatClient("gpt").CompleteChatAsync([new UserChatMessage("hi")], cancellationToken: Ct);
        (await wrong.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(401);

        var notAllowed = async () => await Client(NarrowKey).GetChatClient("gpt").CompleteChatAsync([new UserChatMessage("hi")], cancellationToken: Ct);
        (await notAllowed.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(403, "the path's deployment is the model the key is checked for");

        var unknown = async () => await Client(Key).GetChatClient("no-such-deployment").CompleteChatAsync([new UserChatMessage("hi")], cancellationToken: Ct);
        (await unknown.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(404);
        _fleet.Sims["sim"].Requests.Should().Be(0);
    }
}
