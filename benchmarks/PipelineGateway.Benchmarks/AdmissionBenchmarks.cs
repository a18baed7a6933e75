using System.Threading.RateLimiting;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Options;
using PipelineGateway.Admission;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// The admission limiter's cost per request: a chain of a per-minute token bucket and a per-hour sliding window
/// (limits high enough never to refuse), single-threaded and from 64 threads on one partition and on 64
/// partitions. Baseline: System.Threading.RateLimiting's TokenBucketRateLimiter.AttemptAcquire, same run.
/// One operation = 1,024 acquisitions; figures are per acquisition.
/// </summary>
[MemoryDiagnoser]
public class LimiterBenchmarks
{
    private const int PerOp = 1024;
    private AdmissionRateLimiter _limiter = null!;
    private TokenBucketRateLimiter _bcl = null!;
    private WorkItem[] _sharedPartition = null!;
    private WorkItem[] _ownPartitions = null!;

    [Params(1, 64)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var options = Options.Create(new GatewayOptions
        {
            Admission = new AdmissionOptions
            {
                PartitionBy = PipelineGateway.Admission.RateLimitPartition.Key,
                RateLimits =
                [
                    new RateLimitRule { Algorithm = RateLimitAlgorithm.TokenBucket, Limit = long.MaxValue / 4, Window = TimeSpan.FromMinutes(1) },
                    new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = long.MaxValue / 4, Window = TimeSpan.FromSeconds(1) },
                ],
            },
        });
        _limiter = new AdmissionRateLimiter(options, TimeProvider.System);
        _bcl = new TokenBucketRateLimiter(new TokenBucketRateLimiterOptions { TokenLimit = int.MaxValue, TokensPerPeriod = int.MaxValue, ReplenishmentPeriod = TimeSpan.FromMilliseconds(1), AutoReplenishment = true, QueueLimit = 0 });
        var group = BenchmarkCatalog.Group();
        _sharedPartition = [.. Enumerable.Range(0, 64).Select(_ => Item(group, "tenant"))];
        _ownPartitions = [.. Enumerable.Range(0, 64).Select(i => Item(group, "tenant-" + i))];
    }

    private static readonly Pipeline.Deadlines Deadlines = new(TimeProvider.System);

    private static WorkItem Item(ModelGroup group, string key) =>
        new(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("hi")], Gateway = new GatewayRequestOptions { RateLimitKey = key } }, group, false, TimeSpan.FromHours(1), Deadlines, CancellationToken.None);

    [Benchmark(Baseline = true, OperationsPerInvoke = PerOp)]
    public void Bcl_TokenBucket() => Run(t => { using var lease = _bcl.AttemptAcquire(1); });

    [Benchmark(OperationsPerInvoke = PerOp)]
    public void Chain_OnePartition() => Run(t => _limiter.TryAdmit(_sharedPartition[t], out _));

    [Benchmark(OperationsPerInvoke = PerOp)]
    public void Chain_PartitionPerThread() => Run(t => _limiter.TryAdmit(_ownPartitions[t], out _));

    private void Run(Action<int> acquire) => Threaded.Run(Threads, PerOp, acquire);
}

/// <summary>Prompt token counting with the o200k tokenizer versus the cheap estimate, for 2 KB and 50 KB conversations.</summary>
[MemoryDiagnoser]
public class TokenizerBenchmarks
{
    private ChatCompletionRequest _request = null!;

    [Params(2 * 1024, 50 * 1024)]
    public int ConversationBytes { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        const string Sentence = "The gateway routes chat requests across providers with bounded channels and backpressure. ";
        var messages = new List<ChatCompletionMessage> { ChatCompletionMessage.System("You are a helpful assistant.") };
        var size = 0;
        for (var i = 0; size < ConversationBytes; i++)
        {
            var text = string.Concat(Enumerable.Repeat(Sentence, 4)) + $"(turn {i})";
            messages.Add(i % 2 == 0 ? ChatCompletionMessage.User(text) : ChatCompletionMessage.Assistant(text));
            size += text.Length;
        }

        _request = new ChatCompletionRequest { Model = "gpt-4o", Messages = messages };
        TokenCounter.CountPrompt(_request, "gpt-4o"); // loads the tokenizer outside the measurement
    }

    [Benchmark(Baseline = true)]
    public int Approximate() => TokenEstimate.Approximate(_request);

    [Benchmark]
    public int O200k() => TokenCounter.CountPrompt(_request, "gpt-4o");

    [Benchmark]
    public int Cl100k() => TokenCounter.CountPrompt(_request, "gpt-4");
}

internal static class BenchmarkCatalog
{
    public static ModelGroup Group()
    {
        var gateway = new GatewayBuilder().AddProvider(new InstantProvider("p")).AddModel("m", "p").StartAsync().GetAwaiter().GetResult();
        return ((ModelCatalog)gateway.Services.GetService(typeof(ModelCatalog))!).Groups[0];
    }
}
