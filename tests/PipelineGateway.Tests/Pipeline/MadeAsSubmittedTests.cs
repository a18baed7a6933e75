using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Admission;
using PipelineGateway.Caching;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>
/// What costs in proportion to a request's size is made on the submitting thread, before the request reaches a stage:
/// a stage's loop handles one request at a time, and an agent's 55 KB step held every tenant's requests behind it there
/// (docs/benchmarks.md, "Agent-sized requests and token limits"). The pipeline here is marked started with no stage
/// running, so the request waits in admission's channel as the submit left it.
/// </summary>
public sealed class MadeAsSubmittedTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static WorkItem Submitted(ChatCompletionRequest request, Action<GatewayOptions> configure, out ServiceProvider services)
    {
        var builder = new GatewayBuilder()
            .AddProvider(new FakeProvider("p"), workers: 4, queueCapacity: 16)
            .AddModel("m", m => m.Deploy("p", "gpt-4o-mini"))
            .Configure(configure);
        services = builder.Services.BuildServiceProvider(); // not started: no stage reads the channels
        services.GetRequiredService<GatewayPipeline>().MarkStarted(); // but the door is open
        _ = services.GetRequiredService<IGatewayQueue>().SubmitAsync(request, SubmitMode.FailFast, Ct);
        services.GetRequiredService<PipelineChannels>().Admission.Reader.TryRead(out var item).Should().BeTrue();
        return item!;
    }

    [Fact]
    public async Task A_token_rule_has_the_prompt_counted_before_the_admission_stage_takes_the_request()
    {
        TokenCounter.Load("o200k_base");
        var request = TestGateway.Request(text: string.Join(' ', Enumerable.Repeat("tokenization", 300)));
        TokenCounter.CountPrompt(request, "gpt-4o-mini").Should().BeLessThan(TokenCounter.ApproximatePrompt(request) * 2 / 3, "the test tells a count from the estimate");

        var item = Submitted(request, o => o.Admission.RateLimits.Add(new RateLimitRule
        {
            Name = "tpm", Unit = RateLimitUnit.Tokens, Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1_000_000, Window = TimeSpan.FromMinutes(1),
        }), out var services);
        await using var _ = services;

        item.PromptTokensIfCounted.Should().Be(TokenCounter.CountPrompt(request, "gpt-4o-mini"));
    }

    [Fact]
    public async Task A_cacheable_request_has_its_cache_key_before_the_cache_stage_takes_it()
    {
        var request = TestGateway.Request(text: string.Join(' ', Enumerable.Repeat("a long prompt", 300)));

        var item = Submitted(request, o => o.Cache.Enabled = true, out var services);
        await using var _ = services;

        item.CacheKey.Should().Be(CacheKey.Compute("m", request));
    }

    [Fact]
    public async Task Without_a_cache_no_key_is_made()
    {
        var item = Submitted(TestGateway.Request(), _ => { }, out var services);
        await using var _ = services;

        item.CacheKey.Should().BeNull();
        item.PromptTokensIfCounted.Should().BeNull("no token limit: nothing is counted");
    }
}
