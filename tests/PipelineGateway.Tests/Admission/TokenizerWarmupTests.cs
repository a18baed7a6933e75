using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Admission;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Admission;

/// <summary>
/// The tokenizers the token limits count with are loaded as the gateway starts, before it accepts requests (a first
/// request that needed one held admission's stage loop ~300 ms), and none without token limits (42 MB live for o200k).
/// </summary>
public sealed class TokenizerWarmupTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<IReadOnlyList<string>> LoadedAsync(string group, string? deployed, Action<GatewayOptions> configure)
    {
        var provider = new FakeProvider("p");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 1, queueCapacity: 4)
            .AddModel(group, m => m.Deploy("p", deployed))
            .Configure(configure)
            .StartAsync(Ct);
        return gateway.Services.GetRequiredService<TokenizerWarmup>().Loaded;
    }

    [Fact]
    public async Task A_token_limit_has_the_encodings_of_its_groups_and_deployments_loaded_at_start()
    {
        var loaded = await LoadedAsync("gpt-4o-mini", "gpt-4", o => o.Admission.RateLimits.Add(new RateLimitRule { Unit = RateLimitUnit.Tokens, Limit = 1_000_000, Window = TimeSpan.FromMinutes(1) }));
        loaded.Should().Equal("cl100k_base", "o200k_base");
    }

    [Fact]
    public async Task A_providers_tokens_per_minute_counts_too()
    {
        var loaded = await LoadedAsync("m", "gpt-5", o => o.Providers.Single().TokensPerMinute = 100_000);
        loaded.Should().Equal("o200k_base");
    }

    [Fact]
    public async Task Without_token_limits_or_without_models_a_tokenizer_knows_none_is_loaded()
    {
        (await LoadedAsync("gpt-4o", "gpt-4o", o => o.Admission.RateLimits.Add(new RateLimitRule { Unit = RateLimitUnit.Requests, Limit = 100, Window = TimeSpan.FromMinutes(1) })))
            .Should().BeEmpty("only requests are limited");
        (await LoadedAsync("claude", "claude-sonnet-4-5", o => o.Admission.RateLimits.Add(new RateLimitRule { Unit = RateLimitUnit.Tokens, Limit = 1_000_000, Window = TimeSpan.FromMinutes(1) })))
            .Should().BeEmpty("Claude has no tokenizer here: the cheap estimate");
    }
}
