using FluentAssertions;
using Microsoft.Extensions.Logging;
using PipelineGateway.Admission;
using PipelineGateway.Hosting;
using PipelineGateway.Redis;
using PipelineGateway.Tests.Support;
using StackExchange.Redis;

namespace PipelineGateway.Tests.Redis;

/// <summary>Fleet-wide admission limits: two gateway instances in one process sharing one real Redis.</summary>
public sealed class RedisRateLimitTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Task<Gateway> Instance(string redis, string prefix, Action<AdmissionOptions> limits, RedisFailureMode mode = RedisFailureMode.FailOpen, CapturingLoggerProvider? logs = null, FakeProvider? provider = null) =>
        new GatewayBuilder()
            .AddProvider(provider ?? new FakeProvider("p"), workers: 8, queueCapacity: 512)
            .AddModel("m", "p")
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 1024;
                o.Pipeline.AdmissionQueueCapacity = 1024;
                limits(o.Admission);
            })
            .ConfigureLogging(l =>
            {
                if (logs is not null)
                {
                    l.AddProvider(logs);
                }
            })
            .AddRedis(redis, mode, prefix)
            .StartAsync(Ct);

    private static string Prefix() => "t" + Guid.NewGuid().ToString("N")[..12];

    private static async Task<(int Admitted, int Refused)> SubmitAcross(int count, params Gateway[] instances)
    {
        var tasks = Enumerable.Range(0, count).Select(async i =>
        {
            try
            {
                await instances[i % instances.Length].SubmitAsync(TestGateway.Request(), SubmitMode.FailFast, Ct);
                return true;
            }
            catch (Exception ex) when (ex is RateLimitedException or QueueFullException)
            {
                // QueueFull: the tenant's share of admission's waiting room is full of requests pending a decision.
                return false;
            }
        }).ToArray();
        var results = await Task.WhenAll(tasks);
        return (results.Count(r => r), results.Count(r => !r));
    }

    [Theory]
    [InlineData(RateLimitAlgorithm.SlidingWindow)]
    [InlineData(RateLimitAlgorithm.TokenBucket)]
    public async Task A_limit_of_100_admits_exactly_100_across_two_instances(RateLimitAlgorithm algorithm)
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        // A token bucket refills continuously: an hour-long window keeps refill out of a sub-second test.
        var window = algorithm == RateLimitAlgorithm.TokenBucket ? TimeSpan.FromHours(1) : TimeSpan.FromMinutes(1);
        void Limits(AdmissionOptions a) => a.RateLimits.Add(new RateLimitRule { Algorithm = algorithm, Limit = 100, Window = window });
        await using var a = await Instance(redis, prefix, Limits);
        await using var b = await Instance(redis, prefix, Limits);

        var (admitted, refused) = await SubmitAcross(160, a, b);

        admitted.Should().Be(100, "the limit holds for the fleet, not per instance");
        refused.Should().Be(60);
    }

    [Fact]
    public async Task All_limits_of_a_request_are_admitted_or_refused_together()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var perMinute = new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 3, Window = TimeSpan.FromMinutes(1) };
        var perHour = new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1000, Window = TimeSpan.FromHours(1) };
        await using var a = await Instance(redis, prefix, o => o.RateLimits.AddRange([perMinute, perHour]));

        var (admitted, refused) = await SubmitAcross(5, a);

        (admitted, refused).Should().Be((3, 2));
        var keys = KeysOf(redis, prefix, [perMinute, perHour]);
        var db = RedisServer.Connect(redis);
        ((long)await db.StringGetAsync(keys[3])).Should().Be(3, "a request refused by the per-minute rule is not charged to the per-hour rule");
    }

    [Fact]
    public async Task Token_charges_are_corrected_to_actual_usage_after_the_answer()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var tokens = new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Unit = RateLimitUnit.Tokens, Limit = 100_000, Window = TimeSpan.FromMinutes(1) };
        await using var a = await Instance(redis, prefix, o => o.RateLimits.Add(tokens));

        for (var i = 0; i < 5; i++)
        {
            var r = TestGateway.Request();
            r.MaxTokens = 500; // estimated at 500+ tokens; the fake provider reports 4 used
            await a.SubmitAsync(r, Ct);
        }

        var db = RedisServer.Connect(redis);
        var sum = KeysOf(redis, prefix, [tokens])[1];
        await Wait.Until(() => (long)db.StringGet(sum) == 5 * 4, "the five charges are corrected to 4 tokens each");
    }

    [Fact]
    public async Task Keys_of_one_partition_share_a_hash_tag_so_Redis_Cluster_keeps_them_in_one_slot()
    {
        var rules = new[]
        {
            new RateLimitRule { Algorithm = RateLimitAlgorithm.TokenBucket, Limit = 10 },
            new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 100, Window = TimeSpan.FromHours(1) },
        };
        var keys = KeysOf("127.0.0.1:1", "pgw", rules).Select(k => k.ToString()).ToList();
        keys.Should().HaveCount(4).And.OnlyHaveUniqueItems();
        var tags = keys.Select(k => k[(k.IndexOf('{', StringComparison.Ordinal) + 1)..k.IndexOf('}', StringComparison.Ordinal)]).Distinct().ToList();
        tags.Should().ContainSingle().Which.Should().StartWith("p:");
        KeysOf("127.0.0.1:1", "pgw", rules, partition: "other tenant")[0].ToString().Should().NotContain(tags[0]);
    }

    [Fact]
    public async Task Redis_down_fails_open_to_local_limits_with_a_clear_log_and_shared_limits_return_with_Redis()
    {
        await using var server = await RedisServer.StartAsync();
        var logs = new CapturingLoggerProvider();
        await using var a = await Instance(server.Configuration, Prefix(), o => o.RateLimits.Add(new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 5, Window = TimeSpan.FromMinutes(1) }), RedisFailureMode.FailOpen, logs);
        (await SubmitAcross(7, a)).Should().Be((5, 2), "Redis holds the limit");

        await server.StopAsync();
        (await SubmitAcross(7, a)).Should().Be((5, 2), "while Redis is down this instance's own limit applies");
        logs.Lines.Should().Contain(m => m.Contains("rate-limit store is unreachable", StringComparison.Ordinal) && m.Contains("failing open", StringComparison.Ordinal));

        await server.StartAsync();
        // The local limit is used up, so an admission now can only come from the restarted (empty) Redis.
        await Wait.Until(() => SubmitAcross(1, a).GetAwaiter().GetResult().Admitted == 1, "Redis is back and its limits apply again");
        logs.Lines.Should().Contain(m => m.Contains("reachable again", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Redis_down_fails_closed_when_configured_and_recovers()
    {
        await using var server = await RedisServer.StartAsync();
        await using var a = await Instance(server.Configuration, Prefix(), o => o.RateLimits.Add(new RateLimitRule { Algorithm = RateLimitAlgorithm.TokenBucket, Limit = 100, Window = TimeSpan.FromMinutes(1) }), RedisFailureMode.FailClosed);
        (await SubmitAcross(3, a)).Admitted.Should().Be(3);

        await server.StopAsync();
        var refused = async () => await a.SubmitAsync(TestGateway.Request(), SubmitMode.FailFast, Ct);
        (await refused.Should().ThrowAsync<RateLimitedException>()).WithMessage("*unreachable*fail closed*");
        var many = await SubmitAcross(500, a);
        many.Should().Be((0, 500), "every request is answered at once while Redis is down: nothing piles up");

        await server.StartAsync();
        await Wait.Until(() => SubmitAcross(1, a).GetAwaiter().GetResult().Admitted == 1, "Redis is back");
    }

    private static RedisKey[] KeysOf(string redis, string prefix, RateLimitRule[] rules, string partition = "") =>
        new RedisRateLimitStore(new RedisConnection(Microsoft.Extensions.Options.Options.Create(new RedisOptions { Configuration = redis, KeyPrefix = prefix }), Microsoft.Extensions.Logging.Abstractions.NullLogger<RedisConnection>.Instance))
            .Keys(partition, rules);
}
