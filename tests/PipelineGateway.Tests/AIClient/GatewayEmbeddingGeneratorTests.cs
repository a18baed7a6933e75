using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.AIClient;

/// <summary>
/// The gateway as a Microsoft.Extensions.AI embedding generator, registered in a host the way applications use one: each
/// call one embeddings request through the queue (priced, counted), vectors decoded from base64 in input order.
/// </summary>
public sealed class GatewayEmbeddingGeneratorTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private readonly FakeProvider _chatOnly = new("chat-only");

    private IHost Host()
    {
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Services.AddPipelineGateway()
            .AddSimulatedProvider("sim", o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddProvider(_chatOnly)
            .AddModel("emb", m => m.Deploy("sim", "text-embedding-3-small"))
            .AddModel("chat", m => m.Deploy("chat-only"))
            .AddEmbeddingGenerator("emb");
        return builder.Build();
    }

    [Fact]
    public async Task An_application_gets_the_providers_vectors_in_input_order_with_usage_and_cost()
    {
        using var host = Host();
        await host.StartAsync(Ct);
        var generator = host.Services.GetRequiredService<IEmbeddingGenerator<string, Embedding<float>>>();

        var embeddings = await generator.GenerateAsync(["first", "second", "third"], new EmbeddingGenerationOptions { Dimensions = 8 }, Ct);

        embeddings.Should().HaveCount(3);
        embeddings.Should().OnlyContain(e => e.Vector.Length == 8 && e.ModelId == "text-embedding-3-small");
        foreach (var e in embeddings)
        {
            Math.Sqrt(e.Vector.ToArray().Sum(x => (double)x * x)).Should().BeApproximately(1, 1e-5, "the simulator's vectors are unit length");
        }

        // The same vectors the simulator gives for each text (so the order is the inputs').
        var expected = SimulatedEmbeddings.Data(new OperationRequest(OperationKind.Embeddings, JsonDocument.Parse("""{"input":["first","second","third"],"dimensions":8}""").RootElement));
        embeddings.Select(e => e.Vector.ToArray()).Should().BeEquivalentTo(Embeddings.Vectors(expected), o => o.WithStrictOrdering());

        embeddings.Usage!.InputTokenCount.Should().BePositive();
        embeddings.AdditionalProperties!["gateway.provider"].Should().Be("sim");
        var metrics = host.Services.GetRequiredService<PipelineGateway.Metrics.IGatewayMetrics>().GetSnapshot();
        metrics.TotalRequests.Should().Be(1);
        metrics.TotalCost.Should().Be(embeddings.Usage.InputTokenCount!.Value * 0.02m / 1_000_000m);
        generator.GetService<EmbeddingGeneratorMetadata>()!.DefaultModelId.Should().Be("emb");

        (await generator.GenerateAsync([], cancellationToken: Ct)).Should().BeEmpty();
        host.Services.GetRequiredService<PipelineGateway.Metrics.IGatewayMetrics>().GetSnapshot().TotalRequests.Should().Be(1, "nothing to embed is no request");
        await host.StopAsync(Ct);
    }

    [Fact]
    public void Vectors_go_in_input_order_by_index_and_an_item_without_one_takes_the_first_place_left()
    {
        var list = """[{"index":1,"embedding":[1.5]},{"embedding":"AAAAQA=="},{"index":1,"embedding":[3]}]"""u8.ToArray();
        Embeddings.Vectors(new OperationAnswer(OperationKind.Embeddings, list, 3)).Should().BeEquivalentTo(new[] { new[] { 2f }, new[] { 1.5f }, new[] { 3f } }, o => o.WithStrictOrdering());
    }

    [Fact]
    public async Task A_bad_input_is_a_typed_request_error_and_a_model_that_cannot_embed_says_so()
    {
        using var host = Host();
        await host.StartAsync(Ct);
        var queue = host.Services.GetRequiredService<IGatewayQueue>();

        var empty = () => queue.AsEmbeddingGenerator("emb").GenerateAsync(["ok", ""], cancellationToken: Ct);
        (await empty.Should().ThrowAsync<InvalidRequestException>()).Which.Param.Should().Be("input[1]");

        var chat = () => queue.AsEmbeddingGenerator("chat").GenerateAsync(["x"], cancellationToken: Ct);
        (await chat.Should().ThrowAsync<UpstreamRejectedException>()).Which.Message.Should().Contain("no embeddings API");
        _chatOnly.Calls.Should().Be(0, "a provider without embeddings is not called");
        await host.StopAsync(Ct);
    }
}
