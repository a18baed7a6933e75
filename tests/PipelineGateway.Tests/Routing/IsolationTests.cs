using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Routing;

/// <summary>Bulkheads and deadline-aware refusal: one provider's trouble never holds up another's requests.</summary>
public sealed class IsolationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static ChatCompletionRequest Req(string model, string? key = null, TimeSpan? timeout = null) => new()
    {
        Model = model,
        Messages = [ChatCompletionMessage.User("hi")],
        Gateway = new GatewayRequestOptions { RateLimitKey = key, Timeout = timeout },
    };

    [Fact]
    public async Task A_provider_that_never_answers_does_not_delay_another_providers_requests()
    {
        var stuck = FakeProvider.NeverAnswers("stuck");
        var fast = new FakeProvider("fast");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(stuck, workers: 2, queueCapacity: 4)
            .AddProvider(fast, workers: 2, queueCapacity: 4)
            .AddModel("slow", m => m.Strategy("Priority").Deploy("stuck"))
            .AddModel("quick", m => m.Strategy("Priority").Deploy("fast"))
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 16; // far fewer slots than the flood: a stuck provider must not hold them all
                o.Pipeline.AdmissionQueueCapacity = 16;
                o.Pipeline.DefaultTimeout = TimeSpan.FromMinutes(10);
            })
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        // Waiting callers flood the stuck provider until its workers and queue are full; then fail-fast callers come.
        // (Sent together, a fail-fast caller could take a place in the queue before the flood filled it, rightly, and
        // then wait for ever with the stuck provider: the test once hung on that race.)
        using var flood = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var waiting = Enumerable.Range(0, 500).Select(_ => gateway.SubmitAsync(Req("slow"), SubmitMode.Wait, flood.Token).AsTask()).ToArray();
        await Wait.Until(() => stuck.Calls == 2 && pipeline.GetQueueDepths().Providers["stuck"] == 4, "the stuck provider's workers and queue are full");
        var failFast = Enumerable.Range(0, 200).Select(_ => gateway.SubmitAsync(Req("slow"), SubmitMode.FailFast, flood.Token).AsTask()).ToArray();

        // Fail-fast callers of the saturated model are refused (by the full queue, or by admission's full waiting room
        // while the flood passes through it), never queued past its capacity: all of them, without waiting for room.
        await Wait.Until(() => failFast.All(t => t.IsCompleted), "every fail-fast caller is answered");
        pipeline.GetQueueDepths().Providers["stuck"].Should().Be(4);
        foreach (var t in failFast)
        {
            var refusedAtOnce = async () => await t;
            await refusedAtOnce.Should().ThrowAsync<GatewayException>().Where(e => e is ProviderOverloadedException || e is QueueFullException);
        }

        // The other provider's requests go through, one after another and all at once, while the first stays stuck.
        for (var i = 0; i < 20; i++)
        {
            (await gateway.SubmitAsync(Req("quick"), SubmitMode.FailFast, Ct)).Content.Should().Be("ok");
        }

        var burst = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => gateway.SubmitAsync(Req("quick"), Ct).AsTask()));
        burst.Should().OnlyContain(r => r.Content == "ok");
        fast.Calls.Should().Be(70);
        stuck.Calls.Should().Be(2, "nothing more reached the stuck provider");

        // A quick request's slot is let go of just after its caller is answered (the worker retires the item after
        // completing it), so the last of the burst may still hold one for a moment: waited for, not assumed.
        await Wait.Until(() => pipeline.InFlight <= 6, "the stuck provider holds at most its workers and queue in slots");
        waiting.Should().OnlyContain(t => !t.IsCompleted, "waiting callers wait");

        await flood.CancelAsync();
        foreach (var t in waiting)
        {
            var act = async () => await t;
            await act.Should().ThrowAsync<RequestCancelledException>();
        }

        await Wait.Until(() => pipeline.Outstanding == 0, "every request ended and was let go of");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.TotalRequests.Should().Be(snapshot.Submitted).And.Be(770, "every submission ended exactly once");
        (snapshot.OverloadedRequests + snapshot.ShedRequests).Should().Be(200);
    }

    [Fact]
    public async Task A_request_whose_expected_wait_is_too_long_is_refused_at_once_with_an_honest_Retry_After()
    {
        var clock = TestGateway.Clock();
        var release = new SemaphoreSlim(0);
        var provider = FakeProvider.AnswersWhenReleased("p", release);
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 1, queueCapacity: 100)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Pipeline.MaxQueueWait = TimeSpan.FromSeconds(10);
                o.Pipeline.DefaultTimeout = TimeSpan.FromMinutes(10);
            })
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        // One answer that took 2 s teaches the gateway the provider's service time.
        var first = gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct).AsTask();
        await Wait.Until(() => provider.Calls == 1, "the first attempt runs");
        clock.Advance(TimeSpan.FromSeconds(2));
        release.Release();
        await first;
        gateway.Metrics.GetSnapshot().Providers["p"].ServiceTimeMs.Should().Be(2000);

        // The worker is busy again; each queued request waits 2 s more than the one before it.
        var busy = gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct).AsTask();
        await Wait.Until(() => provider.Calls == 2, "the worker is busy");
        var accepted = new List<Task<ChatCompletionResponse>>();
        for (var i = 1; i <= 5; i++)
        {
            accepted.Add(gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct).AsTask());
            await Wait.Until(() => pipeline.GetQueueDepths().Providers["p"] == i, $"request {i} is queued (expected wait {2 * i} s)");
        }

        // The sixth would wait 12 s, more than MaxQueueWait (10 s): refused at once, told to come back in 2 s.
        var act = async () => await gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct);
        var refusal = (await act.Should().ThrowAsync<ProviderOverloadedException>()).Which;
        refusal.ExpectedWait.Should().Be(TimeSpan.FromSeconds(12));
        refusal.RetryAfter.Should().BeGreaterThanOrEqualTo(TimeSpan.FromSeconds(2)).And.BeLessThanOrEqualTo(TimeSpan.FromSeconds(2.5), "when the queue is expected to have room, plus up to a quarter of jitter");
        refusal.Code.Should().Be("provider_overloaded");

        // A waiting caller may wait up to its deadline, not MaxQueueWait: it is queued...
        var patient = gateway.SubmitAsync(Req("m"), SubmitMode.Wait, Ct).AsTask();
        await Wait.Until(() => pipeline.GetQueueDepths().Providers["p"] == 6, "a waiting caller with 10 minutes is queued");

        // ...unless its deadline is shorter than the expected wait: then it is refused at once too.
        var hurried = async () => await gateway.SubmitAsync(Req("m", timeout: TimeSpan.FromSeconds(5)), SubmitMode.Wait, Ct);
        (await hurried.Should().ThrowAsync<ProviderOverloadedException>()).Which.ExpectedWait.Should().Be(TimeSpan.FromSeconds(14));
        provider.Calls.Should().Be(2, "no refused request reached the provider");

        release.Release(7);
        await busy;
        (await Task.WhenAll(accepted)).Should().OnlyContain(r => r.Content == "ok");
        (await patient).Content.Should().Be("ok");
        gateway.Metrics.GetSnapshot().OverloadedRequests.Should().Be(2);
    }

    [Fact]
    public async Task A_burst_at_start_is_taken_blind_and_the_first_answer_refuses_what_could_not_be_taken_in_time()
    {
        var clock = TestGateway.Clock();
        var release = new SemaphoreSlim(0);
        var provider = FakeProvider.AnswersWhenReleased("p", release);
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 1, queueCapacity: 100)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .UseTimeProvider(clock)
            .Configure(o => o.Pipeline.MaxQueueWait = TimeSpan.FromSeconds(10))
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        // Nothing measured yet: the burst is not refused on a guess.
        var burst = Enumerable.Range(0, 10).Select(_ => gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct).AsTask()).ToList();
        await Wait.Until(() => provider.Calls == 1 && pipeline.GetQueueDepths().Providers["p"] == 9, "one running, nine queued");

        // The first answer takes 4 s: the next one queued is taken at 8 s (within 10), the other eight at 12 s and later.
        clock.Advance(TimeSpan.FromSeconds(4));
        release.Release();
        await Wait.Until(() => burst.Count(t => t.IsFaulted) == 8 && burst.Count(t => t.IsCompletedSuccessfully) == 1,
            "the first is answered and eight are refused now");
        foreach (var refused in burst.Where(t => t.IsFaulted))
        {
            var act = async () => await refused;
            (await act.Should().ThrowAsync<ProviderOverloadedException>()).Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(4));
        }

        pipeline.GetQueueDepths().Providers["p"].Should().Be(0, "the one that fits is with the worker");
        var kept = burst.Single(t => !t.IsCompleted);
        release.Release();
        (await kept).Content.Should().Be("ok");
        provider.Calls.Should().Be(2, "no refused request reached the provider");
    }

    [Fact]
    public async Task A_provider_paused_by_a_429_refuses_fail_fast_callers_with_a_429_and_the_pause_as_Retry_After()
    {
        var clock = TestGateway.Clock();
        var limited = 0;
        var provider = new FakeProvider("p")
        {
            OnComplete = (r, _) => Interlocked.Increment(ref limited) == 1
                ? throw new PipelineGateway.Providers.ProviderException(AttemptOutcome.RateLimited, "slow down", 429, TimeSpan.FromSeconds(30))
                : ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok")),
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 1, queueCapacity: 10)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Pipeline.MaxQueueWait = TimeSpan.FromSeconds(10);
                o.Pipeline.DefaultTimeout = TimeSpan.FromSeconds(20);
            })
            .StartAsync(Ct);

        var first = async () => await gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct);
        await first.Should().ThrowAsync<GatewayException>("its one deployment said 429 and the retry would wait 30 s");

        var act = async () => await gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct);
        var refusal = (await act.Should().ThrowAsync<RateLimitedException>()).Which;
        refusal.RetryAfter.Should().BeGreaterThanOrEqualTo(TimeSpan.FromSeconds(19)).And.BeLessThanOrEqualTo(TimeSpan.FromSeconds(25), "the 30 s pause, less the 10 s the request may wait, plus up to a quarter of jitter");
        provider.Calls.Should().Be(1);

        clock.Advance(TimeSpan.FromSeconds(30));
        (await gateway.SubmitAsync(Req("m"), SubmitMode.FailFast, Ct)).Content.Should().Be("ok");
    }
}
