using System.Runtime.CompilerServices;
using PipelineGateway.Providers;

namespace PipelineGateway.Benchmarks;

/// <summary>A zero-latency provider answering with one shared response: what is measured is the gateway.</summary>
public sealed class InstantProvider(string name) : ILlmProvider
{
    private static readonly ChatCompletionResponse Shared = new()
    {
        Id = "bench",
        Model = "m",
        Choices = [new ChatChoice { Message = ChatCompletionMessage.Assistant("ok"), FinishReason = FinishReasons.Stop }],
        Usage = TokenUsage.Of(5, 1),
    };

    public string Name { get; } = name;

    // A fresh shell per call, as a real adapter would allocate one, so the gateway can set its metadata.
    public ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken) =>
        ValueTask.FromResult(new ChatCompletionResponse { Id = Shared.Id, Model = request.Model, Choices = Shared.Choices, Usage = Shared.Usage });

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Task.CompletedTask;
        yield return new ChatCompletionChunk { Id = "bench", Model = request.Model };
    }
}
