using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using PipelineGateway.Admission;
using PipelineGateway.Redis;
using StackExchange.Redis;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// The Redis limiter's added latency per request: one atomic evaluation of a two-rule chain (token bucket per
/// minute + sliding window per hour, limits high enough never to refuse) against a local Redis
/// (<c>PGW_BENCH_REDIS</c>, default 127.0.0.1:6379). Baselines in the same run: a bare Redis PING round trip
/// (the network floor) and the in-process limiter deciding the same chain.
/// </summary>
[MemoryDiagnoser]
public class RedisLimiterBenchmarks
{
    private static readonly RateLimitRule[] Rules =
    [
        new RateLimitRule { Algorithm = RateLimitAlgorithm.TokenBucket, Limit = long.MaxValue / 4, Window = TimeSpan.FromMinutes(1) },
        new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1_000_000_000, Window = TimeSpan.FromHours(1) },
    ];

    private RedisConnection _connection = null!;
    private RedisRateLimitStore _store = null!;
    private IDatabase _db = null!;
    private AdmissionRateLimiter _local = null!;
    private Pipeline.WorkItem _item = null!;
    private long _n;

    [GlobalSetup]
    public void Setup()
    {
        var configuration = Environment.GetEnvironmentVariable("PGW_BENCH_REDIS") ?? "127.0.0.1:6379";
        _connection = new RedisConnection(Options.Create(new RedisOptions { Configuration = configuration, KeyPrefix = "bench" + Environment.ProcessId }), NullLogger<RedisConnection>.Instance);
        _store = new RedisRateLimitStore(_connection);
        _db = _connection.Database;
        _local = new AdmissionRateLimiter(Options.Create(new Hosting.GatewayOptions { Admission = new AdmissionOptions { RateLimits = [.. Rules] } }), TimeProvider.System);
        _item = new Pipeline.WorkItem(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("hi")] }, BenchmarkCatalog.Group(), false, TimeSpan.FromHours(1), new Pipeline.Deadlines(TimeProvider.System), CancellationToken.None);
    }

    [GlobalCleanup]
    public void Cleanup() => _connection.Dispose();

    [Benchmark(Baseline = true)]
    public Task<TimeSpan> RedisPing() => _db.PingAsync();

    [Benchmark]
    public async Task<int> RedisLimiter_TwoRules() =>
        (int)(await _store.TryAcquireAsync("tenant", Rules, 0, "req-" + Interlocked.Increment(ref _n), CancellationToken.None)).Outcome;

    [Benchmark]
    public int InProcessLimiter_TwoRules() => _local.TryAdmit(_item, out _).GetHashCode();
}
