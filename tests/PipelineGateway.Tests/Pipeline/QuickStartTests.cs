using FluentAssertions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>The README's C# quick start, run as written (with a fake clock for the limit).</summary>
public sealed class QuickStartTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task The_readme_quick_start_works_with_a_limit_of_60_per_minute_and_an_hour_of_cache()
    {
        var clock = TestGateway.Clock();
        await using var gateway = await new GatewayBuilder()
            .AddSimulatedProvider("openai", o => o.LatencyMs = 0)
            .AddModel("gpt-4", "openai")
            .AddRateLimit(60, TimeSpan.FromMinutes(1))
            .AddCache(TimeSpan.FromSeconds(3600))
            .UseTimeProvider(clock)
            .StartAsync(Ct);
        var hello = new ChatCompletionRequest { Model = "gpt-4", Messages = [ChatCompletionMessage.User("Hello!")] };

        var response = await gateway.SubmitAsync(hello, Ct);
        response.Content.Should().NotBeNullOrWhiteSpace();
        response.Gateway!.Provider.Should().Be("openai");

        var again = await gateway.SubmitAsync(hello, Ct);
        again.Gateway!.Cached.Should().BeTrue();
        again.Content.Should().Be(response.Content);

        for (var i = 2; i < 60; i++)
        {
            await gateway.SubmitAsync(new ChatCompletionRequest { Model = "gpt-4", Messages = [ChatCompletionMessage.User($"Hello {i}")] }, Ct);
        }

        // A fail-fast caller is refused with an accurate retry-after…
        var act = async () => await gateway.SubmitAsync(new ChatCompletionRequest { Model = "gpt-4", Messages = [ChatCompletionMessage.User("one too many")] }, SubmitMode.FailFast, Ct);
        var limited = (await act.Should().ThrowAsync<RateLimitedException>()).Which;
        limited.RetryAfter.Should().BeCloseTo(TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(5));

        // …a waiting caller (the default) is admitted when the bucket refills.
        var waiting = gateway.SubmitAsync(new ChatCompletionRequest { Model = "gpt-4", Messages = [ChatCompletionMessage.User("after refill")] }, Ct).AsTask();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().RateLimitWaits == 1, "the caller waits for a permit");
        waiting.IsCompleted.Should().BeFalse();
        clock.Advance(TimeSpan.FromSeconds(1));
        (await waiting).Content.Should().NotBeEmpty();

        clock.Advance(TimeSpan.FromSeconds(3601));
        (await gateway.SubmitAsync(hello, Ct)).Gateway!.Cached.Should().BeFalse("the hour-long TTL has passed");
    }

    [Fact]
    public async Task The_simulated_provider_is_deterministic_by_seed()
    {
        static async Task<List<string>> Run(int seed)
        {
            var sim = new SimulatedProvider("s", new SimulatedProviderOptions { LatencyMs = 0, FailureRate = 0.3, Seed = seed });
            var outcomes = new List<string>();
            for (var i = 0; i < 50; i++)
            {
                try
                {
                    var r = await sim.CompleteAsync(new PipelineGateway.Providers.ProviderRequest(TestGateway.Request(text: $"q{i % 5}"), "x"), CancellationToken.None);
                    outcomes.Add(r.Content);
                }
                catch (PipelineGateway.Providers.ProviderException ex)
                {
                    outcomes.Add("fail " + ex.StatusCode);
                }
            }

            return outcomes;
        }

        var first = await Run(7);
        (await Run(7)).Should().Equal(first);
        (await Run(8)).Should().NotEqual(first);
        first.Count(o => o.StartsWith("fail", StringComparison.Ordinal)).Should().BeInRange(5, 25);
    }
}
