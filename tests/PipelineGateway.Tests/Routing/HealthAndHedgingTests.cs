using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Routing.Health;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Routing;

public sealed class HealthAndHedgingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// <see cref="DeploymentState"/> is public (a host reads it from the catalog): a host that locks an instance must not
    /// stall the circuit's transitions, which take the state's own private lock.
    /// </summary>
    [Fact]
    public async Task A_host_holding_a_deployment_states_monitor_does_not_stall_its_circuit()
    {
        var state = new DeploymentState();
        using var held = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var holder = Task.Factory.StartNew(
            () =>
            {
                lock (state)
                {
                    held.Set();
                    release.Wait();
                }
            },
            Ct,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
        held.Wait(Ct);
        try
        {
            var failure = Task.Run(() => state.OnFailure(DateTimeOffset.UtcNow, new HealthOptions { ConsecutiveFailures = 1 }), Ct);
            await failure.WaitAsync(TimeSpan.FromSeconds(30), Ct); // a bound, not a pause: it returns as soon as the call does
            state.Circuit.Should().Be(CircuitState.Open);
        }
        finally
        {
            release.Set();
            await holder;
        }
    }

    /// <summary>A provider whose answer can be switched between success and a given failure.</summary>
    private static FakeProvider Switchable(string name, Func<ProviderException?> failure) => new(name)
    {
        OnComplete = (r, _) => failure() is { } f ? throw f : ValueTask.FromResult(FakeProvider.Answer(r.Model, name)),
    };

    private static async Task<Gateway> TwoDeployments(FakeProvider primary, FakeProvider backup, Microsoft.Extensions.Time.Testing.FakeTimeProvider clock, Action<GatewayOptions>? tweak = null) =>
        await TestGateway.With(primary, backup)
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Health.ConsecutiveFailures = 2;
                o.Health.Cooldown = TimeSpan.FromSeconds(10);
                o.Health.MaxCooldown = TimeSpan.FromSeconds(40);
                tweak?.Invoke(o);
            })
            .StartAsync(Ct);

    private static Deployment Primary(Gateway g) => g.Services.GetRequiredService<ModelCatalog>().Groups[0].Deployments[0];

    [Fact]
    public async Task The_circuit_opens_probes_and_closes_at_exact_times()
    {
        var clock = TestGateway.Clock();
        ProviderException? primaryFails = FakeProvider.Fail503();
        var primary = Switchable("primary", () => primaryFails);
        var backup = new FakeProvider("backup");
        await using var gateway = await TwoDeployments(primary, backup, clock);
        var state = Primary(gateway).State;

        async Task<string[]> Send() => [.. (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Attempts.Select(a => a.Provider)];

        (await Send()).Should().Equal("primary", "backup");
        state.Circuit.Should().Be(CircuitState.Closed);
        (await Send()).Should().Equal("primary", "backup");
        state.Circuit.Should().Be(CircuitState.Open, "two consecutive failures open it");
        state.AvailableAt.Should().Be(clock.GetUtcNow() + TimeSpan.FromSeconds(10));
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.Providers["primary"].HealthState.Should().Be("open", "health is visible in metrics");
        snapshot.Providers["primary"].ConsecutiveFailures.Should().Be(2);
        snapshot.Deployments["m/primary/m"].CooldownRemainingMs.Should().Be(10_000);
        snapshot.Providers["backup"].HealthState.Should().Be("closed");

        (await Send()).Should().Equal("backup");
        clock.Advance(TimeSpan.FromSeconds(10) - TimeSpan.FromTicks(1));
        (await Send()).Should().Equal(["backup"], "the cooldown has not quite passed");

        clock.Advance(TimeSpan.FromTicks(1));
        (await Send()).Should().Equal("primary", "backup"); // the half-open probe fails…
        state.Circuit.Should().Be(CircuitState.Open);
        state.AvailableAt.Should().Be(clock.GetUtcNow() + TimeSpan.FromSeconds(20), "…and re-opens it with a doubled cooldown");

        clock.Advance(TimeSpan.FromSeconds(20));
        primaryFails = null;
        (await Send()).Should().Equal("primary"); // the probe succeeds…
        state.Circuit.Should().Be(CircuitState.Closed, "…and closes it");
        (await Send()).Should().Equal("primary");
        state.ConsecutiveFailures.Should().Be(0);
    }

    [Fact]
    public async Task The_failure_rate_opens_the_circuit_once_enough_requests_were_seen()
    {
        var clock = TestGateway.Clock();
        var n = 0;
        var primary = Switchable("primary", () => Interlocked.Increment(ref n) % 2 == 0 ? FakeProvider.Fail503() : null);
        var backup = new FakeProvider("backup");
        await using var gateway = await TwoDeployments(primary, backup, clock, o =>
        {
            o.Health.ConsecutiveFailures = 100;
            o.Health.FailureRate = 0.5;
            o.Health.MinimumRequests = 10;
        });

        for (var i = 0; i < 9; i++)
        {
            await gateway.SubmitAsync(TestGateway.Request(), Ct);
        }

        Primary(gateway).State.Circuit.Should().Be(CircuitState.Closed, "fewer than 10 requests were seen");
        await gateway.SubmitAsync(TestGateway.Request(), Ct);
        Primary(gateway).State.Circuit.Should().Be(CircuitState.Open, "half of 10 failed");
    }

    [Fact]
    public async Task A_429_cools_the_deployment_down_for_exactly_its_retry_after()
    {
        var clock = TestGateway.Clock();
        var limited = true;
        var primary = Switchable("primary", () => limited ? new ProviderException(AttemptOutcome.RateLimited, "429", 429, TimeSpan.FromSeconds(7)) : null);
        var backup = new FakeProvider("backup");
        await using var gateway = await TwoDeployments(primary, backup, clock);

        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Attempts.Select(a => a.Provider).Should().Equal("primary", "backup");
        limited = false;
        Primary(gateway).State.AvailableAt.Should().Be(clock.GetUtcNow() + TimeSpan.FromSeconds(7));

        clock.Advance(TimeSpan.FromSeconds(6.999));
        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("backup");
        clock.Advance(TimeSpan.FromMilliseconds(1));
        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("primary");
        Primary(gateway).State.Circuit.Should().Be(CircuitState.Closed, "a 429 is a cooldown, not a failure");
    }

    [Fact]
    public async Task When_every_deployment_is_unhealthy_fail_fast_says_so()
    {
        var clock = TestGateway.Clock();
        var a = Switchable("a", FakeProvider.Fail503);
        var b = Switchable("b", FakeProvider.Fail503);
        await using var gateway = await TwoDeployments(a, b, clock, o =>
        {
            o.Health.ConsecutiveFailures = 1;
            o.Health.WhenAllUnhealthy = AllUnhealthyBehavior.FailFast;
            o.Pipeline.MaxAttempts = 2;
        });

        var first = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct);
        await first.Should().ThrowAsync<AllProvidersFailedException>();

        var act = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct);
        var failure = (await act.Should().ThrowAsync<AllProvidersFailedException>()).Which;
        failure.Message.Should().Contain("every deployment is unhealthy");
        failure.Attempts.Should().BeEmpty();
        (a.Calls + b.Calls).Should().Be(2);
    }

    [Fact]
    public async Task When_every_deployment_is_unhealthy_try_earliest_uses_the_one_whose_cooldown_ends_first()
    {
        var clock = TestGateway.Clock();
        var a = Switchable("a", FakeProvider.Fail503);
        var b = Switchable("b", FakeProvider.Fail503);
        await using var gateway = await TwoDeployments(a, b, clock, o =>
        {
            o.Health.ConsecutiveFailures = 1;
            o.Health.WhenAllUnhealthy = AllUnhealthyBehavior.TryEarliest;
            o.Pipeline.MaxAttempts = 1;
        });

        var first = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct); // a fails → a open
        await first.Should().ThrowAsync<AllProvidersFailedException>();
        clock.Advance(TimeSpan.FromSeconds(1));
        var second = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct); // b fails → b open, 1 s later than a
        await second.Should().ThrowAsync<AllProvidersFailedException>();

        var act = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct);
        (await act.Should().ThrowAsync<AllProvidersFailedException>()).Which.Attempts.Single().Provider.Should().Be("a");
    }

    [Fact]
    public async Task Hedging_takes_the_first_success_and_cancels_the_loser()
    {
        var clock = TestGateway.Clock();
        var slow = FakeProvider.NeverAnswers("slow");
        var fast = new FakeProvider("fast");
        await using var gateway = await TestGateway.With(slow, fast)
            .UseTimeProvider(clock)
            .Configure(o => o.Models[0].Hedging = new HedgingOptions { Delay = TimeSpan.FromMilliseconds(500) })
            .StartAsync(Ct);

        var pending = gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask();
        await Wait.Until(() => slow.Calls == 1, "the first attempt is running");
        pending.IsCompleted.Should().BeFalse();
        clock.Advance(TimeSpan.FromMilliseconds(500));
        var response = await pending.WaitAsync(TimeSpan.FromSeconds(20), Ct);

        response.Gateway!.Provider.Should().Be("fast");
        response.Gateway.Attempts.Should().HaveCount(2);
        response.Gateway.Attempts.Should().ContainSingle(a => a.Provider == "slow" && a.Outcome == AttemptOutcome.Cancelled && a.Error!.Contains("hedge lost"));
        response.Gateway.Attempts.Should().ContainSingle(a => a.Provider == "fast" && a.Outcome == AttemptOutcome.Success);
        await Wait.Until(() => slow.Cancelled == 1, "the losing attempt is cancelled");
        gateway.Metrics.GetSnapshot().Hedges.Should().Be(1);
        Primary(gateway).State.Circuit.Should().Be(CircuitState.Closed, "losing a race is not a failure");
    }

    [Fact]
    public async Task Hedging_does_not_fire_when_the_first_attempt_answers_in_time()
    {
        var a = new FakeProvider("a");
        var b = new FakeProvider("b");
        await using var gateway = await TestGateway.With(a, b)
            .Configure(o => o.Models[0].Hedging = new HedgingOptions { Delay = TimeSpan.FromSeconds(30) })
            .StartAsync(Ct);

        for (var i = 0; i < 10; i++)
        {
            (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Attempts.Should().ContainSingle();
        }

        b.Calls.Should().Be(0);
        gateway.Metrics.GetSnapshot().Hedges.Should().Be(0);
    }
}
