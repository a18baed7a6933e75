using BenchmarkDotNet.Attributes;
using PipelineGateway.Caching;
using PipelineGateway.Hosting;

namespace PipelineGateway.Benchmarks;

/// <summary>Cache key computation for 2 KB and 50 KB conversations (baseline: XxHash128 of the raw text alone).</summary>
[MemoryDiagnoser]
public class CacheKeyBenchmarks
{
    private ChatCompletionRequest _request = null!;
    private byte[] _raw = null!;

    [Params(2 * 1024, 50 * 1024)]
    public int ConversationBytes { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var messages = new List<ChatCompletionMessage> { ChatCompletionMessage.System("You are a helpful assistant.") };
        var size = 0;
        for (var i = 0; size < ConversationBytes; i++)
        {
            var text = $"Turn {i}: the gateway routes chat requests across providers with bounded channels and backpressure.";
            messages.Add(i % 2 == 0 ? ChatCompletionMessage.User(text) : ChatCompletionMessage.Assistant(text));
            size += text.Length;
        }

        _request = new ChatCompletionRequest { Model = "m", Messages = messages, Temperature = 0, MaxTokens = 256 };
        _raw = System.Text.Encoding.UTF8.GetBytes(string.Concat(messages.Select(m => m.Content!.Text)));
    }

    [Benchmark(Baseline = true)]
    public UInt128 HashRawTextOnly() => System.IO.Hashing.XxHash128.HashToUInt128(_raw);

    [Benchmark]
    public CacheKey CanonicalKey() => CacheKey.Compute("m", _request);
}

/// <summary>A cache hit through the whole pipeline, against a miss answered by an instant provider (same run).</summary>
[MemoryDiagnoser]
public class CacheHitBenchmarks
{
    private Gateway _gateway = null!;
    private ChatCompletionRequest _cachedRequest = null!;
    private ChatCompletionRequest _uncachedRequest = null!;

    [GlobalSetup]
    public async Task Setup()
    {
        _gateway = await new GatewayBuilder()
            .AddProvider(new InstantProvider("p"))
            .AddModel("m", providers: "p")
            .WithCache(TimeSpan.FromHours(1))
            .StartAsync();
        _cachedRequest = new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("Hello, cached!")] };
        _uncachedRequest = new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("Hello, fresh!")], Gateway = new GatewayRequestOptions { NoStore = true } };
        await _gateway.SubmitAsync(_cachedRequest);
    }

    [GlobalCleanup]
    public async Task Cleanup() => await _gateway.DisposeAsync();

    [Benchmark(Baseline = true)]
    public async Task<int> Miss_InstantProvider() => (await _gateway.SubmitAsync(_uncachedRequest)).Choices.Count;

    [Benchmark]
    public async Task<int> Hit() => (await _gateway.SubmitAsync(_cachedRequest)).Choices.Count;
}
