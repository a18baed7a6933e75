using CsCheck;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>
/// Request deadlines share a few timers (<see cref="Deadlines"/>) instead of a timer per request: each must still fire
/// exactly at its request's deadline on the injected clock, never before, and an entry must leave with its request.
/// </summary>
public sealed class DeadlinesTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A started gateway and the group of its model "m", which the items made here belong to.</summary>
    private static async Task<(Gateway Gateway, ModelGroup Group)> StartAsync()
    {
        var gateway = await TestGateway.With(new FakeProvider("a")).StartAsync(Ct);
        gateway.Services.GetRequiredService<ModelCatalog>().TryResolve("m", out var group).Should().BeTrue();
        return (gateway, group!);
    }

    [Fact]
    public async Task Property_each_deadline_fires_exactly_when_the_clock_reaches_it_and_a_retired_request_never_fires()
    {
        // CsCheck, fixed seed: requests with timeouts of 1 ms to 3 s created, clock moves of 0 to 400 ms and retirements
        // before the deadline, interleaved at random. After every step: exactly the requests whose deadline has come are
        // cancelled (token fired, caller failed with the deadline), a retired one never is, and only live ones hold an entry.
        var (gateway, group) = await StartAsync();
        await using var _ = gateway;
        var pcg = new PCG(21, 7);
        for (var run = 0; run < 300; run++)
        {
            var clock = TestGateway.Clock();
            var deadlines = new Deadlines(clock);
            var live = new List<(WorkItem Item, DateTimeOffset Due)>();
            var retired = new List<CancellationToken>(); // taken before retirement: a disposed source gives no token
            var steps = 1 + (int)(pcg.Next() % 60);
            for (var s = 0; s < steps; s++)
            {
                switch (pcg.Next() % 5)
                {
                    case 0 or 1:
                        var timeout = TimeSpan.FromMilliseconds(1 + pcg.Next() % 3_000);
                        live.Add((new WorkItem(TestGateway.Request(), group!, stream: false, timeout, deadlines, CancellationToken.None), clock.GetUtcNow() + timeout));
                        break;
                    case 2 or 3:
                        clock.Advance(TimeSpan.FromMilliseconds(pcg.Next() % 400));
                        break;
                    default:
                        if (live.Count > 0 && live[(int)(pcg.Next() % (uint)live.Count)] is var (item, due) && !item.IsCompleted)
                        {
                            var token = item.Token;
                            item.TryComplete(new ChatCompletionResponse()).Should().BeTrue();
                            item.DisposeResources();
                            live.Remove((item, due));
                            retired.Add(token);
                        }

                        break;
                }

                foreach (var (item, due) in live)
                {
                    var passed = clock.GetUtcNow() >= due;
                    item.Token.IsCancellationRequested.Should().Be(passed, "run {0}: a deadline fires exactly when the clock reaches it", run);
                    item.IsCompleted.Should().Be(passed);
                    if (passed)
                    {
                        item.Failure.Should().BeOfType<DeadlineExceededException>();
                    }
                }

                retired.Where(t => t.IsCancellationRequested).Should().BeEmpty("a retired request's deadline is disarmed");
                deadlines.Count.Should().Be(live.Count(l => !l.Item.IsCompleted), "an entry leaves when its deadline fires or its request retires");
            }

            foreach (var (item, _) in live)
            {
                item.DisposeResources();
            }

            deadlines.Count.Should().Be(0);
        }
    }

    [Fact]
    public async Task Under_concurrent_adds_retirements_and_clock_moves_no_deadline_fires_early_and_no_entry_is_left()
    {
        // Four threads create and retire requests (random timeouts, retired at random) on shared shards while a fifth
        // moves the clock: every cancellation comes at or after its request's deadline, every request still live after
        // the clock passed its deadline has been cancelled, and when all are retired no entry is left.
        var (gateway, group) = await StartAsync();
        await using var _ = gateway;
        var clock = TestGateway.Clock();
        var deadlines = new Deadlines(clock);
        var early = 0;
        using var stop = new CancellationTokenSource();
        var mover = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                clock.Advance(TimeSpan.FromMilliseconds(7));
                Thread.Yield();
            }
        }, Ct);
        var workers = Enumerable.Range(0, 4).Select(w => Task.Run(() =>
        {
            var pcg = new PCG((uint)(31 + w), 5);
            var live = new List<(WorkItem Item, DateTimeOffset Due)>();
            for (var i = 0; i < 2_000; i++)
            {
                var timeout = TimeSpan.FromMilliseconds(1 + pcg.Next() % 200);
                var item = new WorkItem(TestGateway.Request(), group!, stream: false, timeout, deadlines, CancellationToken.None);
                // The deadline as the clock's timestamp: the wall-clock Deadline is read a moment apart from it, and the
                // clock may move in between.
                var due = item.DeadlineDue;
                item.Token.Register(() =>
                {
                    if (clock.GetTimestamp() < due)
                    {
                        Interlocked.Increment(ref early);
                    }
                });
                live.Add((item, item.Deadline));
                if (pcg.Next() % 3 == 0 && live.Count > 0)
                {
                    var k = (int)(pcg.Next() % (uint)live.Count);
                    var old = live[k].Item;
                    old.TryComplete(new ChatCompletionResponse());
                    old.DisposeResources();
                    live.RemoveAt(k);
                }
            }

            return live;
        }, Ct)).ToArray();

        var left = (await Task.WhenAll(workers)).SelectMany(l => l).ToList();
        await stop.CancelAsync();
        await mover;

        // Every deadline still armed has come once the clock moves past the longest timeout.
        clock.Advance(TimeSpan.FromSeconds(1));
        left.Should().OnlyContain(l => l.Item.Token.IsCancellationRequested && l.Item.Failure is DeadlineExceededException, "a deadline the clock passed has fired");
        early.Should().Be(0, "no deadline fires before the clock reaches it");
        foreach (var (item, _) in left)
        {
            item.DisposeResources();
        }

        deadlines.Count.Should().Be(0, "every retired request's entry is gone");
    }

    [Fact]
    public async Task A_request_created_past_its_deadline_is_cancelled_after_its_construction_not_inside_it()
    {
        // A caller that waited at the door past its whole timeout: its deadline is due as the item is made. A clock whose
        // timers run at once when due (FakeTimeProvider does) must not cancel it inside its constructor, under the
        // shard's lock: the cancellation comes after, on its own.
        var (gateway, group) = await StartAsync();
        await using var _ = gateway;
        var clock = TestGateway.Clock();
        var deadlines = new Deadlines(clock);
        var submitted = clock.GetTimestamp();
        clock.Advance(TimeSpan.FromSeconds(10));

        var item = new WorkItem(TestGateway.Request(), group!, stream: false, TimeSpan.FromSeconds(5), deadlines, CancellationToken.None, submittedTimestamp: submitted);
        var createdCompleted = item.IsCompleted;

        await Wait.Until(() => item.IsCompleted, "the past deadline fires");
        createdCompleted.Should().BeFalse("the item is whole before its deadline is acted on");
        item.Failure.Should().BeOfType<DeadlineExceededException>();
        item.DisposeResources();
        deadlines.Count.Should().Be(0);
    }

    [Fact]
    public async Task A_deadline_cancels_the_upstream_call_in_progress_and_the_caller_gets_DeadlineExceeded()
    {
        var clock = TestGateway.Clock();
        var upstreamCancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = new FakeProvider("a")
        {
            OnComplete = async (_, token) =>
            {
                await using (token.Register(() => upstreamCancelled.TrySetResult()))
                {
                    await FakeProvider.UntilCancelled(token);
                }

                return FakeProvider.Answer("m", "never");
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a)
            .AddModel("m", "a")
            .UseTimeProvider(clock)
            .StartAsync(Ct);
        var request = TestGateway.Request();
        request.Gateway = new GatewayRequestOptions { Timeout = TimeSpan.FromSeconds(2) };

        var call = gateway.SubmitAsync(request, Ct).AsTask();
        await Wait.Until(() => a.Calls == 1, "the upstream call is in progress");
        clock.Advance(TimeSpan.FromMilliseconds(1_999));
        upstreamCancelled.Task.IsCompleted.Should().BeFalse("the deadline has not come yet");
        call.IsCompleted.Should().BeFalse();

        clock.Advance(TimeSpan.FromMilliseconds(1));

        await upstreamCancelled.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);
        var act = async () => await call;
        (await act.Should().ThrowAsync<DeadlineExceededException>()).Which.Timeout.Should().Be(TimeSpan.FromSeconds(2));
    }

    [Fact]
    public async Task No_deadline_entry_outlives_its_request()
    {
        var a = new FakeProvider("a");
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();

        await Task.WhenAll(Enumerable.Range(0, 200).Select(i => gateway.SubmitAsync(TestGateway.Request(text: "r" + i), Ct).AsTask()));
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        var refused = async () => await gateway.SubmitAsync(TestGateway.Request(), cancelled.Token);
        await refused.Should().ThrowAsync<RequestCancelledException>();

        await Wait.Until(() => pipeline.Outstanding == 0, "every request is retired");
        pipeline.Deadlines.Count.Should().Be(0, "a retired request holds no deadline entry (nor its item)");
    }

    [Fact]
    public async Task A_burst_of_requests_gives_the_heap_memory_back_once_retired()
    {
        var (gateway, group) = await StartAsync();
        await using var _ = gateway;
        var clock = TestGateway.Clock();
        var deadlines = new Deadlines(clock);
        var items = Enumerable.Range(0, 20_000)
            .Select(i => new WorkItem(TestGateway.Request(), group!, stream: false, TimeSpan.FromMilliseconds(1 + i % 997), deadlines, CancellationToken.None))
            .ToList();
        deadlines.Capacity.Should().BeGreaterThanOrEqualTo(20_000);

        // Half expire (in deadline order); three quarters retire in the order they were made (the heap shrinks under the
        // rest); then the rest expire, each still found, and retire.
        clock.Advance(TimeSpan.FromMilliseconds(500));
        items.Where(i => i.IsCompleted).Should().OnlyContain(i => i.Failure is DeadlineExceededException);
        foreach (var item in items.Take(15_000))
        {
            item.DisposeResources();
        }

        var rest = items.Skip(15_000).ToList();
        clock.Advance(TimeSpan.FromSeconds(1));
        rest.Should().OnlyContain(i => i.IsCompleted && i.Failure is DeadlineExceededException, "every deadline left in the shrunk heap fires");
        foreach (var item in rest)
        {
            item.DisposeResources();
        }

        deadlines.Count.Should().Be(0);
        deadlines.Capacity.Should().BeLessThanOrEqualTo(2 * 1024 * Math.Clamp(Environment.ProcessorCount, 1, 16), "each shard's heap shrinks back once the burst is retired");
    }

    [Theory]
    [InlineData(1_000_000_000L)]
    [InlineData(10_000_000L)]
    [InlineData(1_000L)]
    public void Conversions_round_up_and_saturate(long frequency)
    {
        Deadlines.ToTimeSpanCeiling(1, frequency).Should().BePositive("a timer never fires before the deadline");
        Deadlines.ToTimeSpanCeiling(frequency, frequency).Should().Be(TimeSpan.FromSeconds(1));
        Deadlines.ToTimestampTicks(TimeSpan.FromSeconds(1), frequency).Should().Be(frequency);
        Deadlines.ToTimestampTicks(TimeSpan.MaxValue, frequency).Should().BePositive("a deadline years away does not overflow");
    }
}
