using Microsoft.Extensions.Hosting;
using PipelineGateway.DeadLetter;
using Microsoft.Extensions.DependencyInjection;
using System.Collections.Concurrent;
using FluentAssertions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Dispatch;

public sealed class ProviderLimitTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_provider_never_sees_more_than_its_RPM_in_any_minute_nor_more_than_its_concurrency()
    {
        var clock = TestGateway.Clock();
        var calls = new ConcurrentQueue<DateTimeOffset>();
        var concurrent = 0;
        var maxConcurrent = 0;
        var provider = new FakeProvider("limited")
        {
            OnComplete = async (r, _) =>
            {
                var now = Interlocked.Increment(ref concurrent);
                InterlockedMax(ref maxConcurrent, now);
                calls.Enqueue(clock.GetUtcNow());
                await Task.Yield();
                Interlocked.Decrement(ref concurrent);
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 4, queueCapacity: 1000)
            .AddModel("m", "limited")
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Providers[0].RequestsPerMinute = 100;
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
                o.Pipeline.MaxInFlight = 1000;
                o.Pipeline.AdmissionQueueCapacity = 1000;
            })
            .StartAsync(Ct);

        var all = Enumerable.Range(0, 1000).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();
        for (var minute = 1; minute <= 10; minute++)
        {
            var expected = minute * 100;
            await Wait.Until(() => calls.Count == expected, $"minute {minute}'s 100 calls are sent");
            if (minute < 10)
            {
                // Every worker has been refused by the limit and waits on the clock, and every request left is in the
                // provider's hands (none still on its way through the door and the stages): nothing more can go this
                // minute, and nothing arrives after the clock moves.
                await Wait.Until(
                    () => Pool(gateway).WaitingForRate == 4 && Pool(gateway).QueueDepth + 4 == 1000 - expected,
                    "the four workers wait for the next minute with every request left queued");
            }

            calls.Count.Should().Be(expected, "the limit holds within the minute");
            clock.Advance(TimeSpan.FromMinutes(1));
        }

        await Task.WhenAll(all);
        var times = calls.OrderBy(t => t).ToArray();
        for (var i = 100; i < times.Length; i++)
        {
            (times[i] - times[i - 100]).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMinutes(1), "no 60-second window holds more than 100 calls");
        }

        maxConcurrent.Should().BeLessThanOrEqualTo(4);
    }

    [Fact]
    public async Task A_provider_TPM_holds_with_estimates_corrected_to_actual_usage()
    {
        var clock = TestGateway.Clock();
        var calls = 0;
        var provider = new FakeProvider("tpm")
        {
            OnComplete = (r, _) =>
            {
                Interlocked.Increment(ref calls);
                return ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok")); // 4 tokens used
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 2, queueCapacity: 100)
            .AddModel("m", "tpm")
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Providers[0].TokensPerMinute = 1000;
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
            })
            .StartAsync(Ct);

        // Each request is estimated at ~600 tokens (max_tokens 590 + prompt): one at a time fits, and since the
        // actual usage (4) replaces the estimate, the next one fits right after.
        for (var i = 0; i < 20; i++)
        {
            var r = TestGateway.Request();
            r.MaxTokens = 590;
            await gateway.SubmitAsync(r, Ct);
        }

        calls.Should().Be(20);
    }

    [Fact]
    public async Task A_provider_429_pauses_the_pool_for_its_retry_after()
    {
        var clock = TestGateway.Clock();
        var times = new ConcurrentQueue<DateTimeOffset>();
        var first = true;
        var provider = new FakeProvider("p")
        {
            OnComplete = (r, _) =>
            {
                times.Enqueue(clock.GetUtcNow());
                if (first)
                {
                    first = false;
                    throw new ProviderException(AttemptOutcome.RateLimited, "429", 429, TimeSpan.FromSeconds(5));
                }

                return ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok"));
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 1, queueCapacity: 10)
            .AddModel("m", "p")
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Health.Enabled = false;
                o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
            })
            .StartAsync(Ct);

        var pending = gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask();
        await Wait.Until(() => times.Count == 1, "the first attempt gets a 429");
        await Wait.Until(() => gateway.Services.GetServices<IHostedService>().OfType<DeadLetterStage>().Single().RetriesScheduled == 1, "the retry waits out the Retry-After on the clock");
        times.Count.Should().Be(1, "nothing is sent while the provider asked us to wait");
        clock.Advance(TimeSpan.FromSeconds(5));
        (await pending).Gateway!.Attempts.Select(a => a.Outcome).Should().Equal(AttemptOutcome.RateLimited, AttemptOutcome.Success);
        (times.Last() - times.First()).Should().Be(TimeSpan.FromSeconds(5));
    }

    private static PipelineGateway.Dispatch.ProviderWorkerPool Pool(Gateway gateway) =>
        gateway.Services.GetRequiredService<PipelineGateway.Dispatch.ProviderPools>().All[0];

    private static void InterlockedMax(ref int target, int value)
    {
        int current;
        while ((current = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, current) != current)
        {
        }
    }
}
