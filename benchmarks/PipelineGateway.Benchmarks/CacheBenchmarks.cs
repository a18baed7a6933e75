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
    public UInt128 CanonicalKey() => CacheKey.Compute("m", _request).Hash;
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
            .AddModel("m", "p")
            .AddCache(TimeSpan.FromHours(1))
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

/// <summary>
/// Inserting into a full cache (each insert evicts the least recently used entry) against replacing an entry in a
/// cache of the same size (no eviction: what an insert into a cache that is not full costs), same run. Issue 19's
/// target: eviction adds at most 2 µs, at any size.
/// </summary>
[MemoryDiagnoser]
public class CacheInsertBenchmarks
{
    private const int Batch = 1_000;
    private ResponseCache _cache = null!;
    private CacheKey[] _keys = null!;
    private StoredAnswer _answer = null!;
    private int _next;
    private int _replace;

    [Params(1_000, 10_000, 100_000)]
    public int Entries { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var options = new GatewayOptions();
        options.Cache.Enabled = true;
        options.Cache.MaxEntries = Entries;
        options.Cache.MaxBytes = long.MaxValue / 2;
        _cache = new ResponseCache(Microsoft.Extensions.Options.Options.Create(options), TimeProvider.System);
        _keys = Enumerable.Range(0, 2 * Entries)
            .Select(i => CacheKey.Compute("m", new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User($"prompt {i}")] }))
            .ToArray();
        _answer = StoredAnswer.From(new ChatCompletionResponse
        {
            Id = "x",
            Model = "m",
            Choices = [new ChatChoice { Message = ChatCompletionMessage.Assistant("An answer of a typical length, a sentence or two long."), FinishReason = FinishReasons.Stop }],
            Usage = TokenUsage.Of(12, 14),
        });
        for (var i = 0; i < Entries; i++)
        {
            _cache.Set(_keys[i], _answer, null);
        }

        _next = Entries;
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Batch)]
    public void Replace_NotFull()
    {
        for (var i = 0; i < Batch; i++)
        {
            // One of the entries held (keys 0 .. Entries-1): replaced, nothing evicted.
            _cache.Set(_keys[_replace], _answer, null);
            _replace = (_replace + 1) % Entries;
        }
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public void Insert_Full_Evicting()
    {
        for (var i = 0; i < Batch; i++)
        {
            // Keys cycle over twice the capacity, so the next one is never held: every insert evicts one entry.
            _cache.Set(_keys[_next], _answer, null);
            _next = (_next + 1) % _keys.Length;
        }
    }
}
