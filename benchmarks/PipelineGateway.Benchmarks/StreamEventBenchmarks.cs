using System.Text;
using BenchmarkDotNet.Attributes;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// Reading one streamed event into a chunk, as the OpenAI adapter does per SSE event: for a library caller (the chunk
/// only) and for the SSE endpoint (the chunk keeps the event's bytes). Two events: the simulator's, and one as OpenAI
/// sends it today, with members the gateway does not model (<c>service_tier</c>, <c>obfuscation</c>) and nulls; and the
/// SSE endpoint's read with the choices skimmed (left in the kept bytes).
/// </summary>
[MemoryDiagnoser]
public class StreamEventBenchmarks
{
    private static readonly byte[] Simulator = Encoding.UTF8.GetBytes(
        """{"id":"chatcmpl-sim1","object":"chat.completion.chunk","created":1764720000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" gateway"},"finish_reason":null,"logprobs":null}]}""");

    private static readonly byte[] OpenAI = Encoding.UTF8.GetBytes(
        """{"id":"chatcmpl-CAbC123xyz","object":"chat.completion.chunk","created":1764720000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":{"content":" gateway"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"Xq3L9"}""");

    private string? _id;

    [Benchmark(Baseline = true)]
    public ChatCompletionChunk? SimulatorEvent() => AnswerJson.ReadStreamChunk(Simulator, ref _id);

    [Benchmark]
    public ChatCompletionChunk? SimulatorEventKept() => Release(AnswerJson.ReadStreamChunk(Simulator, ref _id, keepEventJson: true));

    /// <summary>The SSE endpoint's read when nothing in the gateway needs the choices (no cached answer being built): skimmed.</summary>
    [Benchmark]
    public ChatCompletionChunk? SimulatorEventSkimmed() => Release(AnswerJson.ReadStreamChunk(Simulator, ref _id, keepEventJson: true, skimChoices: true));

    [Benchmark]
    public ChatCompletionChunk? OpenAIEvent() => AnswerJson.ReadStreamChunk(OpenAI, ref _id);

    [Benchmark]
    public ChatCompletionChunk? OpenAIEventKept() => Release(AnswerJson.ReadStreamChunk(OpenAI, ref _id, keepEventJson: true));

    [Benchmark]
    public ChatCompletionChunk? OpenAIEventSkimmed() => Release(AnswerJson.ReadStreamChunk(OpenAI, ref _id, keepEventJson: true, skimChoices: true));

    /// <summary>What the SSE endpoint does after writing the bytes: the rented buffer goes back.</summary>
    private static ChatCompletionChunk? Release(ChatCompletionChunk? chunk)
    {
        if (chunk?.TakeEventJson(out var buffer, out _) == true)
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }

        return chunk;
    }
}
