using System.Collections.Concurrent;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Admission;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Admission;

/// <summary>Every waiting room is bounded, and drained fairly between tenants and priority classes.</summary>
[Collection(MemoryMeasured.Name)]
public sealed class FairnessTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static ChatCompletionRequest Req(string? key = null, RequestPriority priority = RequestPriority.Interactive) => new()
    {
        Model = "m",
        Messages = [ChatCompletionMessage.User("hi")],
        Gateway = new GatewayRequestOptions { RateLimitKey = key, Priority = priority },
    };

    /// <summary>A provider that answers one call each time the test says so, recording whose call it was.</summary>
    private sealed class SteppedProvider
    {
        private readonly SemaphoreSlim _steps = new(0);

        public SteppedProvider(string name = "p") => Provider = new FakeProvider(name)
        {
            OnComplete = async (r, ct) =>
            {
                Order.Enqueue((r.Request.Gateway?.RateLimitKey ?? string.Empty) + (r.Request.Gateway?.Priority == RequestPriority.Batch ? ":batch" : string.Empty));
                await _steps.WaitAsync(ct);
                return FakeProvider.Answer(r.Model, "ok");
            },
        };

        public FakeProvider Provider { get; }

        public ConcurrentQueue<string> Order { get; } = new();

        /// <summary>Answers the running call and waits until the worker has started the next (or run out).</summary>
        public async Task StepAsync(int expectedCalls)
        {
            _steps.Release();
            await Wait.Until(() => Provider.Calls >= expectedCalls, $"call {expectedCalls} started");
        }
    }

    [Fact]
    public async Task Every_bound_holds_under_50000_submits_and_every_submit_ends_exactly_once()
    {
        var clock = TestGateway.Clock();
        var provider = new FakeProvider("p");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 2, queueCapacity: 4)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 4;
                o.Pipeline.AdmissionQueueCapacity = 4;
                o.Fairness.MaxQueuedPerKey = 4;
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
                o.Admission.MaxWait = TimeSpan.FromMinutes(10);
                o.Admission.RateLimits.Add(new RateLimitRule { Limit = 2, Window = TimeSpan.FromMinutes(1) });
            })
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        var door = gateway.Services.GetRequiredService<PipelineGateway.Admission.AdmissionGate>();
        var limiter = gateway.Services.GetRequiredService<AdmissionRateLimiter>();

        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        const int submits = 50_000;
        var before = GC.GetTotalMemory(forceFullCollection: true);
        var waiting = Enumerable.Range(0, submits).Select(_ => gateway.SubmitAsync(Req(), cancel.Token).AsTask()).ToArray();
        await Wait.Until(() => provider.Calls == 2 && door.Waiting == submits - 2 - 4 && pipeline.Outstanding == 4, "two admitted, four inside waiting for a permit, the rest at the door");

        // Held by the gateway: the two answered are gone; four wait for a rate-limit permit; nothing else.
        pipeline.Outstanding.Should().Be(4, "at most AdmissionQueueCapacity + MaxInFlight requests are held, here only the waiting room");
        door.Inside.Should().Be(4);
        var perWaiter = (GC.GetTotalMemory(forceFullCollection: true) - before) / (double)submits;
        perWaiter.Should().BeLessThan(2048, "a caller waiting at the door (its own request and task included) costs a small waiter, not a pipeline item");

        // Fail-fast callers meanwhile are refused at once: the tenant's share of the waiting room is full.
        var act = async () => await gateway.SubmitAsync(Req(), SubmitMode.FailFast, Ct);
        await act.Should().ThrowAsync<QueueFullException>();

        // A minute on, two more are admitted and two more come in from the door, in order.
        clock.Advance(TimeSpan.FromMinutes(1));
        await Wait.Until(() => provider.Calls == 4 && door.Waiting == submits - 4 - 4 && pipeline.Outstanding == 4, "the next two are admitted");
        pipeline.Outstanding.Should().Be(4);

        await cancel.CancelAsync();
        var outcomes = await Task.WhenAll(waiting.Select(async t =>
        {
            try
            {
                await t;
                return "ok";
            }
            catch (RequestCancelledException)
            {
                return "cancelled";
            }
        }));
        outcomes.Count(o => o == "ok").Should().Be(4);
        outcomes.Count(o => o == "cancelled").Should().Be(submits - 4);
        await Wait.Until(() => pipeline.Outstanding == 0, "everything is let go of");
        door.TenantCount.Should().Be(0);
        door.Waiting.Should().Be(0);
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.TotalRequests.Should().Be(submits + 1, "every submission, the refused one included, ended exactly once");
        snapshot.CancelledRequests.Should().Be(submits - 4);
        limiter.PartitionCount.Should().Be(1);
    }

    [Fact]
    public async Task Idle_rate_limit_partitions_are_forgotten_and_their_number_is_bounded()
    {
        var clock = TestGateway.Clock();
        await using var gateway = await TestGateway.With(new FakeProvider("p"))
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Admission.MaxPartitions = 100;
                o.Admission.RateLimits.Add(new RateLimitRule { Limit = 10, Window = TimeSpan.FromMinutes(1) });
            })
            .StartAsync(Ct);
        var limiter = gateway.Services.GetRequiredService<AdmissionRateLimiter>();

        for (var i = 0; i < 100; i++)
        {
            await gateway.SubmitAsync(Req($"tenant-{i}"), SubmitMode.FailFast, Ct);
        }

        limiter.PartitionCount.Should().Be(100);
        var full = async () => await gateway.SubmitAsync(Req("tenant-new"), SubmitMode.FailFast, Ct);
        (await full.Should().ThrowAsync<RateLimitedException>()).WithMessage("*MaxPartitions*");

        // Six seconds refill each bucket's one token: every partition is back at rest, and the sweep forgets them.
        clock.Advance(AdmissionRateLimiter.SweepInterval);
        limiter.PartitionCount.Should().Be(0, "a partition at rest is forgotten: recreating it changes nothing");
        (await gateway.SubmitAsync(Req("tenant-new"), SubmitMode.FailFast, Ct)).Content.Should().Be("ok");

        // A partition not at rest is kept (forgetting it would hand its tenant a fresh budget).
        for (var i = 0; i < 10; i++)
        {
            await gateway.SubmitAsync(Req("busy"), SubmitMode.FailFast, Ct);
        }

        clock.Advance(TimeSpan.FromSeconds(1));
        limiter.Sweep();
        limiter.PartitionKeys.Should().Contain("busy");
        var stillLimited = async () => await gateway.SubmitAsync(Req("busy"), SubmitMode.FailFast, Ct);
        await stillLimited.Should().ThrowAsync<RateLimitedException>();
    }

    [Fact]
    public async Task A_tenants_flood_does_not_starve_another_tenant_at_a_provider()
    {
        var stepped = new SteppedProvider();
        await using var gateway = await new GatewayBuilder()
            .AddProvider(stepped.Provider, workers: 1, queueCapacity: 100)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        var flood = Enumerable.Range(0, 20).Select(_ => gateway.SubmitAsync(Req("flood"), Ct).AsTask()).ToList();
        await Wait.Until(() => stepped.Provider.Calls == 1 && pipeline.GetQueueDepths().Providers["p"] == 19, "the flood fills the queue");
        var modest = Enumerable.Range(0, 3).Select(_ => gateway.SubmitAsync(Req("modest"), Ct).AsTask()).ToList();
        await Wait.Until(() => pipeline.GetQueueDepths().Providers["p"] == 22, "the modest tenant's requests are queued behind the flood");

        for (var call = 2; call <= 23; call++)
        {
            await stepped.StepAsync(Math.Min(call, 23));
        }

        await stepped.StepAsync(23);
        await Task.WhenAll(flood.Concat(modest));
        var order = stepped.Order.ToArray();
        order.Skip(1).Take(6).Should().Equal(["modest", "flood", "modest", "flood", "modest", "flood"], "the tenants take turns: the one with less in service goes first");
    }

    [Fact]
    public async Task Weights_share_a_provider_in_proportion()
    {
        var stepped = new SteppedProvider();
        await using var gateway = await new GatewayBuilder()
            .AddProvider(stepped.Provider, workers: 1, queueCapacity: 100)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .Configure(o => o.Fairness.Weights["gold"] = 3)
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        var blocker = gateway.SubmitAsync(Req("blocker"), Ct).AsTask();
        await Wait.Until(() => stepped.Provider.Calls == 1, "the worker is busy");
        var all = Enumerable.Range(0, 40).Select(_ => gateway.SubmitAsync(Req("free"), Ct).AsTask())
            .Concat(Enumerable.Range(0, 40).Select(_ => gateway.SubmitAsync(Req("gold"), Ct).AsTask())).ToList();
        await Wait.Until(() => pipeline.GetQueueDepths().Providers["p"] == 80, "both tenants are queued");

        for (var call = 2; call <= 81; call++)
        {
            await stepped.StepAsync(call);
        }

        await stepped.StepAsync(81);
        await Task.WhenAll(all.Append(blocker));
        var first20 = stepped.Order.Skip(1).Take(20).ToArray();
        first20.Count(k => k == "gold").Should().Be(15, "weight 3 against weight 1: three of every four turns");
        first20.Count(k => k == "free").Should().Be(5);
    }

    [Fact]
    public async Task Batch_work_yields_to_interactive_work_and_still_progresses()
    {
        var stepped = new SteppedProvider();
        await using var gateway = await new GatewayBuilder()
            .AddProvider(stepped.Provider, workers: 1, queueCapacity: 100)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .Configure(o => o.Fairness.BatchShare = 0.25)
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        var blocker = gateway.SubmitAsync(Req(), Ct).AsTask();
        await Wait.Until(() => stepped.Provider.Calls == 1, "the worker is busy");
        var batch = Enumerable.Range(0, 20).Select(_ => gateway.SubmitAsync(Req(priority: RequestPriority.Batch), Ct).AsTask()).ToList();
        await Wait.Until(() => pipeline.GetQueueDepths().Providers["p"] == 20, "the batch is queued first");
        var interactive = Enumerable.Range(0, 20).Select(_ => gateway.SubmitAsync(Req(), Ct).AsTask()).ToList();
        await Wait.Until(() => pipeline.GetQueueDepths().Providers["p"] == 40, "interactive work is queued after it");

        for (var call = 2; call <= 41; call++)
        {
            await stepped.StepAsync(call);
        }

        await stepped.StepAsync(41);
        await Task.WhenAll(batch.Concat(interactive).Append(blocker));
        var first16 = stepped.Order.Skip(1).Take(16).ToArray();
        first16.Count(k => k == ":batch").Should().Be(4, "batch keeps one grant in four while interactive work waits");
        first16.Count(k => k == string.Empty).Should().Be(12, "interactive work arrived later but goes first");
    }

    [Fact]
    public async Task In_flight_slots_go_to_the_tenant_holding_the_fewest()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var order = new ConcurrentQueue<string>();
        var provider = new FakeProvider("p")
        {
            OnComplete = async (r, ct) =>
            {
                order.Enqueue(r.Request.Gateway!.RateLimitKey!);
                await gate.Task.WaitAsync(ct);
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 1, queueCapacity: 8)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .Configure(o => o.Pipeline.MaxInFlight = 2)
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        var flood = Enumerable.Range(0, 10).Select(_ => gateway.SubmitAsync(Req("flood"), Ct).AsTask()).ToList();
        await Wait.Until(() => provider.Calls == 1 && pipeline.GetQueueDepths().Providers["p"] == 1 && pipeline.Slots.Waiting == 8, "the flood holds both slots and waits for more");
        var other = gateway.SubmitAsync(Req("other"), Ct).AsTask();
        await Wait.Until(() => pipeline.Slots.Waiting == 9, "the other tenant waits for a slot too");

        gate.SetResult();
        await Task.WhenAll(flood.Append(other));
        // The first freed slot goes to the tenant holding none, not to the ninth of the flood; at the provider's own fair
        // queue "other" may then even pass the flood's request already queued there (both orders are fair).
        var calls = order.ToArray();
        Array.IndexOf(calls, "other").Should().BeInRange(1, 2, "other is served right after the call in progress or the one queued before it, never after the rest of the flood: " + string.Join(",", calls));
        calls.Should().HaveCount(11);
    }

    [Fact]
    public async Task A_newcomers_rate_limit_wait_counts_every_waiter_ahead_of_it()
    {
        var clock = TestGateway.Clock();
        await using var gateway = await TestGateway.With(new FakeProvider("p"))
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
                o.Admission.MaxWait = TimeSpan.FromMinutes(2);
                o.Admission.RateLimits.Add(new RateLimitRule { Limit = 2, Window = TimeSpan.FromMinutes(1), Burst = 1 });
            })
            .StartAsync(Ct);

        await gateway.SubmitAsync(Req(), Ct);

        // 2 per minute: a token every 30 s. The waiters ahead push each newcomer's wait 30 s further.
        var parked = Enumerable.Range(0, 4).Select(_ => gateway.SubmitAsync(Req(), Ct).AsTask()).ToList();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().RateLimitWaits == 4, "four wait: 30, 60, 90 and 120 s");
        var act = async () => await gateway.SubmitAsync(Req(), Ct);
        var refusal = (await act.Should().ThrowAsync<RateLimitedException>("its wait (150 s) passes MaxWait: refused now, not after 2 minutes in line")).Which;
        refusal.RetryAfter.Should().Be(TimeSpan.FromSeconds(150));

        for (var i = 0; i < 4; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(30)); // a token every 30 s (the bucket holds one: advance step by step)
        }

        (await Task.WhenAll(parked)).Should().HaveCount(4);
    }
}
