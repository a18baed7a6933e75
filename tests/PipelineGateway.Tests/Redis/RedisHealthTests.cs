using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Redis;
using PipelineGateway.Tests.Support;
using StackExchange.Redis;

namespace PipelineGateway.Tests.Redis;

/// <summary>Health verdicts shared by two gateway instances through Redis pub/sub.</summary>
public sealed class RedisHealthTests
{
    private const string Primary = "m/p/m";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // Model "m": deployment p first, q as the fallback; the same configuration on both instances.
    private static Task<Gateway> Instance(string redis, string prefix, FakeProvider p, FakeProvider q) => Shared(TestGateway.With(p, q), redis, prefix);

    /// <summary>Two failures open a circuit for 30 s, retries at once; health shared through Redis under <paramref name="prefix"/>.</summary>
    private static Task<Gateway> Shared(GatewayBuilder builder, string redis, string prefix) => builder
        .Configure(o =>
        {
            o.Health.ConsecutiveFailures = 2;
            o.Health.Cooldown = TimeSpan.FromSeconds(30);
            o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
        })
        .AddRedis(redis, keyPrefix: prefix)
        .StartAsync(Ct);

    private static Task BothSubscribed(string redis, string prefix) => Subscribed(redis, prefix, 2);

    private static Task Subscribed(string redis, string prefix, int instances)
    {
        var db = RedisServer.Connect(redis);
        return Wait.Until(() => (long)((RedisResult[])db.Execute("PUBSUB", "NUMSUB", prefix + ":health")!)[1] == instances, $"{instances} instance(s) subscribe to health signals");
    }

    /// <summary>Instance <paramref name="b"/> holds p's cooldown and sends around it: p's provider there is never called.</summary>
    private static async Task HonoursCooldownAsync(Gateway b, FakeProvider pB, string because, int timeoutMs)
    {
        await Wait.Until(() => b.Metrics.GetSnapshot().Deployments[Primary].CooldownRemainingMs > 20_000, because, timeoutMs: timeoutMs);
        (await b.SubmitAsync(TestGateway.Request(text: because), Ct)).Gateway!.Provider.Should().Be("q");
        pB.Calls.Should().Be(0);
    }

    private static string Prefix() => "t" + Guid.NewGuid().ToString("N")[..12];

    [Fact]
    public async Task A_429_cooldown_seen_by_one_instance_is_honoured_by_the_other()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var pA = new FakeProvider("p") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RateLimited, "429", 429, TimeSpan.FromSeconds(30)) };
        var pB = new FakeProvider("p");
        await using var a = await Instance(redis, prefix, pA, new FakeProvider("q"));
        await using var b = await Instance(redis, prefix, pB, new FakeProvider("q"));
        await BothSubscribed(redis, prefix); // pub/sub keeps no history: both must listen before the verdict

        (await a.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("q", "A falls back after p's 429");

        await Wait.Until(() => b.Metrics.GetSnapshot().Deployments[Primary].CooldownRemainingMs > 20_000, "B learns of p's cooldown", timeoutMs: 5_000);
        for (var i = 0; i < 5; i++)
        {
            (await b.SubmitAsync(TestGateway.Request(text: $"b{i}"), Ct)).Gateway!.Provider.Should().Be("q");
        }

        pB.Calls.Should().Be(0, "B never sends to a deployment another instance saw rate-limited");
    }

    [Fact]
    public async Task A_providers_429_pause_seen_by_one_instance_pauses_that_provider_on_the_other()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var pA = new FakeProvider("p") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RateLimited, "429", 429, TimeSpan.FromSeconds(30)) };
        var pB = new FakeProvider("p");

        // Model "other" is served by p alone: the deployment cooldown of m/p/m does not cover it, the provider's pause does.
        Task<Gateway> Start(FakeProvider p) => TestGateway.With(p, new FakeProvider("q"))
            .AddModel("other", m => m.Strategy("Priority").Deploy("p"))
            .Configure(o => o.Pipeline.MaxQueueWait = TimeSpan.FromSeconds(5))
            .AddRedis(redis, keyPrefix: prefix)
            .StartAsync(Ct);
        await using var a = await Start(pA);
        await using var b = await Start(pB);
        await BothSubscribed(redis, prefix);

        (await a.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("q", "A falls back after p's 429");
        await Wait.Until(() => b.Metrics.GetSnapshot().Providers["p"].PausedMs > 20_000, "B learns of p's pause", timeoutMs: 5_000);

        var act = async () => await b.SubmitAsync(TestGateway.Request(model: "other"), SubmitMode.FailFast, Ct);
        (await act.Should().ThrowAsync<RateLimitedException>()).Which.RetryAfter.Should().BeGreaterThan(TimeSpan.FromSeconds(15));
        pB.Calls.Should().Be(0, "B does not call a provider another instance saw rate-limited, for any of its models");
    }

    [Fact]
    public async Task A_circuit_opened_by_one_instance_is_open_on_the_other()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var pA = new FakeProvider("p") { OnComplete = (_, _) => throw FakeProvider.Fail503() };
        var pB = new FakeProvider("p");
        await using var a = await Instance(redis, prefix, pA, new FakeProvider("q"));
        await using var b = await Instance(redis, prefix, pB, new FakeProvider("q"));
        await BothSubscribed(redis, prefix);

        for (var i = 0; i < 3; i++)
        {
            await a.SubmitAsync(TestGateway.Request(text: $"a{i}"), Ct);
        }

        a.Metrics.GetSnapshot().Deployments[Primary].HealthState.Should().Be("open");
        await Wait.Until(() => b.Metrics.GetSnapshot().Deployments[Primary].HealthState == "open", "B opens p's circuit too", timeoutMs: 5_000);
        (await b.SubmitAsync(TestGateway.Request(text: "b"), Ct)).Gateway!.Provider.Should().Be("q");
        pB.Calls.Should().Be(0);
    }

    [Fact]
    public async Task A_circuit_opened_on_a_wildcards_name_reaches_an_instance_that_makes_the_name_later()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        Task<Gateway> Wildcard(FakeProvider p, FakeProvider q) => Shared(
            new GatewayBuilder().AddProvider(p).AddProvider(q).AddModel("w/*", m => m.Strategy("Priority").Deploy("p").Deploy("q")), redis, prefix);
        var pA = new FakeProvider("p") { OnComplete = (_, _) => throw FakeProvider.Fail503() };
        var pB = new FakeProvider("p");
        await using var a = await Wildcard(pA, new FakeProvider("q"));
        await using var b = await Wildcard(pB, new FakeProvider("q"));
        await BothSubscribed(redis, prefix);

        for (var i = 0; i < 3; i++)
        {
            await a.SubmitAsync(TestGateway.Request(model: "w/x", text: $"a{i}"), Ct);
        }

        a.Metrics.GetSnapshot().Deployments["w/x/p/x"].HealthState.Should().Be("open");
        var db = RedisServer.Connect(redis);
        await Wait.Until(() => db.KeyExists($"{prefix}:health:v:{(int)PipelineGateway.Routing.Health.HealthSignalKind.CircuitOpen}:w/x/p/x"), "the verdict is kept in Redis");

        // B had no group for "w/x" when the verdict came (dropped then); making it asks for the running verdicts.
        b.Services.GetRequiredService<PipelineGateway.Routing.ModelCatalog>().TryResolve("w/x", out _).Should().BeTrue();
        await Wait.Until(() => b.Metrics.GetSnapshot().Deployments["w/x/p/x"].HealthState == "open", "B opens p's circuit for w/x too", timeoutMs: 5_000);
        (await b.SubmitAsync(TestGateway.Request(model: "w/x", text: "b"), Ct)).Gateway!.Provider.Should().Be("q");
        pB.Calls.Should().Be(0);
        b.Metrics.GetSnapshot().Deployments.Should().NotContainKey("w/y/p/y", "nothing made for a name not asked");
    }

    [Fact]
    public async Task An_instance_that_starts_during_a_cooldown_honours_it_too()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var pA = new FakeProvider("p") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RateLimited, "429", 429, TimeSpan.FromSeconds(30)) };
        await using var a = await Instance(redis, prefix, pA, new FakeProvider("q"));
        (await a.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("q");
        var db = RedisServer.Connect(redis);
        await Wait.Until(() => db.KeyExists($"{prefix}:health:v:0:{Primary}"), "the verdict is kept in Redis");

        var pB = new FakeProvider("p");
        await using var b = await Instance(redis, prefix, pB, new FakeProvider("q"));
        await HonoursCooldownAsync(b, pB, "the late instance reads the running verdict", timeoutMs: 5_000);
    }

    [Fact]
    public async Task An_instance_whose_connection_comes_back_reads_the_verdicts_it_missed()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var pB = new FakeProvider("p");
        await using var b = await Instance(redis + ",name=gw-b-" + prefix, prefix, pB, new FakeProvider("q"));
        await Subscribed(redis, prefix, 1);
        var db = RedisServer.Connect(redis);

        // Another instance's verdict whose message B did not get (B was cut off when it was published): only the key.
        db.StringSet($"{prefix}:health:v:0:{Primary}", "other-instance", TimeSpan.FromSeconds(30));
        b.Metrics.GetSnapshot().Deployments[Primary].CooldownRemainingMs.Should().Be(0);

        // Cut B's connections; StackExchange.Redis reconnects them by itself.
        using var admin = await ConnectionMultiplexer.ConnectAsync(redis + ",allowAdmin=true");
        var server = admin.GetServer(admin.GetEndPoints()[0]);
        var killed = 0;
        foreach (var client in server.ClientList().Where(c => c.Name == "gw-b-" + prefix))
        {
            killed += (int)server.ClientKill(id: client.Id);
        }

        killed.Should().BePositive("B's connections are found by their client name");
        await HonoursCooldownAsync(b, pB, "B reads the running verdict once it is reconnected", timeoutMs: 10_000);
    }
}
