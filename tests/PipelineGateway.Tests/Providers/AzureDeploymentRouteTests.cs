using System.Net;
using FluentAssertions;
using Microsoft.Extensions.Logging.Abstractions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.OpenAI;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// Azure OpenAI puts the deployment (the model) in the URL path. Escaping leaves <c>.</c> and <c>..</c> as they are and
/// the URI resolves them as steps, so <c>..</c> would have sent the gateway's Azure key to <c>{base}/openai/…</c>:
/// those are refused before anything is sent, on every Azure route (chat, completions, operations).
/// </summary>
public sealed class AzureDeploymentRouteTests
{
    private const string ChatAnswer = """{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}""";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static OpenAIChatProvider Azure(StubHandler stub) => new(
        "azure",
        new HttpClient(stub),
        new ProviderOptions { Name = "azure", Type = ProviderTypes.AzureOpenAI, BaseUrl = "https://myres.openai.azure.com", AzureApiVersion = "2024-10-21", NativeTextCompletions = true },
        "azure-key",
        TimeProvider.System,
        NullLogger.Instance);

    [Theory]
    [InlineData("..")]
    [InlineData(".")]
    public async Task A_dot_segment_deployment_is_refused_before_any_route_is_asked(string model)
    {
        var stub = new StubHandler(HttpStatusCode.OK, ChatAnswer);
        using var azure = Azure(stub);
        var chat = new ChatCompletionRequest { Model = "group", Messages = [ChatCompletionMessage.User("hi")] };

        async Task Refused(Func<Task> send)
        {
            var refused = (await send.Should().ThrowAsync<ProviderException>()).Which;
            (refused.NotSent, refused.Param, refused.Outcome).Should().Be((true, "model", AttemptOutcome.NonRetryableError));
        }

        await Refused(async () => await azure.CompleteAsync(new ProviderRequest(chat, model), Ct));
        await Refused(async () => await azure.CompleteAsync(new ProviderRequest(TextCompletions.Read("""{"model":"group","prompt":"hi"}"""u8), model), Ct));
        await Refused(async () => await azure.SendAsync(new ProviderRequest(Embeddings.Read("""{"model":"group","input":"hi"}"""u8), model), Ct));
        stub.LastRequest.Should().BeNull("nothing was sent");

        await azure.CompleteAsync(new ProviderRequest(chat, "a..b"), Ct);
        stub.LastRequest!.RequestUri!.ToString().Should().Be("https://myres.openai.azure.com/openai/deployments/a..b/chat/completions?api-version=2024-10-21", "dots inside a name are a name");
    }
}
