using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.Redis;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Redis;

/// <summary>One budget spent by two gateway instances through a real Redis.</summary>
public sealed class RedisBudgetTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // $1 a token in and out: each answer costs 3 + 1 = $4; each request is reserved at $6 (see BudgetTests).
    private static Task<Gateway> Instance(string redis, string prefix, FakeProvider provider, RedisFailureMode mode = RedisFailureMode.FailOpen) => new GatewayBuilder()
        .AddProvider(provider, workers: 16, queueCapacity: 1000)
        .Configure(o =>
        {
            o.Pipeline.MaxInFlight = 2048;
            o.Pipeline.AdmissionQueueCapacity = 2048;
            o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = provider.Name, InputPricePerMillion = 1_000_000m, OutputPricePerMillion = 1_000_000m }] });
        })
        .AddBudget(120m, BudgetPeriod.Day)
        .AddRedis(redis, mode, prefix)
        .StartAsync(Ct);

    [Fact]
    public async Task Two_instances_cannot_overspend_one_budget_beyond_the_reservations_in_flight()
    {
        var redis = RedisServer.Shared();
        var prefix = "t" + Guid.NewGuid().ToString("N")[..12];
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var a = await Instance(redis, prefix, FakeProvider.Gated("p", gate));
        await using var b = await Instance(redis, prefix, FakeProvider.Gated("p", gate));

        // 1,000 concurrent requests over both instances, each reserving $6: only 20 fit in $120 between them.
        var all = Enumerable.Range(0, 1000).Select(i =>
        {
            var r = TestGateway.Request();
            r.MaxTokens = 1;
            return (i % 2 == 0 ? a : b).SubmitAsync(r, Ct).AsTask();
        }).ToArray();
        await Wait.Until(() => a.Metrics.GetSnapshot().TotalRequests + b.Metrics.GetSnapshot().TotalRequests == 980, "the rest are refused");
        gate.SetResult();
        var admitted = await Outcomes.CountSucceeded<BudgetExceededException>(all);

        admitted.Should().Be(20, "the fleet shares one $120 budget");
        var db = RedisServer.Connect(redis);
        var day = "d" + DateTime.UtcNow.ToString("yyyyMMdd", System.Globalization.CultureInfo.InvariantCulture);
        var account = $"{prefix}:{{b}}:0::{day}";
        await Wait.Until(() => (long)db.HashGet(account, "r") == 0, "every reservation is settled");
        ((long)await db.HashGetAsync(account, "s")).Should().Be(80_000_000_000, "20 answers of $4, in nano-dollars");
    }

    /// <summary>An instance with model "m" at <paramref name="pricePerMillion"/> a million tokens either way, <paramref name="budgets"/> kept in Redis (failing closed).</summary>
    private static Task<Gateway> BudgetedOnRedis(string redis, string prefix, decimal pricePerMillion, params BudgetOptions[] budgets) => new GatewayBuilder()
        .AddProvider(new FakeProvider("p"))
        .Configure(o =>
        {
            o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "p", InputPricePerMillion = pricePerMillion, OutputPricePerMillion = pricePerMillion }] });
            o.Budgets.AddRange(budgets);
        })
        .AddRedis(redis, RedisFailureMode.FailClosed, prefix)
        .StartAsync(Ct);

    [Fact]
    public async Task A_per_user_budget_is_one_account_per_user_across_the_fleet()
    {
        var redis = RedisServer.Shared();
        var prefix = "t" + Guid.NewGuid().ToString("N")[..12];
        Task<Gateway> PerUser() => BudgetedOnRedis(redis, prefix, 1_000_000m, new BudgetOptions { Name = "per user", Scope = BudgetScope.User, Period = BudgetPeriod.Day, LimitUsd = 10m });
        static ChatCompletionRequest By(string user)
        {
            var r = TestGateway.Request().NamingUser(user);
            r.MaxTokens = 1;
            return r;
        }

        await using var a = await PerUser();
        await using var b = await PerUser();
        var db = RedisServer.Connect(redis);
        var day = "d" + DateTime.UtcNow.ToString("yyyyMMdd", System.Globalization.CultureInfo.InvariantCulture);
        Task Settled(string user) => Wait.Until(() => (long)db.HashGet($"{prefix}:{{b}}:0:{user}:{day}", "r") == 0, "the reservation is settled (after the answer)");

        await a.SubmitAsync(By("alice"), Ct); // spent 4
        await a.SubmitAsync(By("alice"), Ct); // at once: a refusal meanwhile waits for the first settlement; spent 8
        await Settled("alice"); // (another instance does not know of this one's settlements on their way)
        var act = async () => await b.SubmitAsync(By("alice"), Ct); // 8 + 6 > 10, in the same account
        await act.Should().ThrowAsync<BudgetExceededException>();
        await b.SubmitAsync(By("bob"), Ct);

        await Settled("bob");

        // Where alice stands, asked of the instance that served her once: the fleet's account, not its own half.
        var standing = (await b.Services.GetRequiredService<BudgetTracker>().StandingAsync(string.Empty, "alice", Ct))!;
        standing.Select(s => (s.Budget.DisplayName, s.Spent, s.Reserved, s.Remaining)).Should().Equal(("per user", 8m, 0m, 2m));
        ((long)await db.HashGetAsync($"{prefix}:{{b}}:0:alice:{day}", "s")).Should().Be(8_000_000_000);
        ((long)await db.HashGetAsync($"{prefix}:{{b}}:0:bob:{day}", "s")).Should().Be(4_000_000_000);
    }

    [Fact]
    public async Task A_budget_for_every_user_keeps_at_most_MaxUsers_accounts_across_the_fleet()
    {
        var redis = RedisServer.Shared();
        var prefix = "t" + Guid.NewGuid().ToString("N")[..12];
        Task<Gateway> PerUser() => BudgetedOnRedis(
            redis,
            prefix,
            1m,
            new BudgetOptions { Name = "per user", Scope = BudgetScope.User, Period = BudgetPeriod.Day, LimitUsd = 10m, MaxUsers = 3 },
            new BudgetOptions { Name = "all", Period = BudgetPeriod.Day, LimitUsd = 100m });

        await using var a = await PerUser();
        await using var b = await PerUser();
        await a.SubmitAsync(TestGateway.Request().NamingUser("u0"), Ct);
        await b.SubmitAsync(TestGateway.Request().NamingUser("u1"), Ct);
        await a.SubmitAsync(TestGateway.Request().NamingUser("u2"), Ct);

        foreach (var instance in new[] { a, b })
        {
            var act = async () => await instance.SubmitAsync(TestGateway.Request().NamingUser("u3"), Ct);
            (await act.Should().ThrowAsync<BudgetExceededException>()).Which.Message.Should().Contain("at most 3 users").And.Contain("across the fleet");
        }

        await b.SubmitAsync(TestGateway.Request().NamingUser("u0"), Ct); // a user the fleet keeps is served, by either instance
        await a.SubmitAsync(TestGateway.Request(), Ct); // a request naming no user is under no per-user budget
        var db = RedisServer.Connect(redis);
        var day = "d" + DateTime.UtcNow.ToString("yyyyMMdd", System.Globalization.CultureInfo.InvariantCulture);
        (await db.SetLengthAsync($"{prefix}:{{b}}:users:0:{day}")).Should().Be(3);
        (await db.KeyTimeToLiveAsync($"{prefix}:{{b}}:users:0:{day}")).Should().BePositive("the set goes with its period");
        (await db.KeyExistsAsync($"{prefix}:{{b}}:0:u3:{day}")).Should().BeFalse("a refused user gets no account");
        (await db.KeyExistsAsync($"{prefix}:{{b}}:users:1:{day}")).Should().BeFalse("a budget for all traffic has no users to bound");
    }

    [Theory]
    [InlineData(RedisFailureMode.FailOpen)]
    [InlineData(RedisFailureMode.FailClosed)]
    public async Task With_Redis_down_budgets_follow_the_failure_mode_and_recover(RedisFailureMode mode)
    {
        await using var server = await RedisServer.StartAsync();
        await using var a = await Instance(server.Configuration, "t" + Guid.NewGuid().ToString("N")[..12], new FakeProvider("p"), mode);
        var r = TestGateway.Request();
        r.MaxTokens = 1;
        await a.SubmitAsync(r, Ct);

        await server.StopAsync();
        (await a.Services.GetRequiredService<BudgetTracker>().StandingAsync(string.Empty, null, Ct)).Should().BeNull("the fleet's spend cannot be read: said, not guessed");
        var standing = async () => await a.Services.GetRequiredService<IGatewayBudgets>().GetStandingAsync(null, null, Ct);
        await standing.Should().ThrowAsync<GatewayUnavailableException>();
        var act = async () => await a.SubmitAsync(r, Ct);
        if (mode == RedisFailureMode.FailOpen)
        {
            await act.Should().NotThrowAsync("this instance's own accounts stand in");
        }
        else
        {
            (await act.Should().ThrowAsync<BudgetExceededException>()).WithMessage("*unreachable*fail closed*");
        }

        await server.StartAsync();
        await Wait.Until(() =>
        {
            try
            {
                a.SubmitAsync(r, Ct).AsTask().GetAwaiter().GetResult();
                return true;
            }
            catch (BudgetExceededException)
            {
                return false;
            }
        }, "Redis is back and reservations work again");
    }
}
