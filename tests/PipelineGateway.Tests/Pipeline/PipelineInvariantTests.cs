using System.Diagnostics;
using FluentAssertions;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace PipelineGateway.Tests.Pipeline;

public sealed class PipelineInvariantTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_request_passes_every_stage_and_reports_provider_attempts_and_latency()
    {
        var a = new FakeProvider("a");
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(), Ct);

        response.Content.Should().Be("ok");
        response.Gateway.Should().NotBeNull();
        response.Gateway!.Provider.Should().Be("a");
        response.Gateway.ProviderModel.Should().Be("m");
        response.Gateway.Attempts.Should().ContainSingle().Which.Outcome.Should().Be(AttemptOutcome.Success);
        response.Gateway.Latency.Should().BePositive();
        response.Gateway.RequestId.Should().StartWith("req_");
        response.Gateway.Cached.Should().BeFalse();
        a.Calls.Should().Be(1);

        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.TotalRequests.Should().Be(1);
        snapshot.SuccessfulRequests.Should().Be(1);
        snapshot.Providers["a"].Successes.Should().Be(1);
    }

    [Fact]
    public async Task Every_waiting_room_holds_its_bound_waiting_callers_wait_at_the_door_and_fail_fast_callers_are_refused()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = new FakeProvider("a")
        {
            OnComplete = async (r, ct) =>
            {
                await gate.Task.WaitAsync(ct);
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a, workers: 2, queueCapacity: 4)
            .AddModel("m", m => m.Strategy("Priority").Deploy("a"))
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 8;
                o.Pipeline.AdmissionQueueCapacity = 16;
                o.Fairness.MaxQueuedPerKey = 16;
            })
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        var door = gateway.Services.GetRequiredService<PipelineGateway.Admission.AdmissionGate>();

        const int submitters = 2000;
        var tasks = Enumerable.Range(0, submitters)
            .Select(_ => Task.Run(async () => await gateway.SubmitAsync(TestGateway.Request(), Ct), Ct))
            .ToArray();

        // The provider holds 2 in service and 4 queued (all holding slots); what else got past the door before it filled
        // is parked for its queue holding no slot; every other caller waits at the door with no pipeline item.
        int Parked() => gateway.Metrics.GetSnapshot().Providers["a"].Parked;
        await Wait.Until(() => a.Calls == 2 && pipeline.GetQueueDepths().Providers["a"] == 4 && door.Inside == 0 && pipeline.Slots.Waiting == 0
            && pipeline.InFlight + Parked() == pipeline.Outstanding && pipeline.InFlight == 6, "the provider's queue is full and the rest wait");
        for (var i = 0; i < 200; i++)
        {
            var d = pipeline.GetQueueDepths();
            d.InFlight.Should().Be(6, "only the requests in the provider's queue and workers hold slots");
            d.Providers["a"].Should().Be(4, "the provider's queue holds its capacity");
            pipeline.Outstanding.Should().BeLessThanOrEqualTo(16 + 8, "at most AdmissionQueueCapacity + MaxInFlight requests are held");
            door.Inside.Should().BeLessThanOrEqualTo(16);
            await Task.Yield();
        }

        tasks.Count(t => t.IsCompleted).Should().Be(0, "SubmitAsync waits for room instead of failing");

        // A fail-fast caller is not parked: the full queue refuses it (no upstream call), with a Retry-After.
        var act = async () => await gateway.SubmitAsync(TestGateway.Request(), SubmitMode.FailFast, Ct);
        (await act.Should().ThrowAsync<ProviderOverloadedException>()).Which.RetryAfter.Should().BePositive();
        a.Calls.Should().Be(2);

        gate.SetResult();
        var responses = await Task.WhenAll(tasks);
        responses.Should().HaveCount(submitters).And.OnlyContain(r => r.Content == "ok");
        a.Calls.Should().Be(submitters);
        await Wait.Until(() => pipeline.Outstanding == 0, "every item is retired");
        pipeline.InFlight.Should().Be(0);
        door.Inside.Should().Be(0);
        door.TenantCount.Should().Be(0, "an idle tenant is forgotten");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.OverloadedRequests.Should().Be(1);
        snapshot.TotalRequests.Should().Be(submitters + 1, "the refused request is counted too");
    }

    [Fact]
    public async Task Every_provider_failing_with_every_channel_saturated_does_not_deadlock()
    {
        FakeProvider Failing(string name) => new(name)
        {
            OnComplete = async (_, _) =>
            {
                await Task.Yield();
                throw FakeProvider.Fail503();
            },
        };

        var a = Failing("a");
        var b = Failing("b");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a, workers: 1, queueCapacity: 1)
            .AddProvider(b, workers: 1, queueCapacity: 1)
            .AddModel("m", m => m.Strategy("RoundRobin").Deploy("a").Deploy("b"))
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 4;
                o.Pipeline.AdmissionQueueCapacity = 4;
                o.Pipeline.CacheQueueCapacity = 1;
                o.Pipeline.MaxAttempts = 4;
                o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
                o.Pipeline.RetryMaxDelay = TimeSpan.FromMilliseconds(2);
                o.Pipeline.DefaultTimeout = TimeSpan.FromSeconds(60);
            })
            .StartAsync(Ct);

        const int requests = 1000;
        var results = await Task.WhenAll(Enumerable.Range(0, requests).Select(async _ =>
        {
            try
            {
                await gateway.SubmitAsync(TestGateway.Request(), Ct);
                return null;
            }
            catch (Exception ex)
            {
                return ex;
            }
        })).WaitAsync(TimeSpan.FromSeconds(60), Ct);

        results.Should().OnlyContain(e => e is AllProvidersFailedException, "every request ends with a typed failure, none hangs");
        var failure = (AllProvidersFailedException)results[0]!;
        failure.Attempts.Should().HaveCount(4);
        failure.Attempts.Select(x => x.Provider).Should().Contain(["a", "b"]);
        (a.Calls + b.Calls).Should().Be(requests * 4);
    }

    [Fact]
    public async Task A_failure_on_one_provider_is_served_by_the_next_and_both_attempts_are_listed()
    {
        var a = new FakeProvider("a") { OnComplete = (_, _) => throw FakeProvider.Fail503() };
        var b = new FakeProvider("b");
        await using var gateway = await TestGateway.With(a, b).StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(), Ct);

        response.Gateway!.Provider.Should().Be("b");
        response.Gateway.Attempts.Should().HaveCount(2);
        response.Gateway.Attempts[0].Should().Match<GatewayAttempt>(x => x.Provider == "a" && x.Outcome == AttemptOutcome.RetryableError && x.StatusCode == 503);
        response.Gateway.Attempts[1].Should().Match<GatewayAttempt>(x => x.Provider == "b" && x.Outcome == AttemptOutcome.Success);
        gateway.Metrics.GetSnapshot().Fallbacks.Should().Be(1);
    }

    [Fact]
    public async Task A_non_retryable_error_is_not_retried_elsewhere()
    {
        var a = new FakeProvider("a") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.NonRetryableError, "bad request", 400) };
        var b = new FakeProvider("b");
        await using var gateway = await TestGateway.With(a, b).StartAsync(Ct);

        var act = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct);

        var failure = (await act.Should().ThrowAsync<UpstreamRejectedException>()).Which;
        failure.Attempts.Should().ContainSingle().Which.StatusCode.Should().Be(400);
        failure.StatusCode.Should().Be(400, "the caller's own mistake keeps the upstream's status");
        b.Calls.Should().Be(0);
    }

    [Fact]
    public async Task A_cancelled_caller_cancels_the_upstream_call()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = new FakeProvider("a")
        {
            OnComplete = async (r, ct) =>
            {
                started.TrySetResult();
                await FakeProvider.UntilCancelled(ct);
                return FakeProvider.Answer(r.Model, "never");
            },
        };
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);
        using var cts = new CancellationTokenSource();

        var pending = gateway.SubmitAsync(TestGateway.Request(), cts.Token).AsTask();
        await started.Task.WaitAsync(Ct);
        await cts.CancelAsync();

        var act = async () => await pending;
        await act.Should().ThrowAsync<RequestCancelledException>();
        await Wait.Until(() => a.Cancelled == 1, "the upstream call observes the cancellation");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.CancelledRequests.Should().Be(1);
        snapshot.Providers["a"].Failures.Should().Be(0, "a caller giving up is not the provider's failure");
    }

    [Fact]
    public async Task A_request_whose_deadline_passed_while_queued_is_never_sent_upstream()
    {
        var clock = TestGateway.Clock();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var seen = new List<string>();
        var a = new FakeProvider("a")
        {
            OnComplete = async (r, ct) =>
            {
                lock (seen)
                {
                    seen.Add(r.Request.Messages[0].Content!.GetText());
                }

                await gate.Task;
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a, workers: 1, queueCapacity: 8)
            .AddModel("m", m => m.Strategy("Priority").Deploy("a"))
            .UseTimeProvider(clock)
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        var first = gateway.SubmitAsync(TestGateway.Request(text: "first"), Ct).AsTask();
        await Wait.Until(() => a.Calls == 1, "the first request occupies the only worker");
        var request = TestGateway.Request(text: "second");
        request.Gateway = new GatewayRequestOptions { Timeout = TimeSpan.FromSeconds(5) };
        var second = gateway.SubmitAsync(request, Ct).AsTask();
        await Wait.Until(() => pipeline.GetQueueDepths().Providers["a"] == 1, "the second request waits in the provider queue");

        clock.Advance(TimeSpan.FromSeconds(6));

        var act = async () => await second;
        (await act.Should().ThrowAsync<DeadlineExceededException>()).Which.Timeout.Should().Be(TimeSpan.FromSeconds(5));
        gate.SetResult();
        (await first).Content.Should().Be("ok");
        await Wait.Until(() => pipeline.Outstanding == 0, "the expired item is retired");
        a.Calls.Should().Be(1);
        seen.Should().Equal("first");
    }

    [Fact]
    public async Task Shutdown_lets_in_flight_requests_finish_within_the_grace_period()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = new FakeProvider("a")
        {
            OnComplete = async (r, ct) =>
            {
                await gate.Task.WaitAsync(ct);
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        var gateway = await TestGateway.With(a).StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        var pending = Enumerable.Range(0, 20).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();

        // Every one in flight before the stop (4 in service, 16 queued), each holding its in-flight slot: a caller still
        // waiting at the door for room in the provider's queue, or created but not yet handed to admission, is not in
        // flight, and the drain refuses it (counting created items, Outstanding, let one slip through that window).
        await Wait.Until(() => a.Calls == 4 && pipeline.InFlight == 20, "the workers are busy and the rest queued");

        var stopping = gateway.StopAsync(Ct);
        await Wait.Until(() => !pipeline.IsAccepting, "admission stops");
        var late = async () => await gateway.SubmitAsync(TestGateway.Request(), Ct);
        await late.Should().ThrowAsync<GatewayUnavailableException>();

        gate.SetResult();
        await stopping;
        (await Task.WhenAll(pending)).Should().OnlyContain(r => r.Content == "ok");
        pipeline.Outstanding.Should().Be(0);
        await gateway.DisposeAsync();
    }

    [Fact]
    public async Task Shutdown_fails_what_is_left_after_the_grace_period_and_cancels_upstream()
    {
        var clock = TestGateway.Clock();
        var a = FakeProvider.NeverAnswers("a");
        var gateway = await TestGateway.With(a)
            .UseTimeProvider(clock)
            .Configure(o => o.Pipeline.DrainTimeout = TimeSpan.FromSeconds(10))
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        var pending = Enumerable.Range(0, 30).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();
        // Past the provider's workers (4) and queue (16), the rest wait at the door holding nothing (or are still on
        // their way there): every one of them is failed by the drain all the same.
        await Wait.Until(() => a.Calls == 4 && pipeline.Outstanding >= 20, "workers are busy and the rest queued");

        var stopping = gateway.StopAsync(Ct);
        await Wait.Until(() => !pipeline.IsAccepting, "draining starts");
        pending.Should().OnlyContain(t => !t.IsCompleted, "the grace period has not passed");
        clock.Advance(TimeSpan.FromSeconds(10));
        await stopping.WaitAsync(TimeSpan.FromSeconds(30), Ct);

        foreach (var t in pending)
        {
            var act = async () => await t;
            await act.Should().ThrowAsync<GatewayUnavailableException>();
        }

        a.Cancelled.Should().Be(4, "the upstream calls in flight are cancelled");
        pipeline.Outstanding.Should().Be(0);
        gateway.Metrics.GetSnapshot().TotalRequests.Should().Be(30);
        await gateway.DisposeAsync();
    }

    [Fact]
    public async Task Every_admitted_request_ends_exactly_once_under_load()
    {
        var a = new FakeProvider("a")
        {
            OnComplete = async (r, ct) =>
            {
                var text = r.Request.Messages[0].Content!.GetText();
                var n = int.Parse(text, System.Globalization.CultureInfo.InvariantCulture);
                if (n % 3 == 0)
                {
                    await Task.Yield();
                }

                if (n % 7 == 0)
                {
                    throw FakeProvider.Fail503();
                }

                return FakeProvider.Answer(r.Model, text);
            },
        };
        var b = new FakeProvider("b") { OnComplete = (r, _) => n(r) % 11 == 0 ? throw FakeProvider.Fail503() : ValueTask.FromResult(FakeProvider.Answer(r.Model, "b")) };
        static int n(ProviderRequest r) => int.Parse(r.Request.Messages[0].Content!.GetText(), System.Globalization.CultureInfo.InvariantCulture);

        await using var gateway = await TestGateway.With(RoutingStrategy.RoundRobin, a, b)
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 64;
                o.Pipeline.MaxAttempts = 2;
                o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
                o.Pipeline.RetryMaxDelay = TimeSpan.FromMilliseconds(1);
            })
            .StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        const int threads = 64;
        const int perThread = 300;
        var ok = 0;
        var failed = 0;
        var cancelled = 0;
        await Task.WhenAll(Enumerable.Range(0, threads).Select(t => Task.Run(async () =>
        {
            for (var i = 0; i < perThread; i++)
            {
                var id = (t * perThread) + i;
                using var cts = new CancellationTokenSource();
                if (id % 13 == 0)
                {
                    cts.Cancel();
                }
                else if (id % 17 == 0)
                {
                    cts.CancelAfter(TimeSpan.FromMilliseconds(1));
                }

                try
                {
                    await gateway.SubmitAsync(TestGateway.Request(text: id.ToString(System.Globalization.CultureInfo.InvariantCulture)), cts.Token);
                    Interlocked.Increment(ref ok);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (AllProvidersFailedException)
                {
                    Interlocked.Increment(ref failed);
                }
            }
        }, Ct)));

        (ok + failed + cancelled).Should().Be(threads * perThread);
        cancelled.Should().BeGreaterThan(0);
        failed.Should().BeGreaterThan(0);
        await Wait.Until(() => pipeline.Outstanding == 0, "every item is retired");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.Submitted.Should().BeGreaterThanOrEqualTo((threads * perThread) - cancelled, "only pre-cancelled requests never enter the pipeline");
        snapshot.TotalRequests.Should().Be(snapshot.Submitted, "every submitted request ended exactly once");
        snapshot.SuccessfulRequests.Should().Be(ok);
        snapshot.FailedRequests.Should().Be(snapshot.TotalRequests - ok);
        pipeline.InFlight.Should().Be(0);
    }

    [Fact]
    public async Task A_settling_step_that_throws_leaves_no_caller_waiting_and_is_logged()
    {
        // A host's own ActivityListener that throws when the request's span ends (the tracing step of settlement, which
        // runs before the caller is answered): the caller still gets its answer, and the failure is logged. The listener
        // acts only on this test's model, so tests running alongside are not touched.
        const string Model = "settling-throws";
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == GatewayTelemetry.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a =>
            {
                if (a.Kind == ActivityKind.Internal && a.GetTagItem("gen_ai.request.model") as string == Model)
                {
                    throw new InvalidOperationException("the host's span processor failed");
                }
            },
        };
        ActivitySource.AddActivityListener(listener);
        var logs = new CapturingLoggerProvider();
        await using var gateway = await new GatewayBuilder()
            .AddProvider(new FakeProvider("a"), workers: 2, queueCapacity: 8)
            .AddModel(Model, "a")
            .ConfigureLogging(l => l.Services.AddSingleton<ILoggerProvider>(logs))
            .StartAsync(Ct);

        for (var i = 0; i < 3; i++)
        {
            var answer = await gateway.SubmitAsync(TestGateway.Request(Model), Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(30), Ct);
            answer.Content.Should().Be("ok");
        }

        logs.All.Should().Contain("failed in GatewayTracing").And.Contain("the caller is answered regardless");
    }
}
