using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Routing.Health;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Routing;

public sealed class RoutingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static GatewayBuilder Group(string strategy, params (FakeProvider Provider, Action<DeploymentOptions>? Tweak)[] deployments)
    {
        var builder = new GatewayBuilder();
        var group = new ModelGroupOptions { Name = "m", Strategy = strategy };
        foreach (var (p, tweak) in deployments)
        {
            // Queues deep enough that the router never has to prefer a less-loaded deployment for room.
            builder.AddProvider(p, workers: 8, queueCapacity: 8192);
            var d = new DeploymentOptions { Provider = p.Name, Priority = group.Deployments.Count };
            tweak?.Invoke(d);
            group.Deployments.Add(d);
        }

        return builder.Configure(o =>
        {
            o.Models.Add(group);
            o.Pipeline.MaxInFlight = 8192;
            o.Pipeline.AdmissionQueueCapacity = 8192;
        });
    }

    [Fact]
    public async Task Round_robin_spreads_evenly_under_concurrency()
    {
        var providers = new[] { new FakeProvider("a"), new FakeProvider("b"), new FakeProvider("c") };
        await using var gateway = await Group("RoundRobin", [.. providers.Select(p => (p, (Action<DeploymentOptions>?)null))]).StartAsync(Ct);

        await Task.WhenAll(Enumerable.Range(0, 3000).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()));

        providers.Select(p => p.Calls).Should().OnlyContain(c => c == 1000, "an interlocked cursor gives each exactly a third");
    }

    [Fact]
    public async Task Weighted_follows_the_weights_within_statistical_bounds()
    {
        var light = new FakeProvider("light");
        var heavy = new FakeProvider("heavy");
        await using var gateway = await Group("Weighted", (light, d => d.Weight = 1), (heavy, d => d.Weight = 3)).StartAsync(Ct);

        await Task.WhenAll(Enumerable.Range(0, 4000).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()));

        // Binomial(4000, 0.25): mean 1000, sd ≈ 27; ±150 is more than 5 sd.
        light.Calls.Should().BeInRange(850, 1150);
        heavy.Calls.Should().Be(4000 - light.Calls);
    }

    [Fact]
    public async Task Cost_optimized_picks_the_cheapest_and_ranks_unpriced_last()
    {
        var unpriced = new FakeProvider("unpriced");
        var pricey = new FakeProvider("pricey");
        var cheap = new FakeProvider("cheap");
        await using var gateway = await Group(
            "CostOptimized",
            (unpriced, null),
            (pricey, d => { d.InputPricePerMillion = 2.5m; d.OutputPricePerMillion = 10m; }),
            (cheap, d => { d.InputPricePerMillion = 0.15m; d.OutputPricePerMillion = 0.6m; })).StartAsync(Ct);

        for (var i = 0; i < 20; i++)
        {
            (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("cheap");
        }

        CostOptimizedStrategy.Estimate(gateway.Services.GetRequiredService<ModelCatalog>().Groups[0].Deployments[2], 1_000_000, 1_000_000).Should().Be(0.75m);
    }

    [Fact]
    public async Task Cost_optimized_weighs_expected_completion_tokens()
    {
        // Cheap input but dear output loses when a long answer is expected.
        var cheapInput = new FakeProvider("cheap-input");
        var cheapOutput = new FakeProvider("cheap-output");
        await using var gateway = await Group(
            "CostOptimized",
            (cheapInput, d => { d.InputPricePerMillion = 0.1m; d.OutputPricePerMillion = 20m; }),
            (cheapOutput, d => { d.InputPricePerMillion = 1m; d.OutputPricePerMillion = 1m; })).StartAsync(Ct);

        var shortAnswer = TestGateway.Request(text: new string('x', 40_000));
        shortAnswer.MaxTokens = 1;
        var longAnswer = TestGateway.Request();
        longAnswer.MaxTokens = 4000;

        (await gateway.SubmitAsync(shortAnswer, Ct)).Gateway!.Provider.Should().Be("cheap-input");
        (await gateway.SubmitAsync(longAnswer, Ct)).Gateway!.Provider.Should().Be("cheap-output");
    }

    [Fact]
    public async Task Lowest_latency_probes_unmeasured_deployments_then_picks_the_fastest_and_re_probes_stale_ones()
    {
        var clock = TestGateway.Clock();
        var providers = new[] { new FakeProvider("a"), new FakeProvider("b"), new FakeProvider("c") };
        await using var gateway = await Group("LowestLatency", [.. providers.Select(p => (p, (Action<DeploymentOptions>?)null))])
            .UseTimeProvider(clock)
            .Configure(o => o.Health.LatencyProbeInterval = TimeSpan.FromSeconds(30))
            .StartAsync(Ct);
        var group = gateway.Services.GetRequiredService<ModelCatalog>().Groups[0];
        var strategy = group.Strategy;
        var deployments = group.Deployments.ToArray();
        var context = new RoutingContext(group, TestGateway.Request(), 0);

        // No data: each is probed once, in an order list position does not decide.
        var probed = Enumerable.Range(0, 3).Select(_ => strategy.Select(deployments, context)).ToList();
        probed.Should().BeEquivalentTo([0, 1, 2]);

        deployments[0].State.RecordLatency(120, clock.GetUtcNow(), 0.3);
        deployments[1].State.RecordLatency(15, clock.GetUtcNow(), 0.3);
        deployments[2].State.RecordLatency(60, clock.GetUtcNow(), 0.3);
        Enumerable.Range(0, 50).Select(_ => strategy.Select(deployments, context)).Should().OnlyContain(i => i == 1);

        // B degrades: the average follows.
        for (var i = 0; i < 10; i++)
        {
            deployments[1].State.RecordLatency(300, clock.GetUtcNow(), 0.3);
        }

        strategy.Select(deployments, context).Should().Be(2);

        // Samples go stale: every deployment is re-measured once before the fastest wins again.
        clock.Advance(TimeSpan.FromSeconds(31));
        Enumerable.Range(0, 3).Select(_ => strategy.Select(deployments, context)).Should().BeEquivalentTo([0, 1, 2]);
    }

    [Fact]
    public async Task Lowest_latency_learns_from_real_traffic()
    {
        var clock = TestGateway.Clock();
        FakeProvider Timed(string name, int ms) => new(name)
        {
            OnComplete = (r, _) =>
            {
                clock.Advance(TimeSpan.FromMilliseconds(ms)); // the attempt's measured duration on the fake clock
                return ValueTask.FromResult(FakeProvider.Answer(r.Model, name));
            },
        };
        var slow = Timed("slow", 200);
        var fast = Timed("fast", 20);
        await using var gateway = await Group("LowestLatency", (slow, null), (fast, null))
            .UseTimeProvider(clock)
            .Configure(o => o.Health.LatencyProbeInterval = TimeSpan.FromHours(1))
            .StartAsync(Ct);

        for (var i = 0; i < 30; i++)
        {
            await gateway.SubmitAsync(TestGateway.Request(), Ct);
        }

        slow.Calls.Should().Be(1, "it was measured once, then the fast one won");
        fast.Calls.Should().Be(29);
    }

    [Fact]
    public async Task Least_busy_avoids_the_deployment_with_work_in_flight()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var busy = new FakeProvider("busy")
        {
            OnComplete = async (r, ct) =>
            {
                await gate.Task.WaitAsync(ct);
                return FakeProvider.Answer(r.Model, "busy");
            },
        };
        var idle = new FakeProvider("idle");
        await using var gateway = await Group("LeastBusy", (busy, null), (idle, null)).StartAsync(Ct);
        var first = gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask();
        await Wait.Until(() => busy.Calls + idle.Calls == 1, "the first request is placed");
        var firstWentToBusy = busy.Calls == 1;
        if (!firstWentToBusy)
        {
            gate.SetResult();
            await first;
            return; // the first went to the idle one and finished; nothing to observe about load
        }

        for (var i = 0; i < 5; i++)
        {
            (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Provider.Should().Be("idle");
        }

        gate.SetResult();
        await first;
    }

    [Fact]
    public async Task Priority_uses_the_first_healthy_then_follows_the_chain_across_groups()
    {
        var a1 = new FakeProvider("a1") { OnComplete = (_, _) => throw FakeProvider.Fail503() };
        var a2 = new FakeProvider("a2") { OnComplete = (_, _) => throw FakeProvider.Fail503() };
        var b1 = new FakeProvider("b1");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a1).AddProvider(a2).AddProvider(b1)
            .Configure(o =>
            {
                o.Pipeline.MaxAttempts = 5;
                o.Models.Add(new ModelGroupOptions
                {
                    Name = "gpt-4o",
                    Strategy = "Priority",
                    Fallbacks = ["claude-sonnet"],
                    Deployments = [new DeploymentOptions { Provider = "a1", Priority = 0 }, new DeploymentOptions { Provider = "a2", Priority = 1 }],
                });
                o.Models.Add(new ModelGroupOptions { Name = "claude-sonnet", Deployments = [new DeploymentOptions { Provider = "b1", Model = "claude-sonnet-4-5" }] });
            })
            .StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request("gpt-4o"), Ct);

        response.Gateway!.Attempts.Select(a => a.Provider).Should().Equal("a1", "a2", "b1");
        response.Gateway.ProviderModel.Should().Be("claude-sonnet-4-5");
        gateway.Metrics.GetSnapshot().GroupFallbacks.Should().Be(1);
    }

    [Fact]
    public async Task Context_window_fallback_is_used_only_on_a_context_length_error()
    {
        var small = new FakeProvider("small")
        {
            OnComplete = (r, _) => r.Request.Messages[0].Content!.GetText() == "long"
                ? throw new ProviderException(AttemptOutcome.ContextLengthExceeded, "too long", 400)
                : throw FakeProvider.Fail503(),
        };
        var large = new FakeProvider("large");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(small).AddProvider(large)
            .Configure(o =>
            {
                o.Pipeline.MaxAttempts = 3;
                o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
                o.Pipeline.RetryMaxDelay = TimeSpan.FromMilliseconds(1);
                o.Health.Enabled = false;
                o.Models.Add(new ModelGroupOptions { Name = "m", ContextWindowFallbacks = ["m-128k"], Deployments = [new DeploymentOptions { Provider = "small" }] });
                o.Models.Add(new ModelGroupOptions { Name = "m-128k", Deployments = [new DeploymentOptions { Provider = "large" }] });
            })
            .StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(text: "long"), Ct);
        response.Gateway!.Provider.Should().Be("large");
        response.Gateway.Attempts.Select(a => a.Outcome).Should().Equal(AttemptOutcome.ContextLengthExceeded, AttemptOutcome.Success);

        var act = async () => await gateway.SubmitAsync(TestGateway.Request(text: "short"), Ct);
        var failure = (await act.Should().ThrowAsync<AllProvidersFailedException>()).Which;
        failure.Attempts.Should().OnlyContain(a => a.Provider == "small", "a 503 never goes to the context-window fallback");
        large.Calls.Should().Be(1);
    }
}
