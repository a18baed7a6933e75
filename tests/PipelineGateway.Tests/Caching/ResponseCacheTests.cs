using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Caching;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Caching;

public sealed class ResponseCacheTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<Gateway> Start(FakeProvider provider, Microsoft.Extensions.Time.Testing.FakeTimeProvider? clock = null, Action<GatewayOptions>? tweak = null)
    {
        var builder = TestGateway.With(provider).AddCache(TimeSpan.FromMinutes(10));
        if (clock is not null)
        {
            builder.UseTimeProvider(clock);
        }

        return await builder.Configure(o =>
        {
            o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
            tweak?.Invoke(o);
        }).StartAsync(Ct);
    }

    [Fact]
    public async Task A_hit_is_served_without_an_upstream_call_and_expires_after_its_ttl()
    {
        var clock = TestGateway.Clock();
        var provider = new FakeProvider("p");
        await using var gateway = await Start(provider, clock);

        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Cached.Should().BeFalse();
        var hit = await gateway.SubmitAsync(TestGateway.Request(), Ct);
        hit.Gateway!.Cached.Should().BeTrue();
        hit.Gateway.Attempts.Should().BeEmpty();
        provider.Calls.Should().Be(1);

        clock.Advance(TimeSpan.FromMinutes(10) - TimeSpan.FromTicks(1));
        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Cached.Should().BeTrue();
        clock.Advance(TimeSpan.FromTicks(1));
        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Cached.Should().BeFalse("an expired entry is never served");
        provider.Calls.Should().Be(2);
    }

    [Fact]
    public async Task Per_request_ttl_no_cache_and_no_store()
    {
        var clock = TestGateway.Clock();
        var provider = new FakeProvider("p");
        await using var gateway = await Start(provider, clock);
        ChatCompletionRequest R(GatewayRequestOptions? o = null)
        {
            var r = TestGateway.Request();
            r.Gateway = o;
            return r;
        }

        await gateway.SubmitAsync(R(new GatewayRequestOptions { NoStore = true }), Ct);
        (await gateway.SubmitAsync(R(), Ct)).Gateway!.Cached.Should().BeFalse("no-store wrote nothing");

        (await gateway.SubmitAsync(R(new GatewayRequestOptions { NoCache = true }), Ct)).Gateway!.Cached.Should().BeFalse("no-cache skips the read");
        (await gateway.SubmitAsync(R(new GatewayRequestOptions { NoStore = true }), Ct)).Gateway!.Cached.Should().BeFalse("no-store skips the read too");
        provider.Calls.Should().Be(4);
        (await gateway.SubmitAsync(R(), Ct)).Gateway!.Cached.Should().BeTrue("no-cache still wrote its fresh answer");

        var shortLived = TestGateway.Request(text: "short");
        shortLived.Gateway = new GatewayRequestOptions { CacheTtl = TimeSpan.FromSeconds(5) };
        await gateway.SubmitAsync(shortLived, Ct);
        clock.Advance(TimeSpan.FromSeconds(5));
        (await gateway.SubmitAsync(TestGateway.Request(text: "short"), Ct)).Gateway!.Cached.Should().BeFalse("the 5 s TTL override passed");
    }

    [Fact]
    public async Task Non_deterministic_requests_are_not_cached_unless_configured()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await Start(provider);
        var hot = TestGateway.Request();
        hot.Temperature = 0.8;

        await gateway.SubmitAsync(hot, Ct);
        (await gateway.SubmitAsync(hot, Ct)).Gateway!.Cached.Should().BeFalse();
        provider.Calls.Should().Be(2);
    }

    [Fact]
    public async Task The_least_recently_used_entry_leaves_first_under_the_size_limit()
    {
        var clock = TestGateway.Clock();
        var provider = new FakeProvider("p");
        await using var gateway = await Start(provider, clock, o => o.Cache.MaxEntries = 3);
        async Task<bool> Cached(string text)
        {
            clock.Advance(TimeSpan.FromSeconds(1)); // distinct access times
            return (await gateway.SubmitAsync(TestGateway.Request(text: text), Ct)).Gateway!.Cached;
        }

        await Cached("a");
        await Cached("b");
        await Cached("c");
        (await Cached("a")).Should().BeTrue(); // a is now the most recently used
        await Cached("d"); // full: b, the least recently used, leaves

        (await Cached("a")).Should().BeTrue();
        (await Cached("c")).Should().BeTrue();
        (await Cached("d")).Should().BeTrue();
        (await Cached("b")).Should().BeFalse("b was evicted");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.CacheEntries.Should().Be(3);
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CacheEvictions >= 2, "evictions are counted");
    }

    [Fact]
    public async Task A_hundred_concurrent_identical_requests_make_exactly_one_upstream_call()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate, "shared");
        await using var gateway = await Start(provider);

        var all = Enumerable.Range(0, 100).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CoalescedRequests == 99, "99 requests join the first");
        gate.SetResult();
        var responses = await Task.WhenAll(all);

        provider.Calls.Should().Be(1);
        responses.Should().OnlyContain(r => r.Content == "shared");
        responses.Select(r => r.Gateway!.RequestId).Distinct().Should().HaveCount(100, "each caller gets its own metadata");
    }

    [Fact]
    public async Task Followers_of_one_call_are_bounded_and_the_rest_make_their_own_call()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate, "shared");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 16)
            .AddModel("m", m => m.Strategy("Priority").Deploy("p"))
            .AddCache(TimeSpan.FromMinutes(10))
            .Configure(o => o.Cache.MaxFollowers = 3)
            .StartAsync(Ct);

        var all = Enumerable.Range(0, 10).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();
        await Wait.Until(() => provider.Calls == 7, "one leader with three followers, and six on their own");
        gateway.Metrics.GetSnapshot().CoalescedRequests.Should().Be(3);
        gate.SetResult();
        (await Task.WhenAll(all)).Should().OnlyContain(r => r.Content == "shared");
        provider.Calls.Should().Be(7);
    }

    [Fact]
    public async Task One_waiter_cancelling_does_not_cancel_the_shared_call_for_the_others()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate, "shared");
        await using var gateway = await Start(provider);
        using var leaderCaller = new CancellationTokenSource();

        var leader = gateway.SubmitAsync(TestGateway.Request(), leaderCaller.Token).AsTask();
        await Wait.Until(() => provider.Calls == 1, "the leader calls upstream");
        var followers = Enumerable.Range(0, 5).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CoalescedRequests == 5, "followers join");

        await leaderCaller.CancelAsync();
        var act = async () => await leader;
        await act.Should().ThrowAsync<RequestCancelledException>();
        gate.SetResult();

        (await Task.WhenAll(followers)).Should().OnlyContain(r => r.Content == "shared");
        provider.Calls.Should().Be(2, "a follower took over as leader");
    }

    [Fact]
    public async Task A_failure_reaches_every_waiter_and_is_never_cached()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var fail = true;
        var provider = FakeProvider.Gated("p", gate, failure: () => fail ? new PipelineGateway.Providers.ProviderException(AttemptOutcome.NonRetryableError, "bad", 400) : null);
        await using var gateway = await Start(provider);

        var all = Enumerable.Range(0, 10).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()).ToArray();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CoalescedRequests == 9, "they share one call");
        gate.SetResult();
        foreach (var t in all)
        {
            var act = async () => await t;
            await act.Should().ThrowAsync<UpstreamRejectedException>();
        }

        fail = false;
        (await gateway.SubmitAsync(TestGateway.Request(), Ct)).Gateway!.Cached.Should().BeFalse("the error was not cached");
        gateway.Metrics.GetSnapshot().CacheEntries.Should().Be(1);
    }

    [Fact]
    public async Task A_streamed_answer_is_stored_whole_and_a_hit_replays_the_same_content()
    {
        var provider = new FakeProvider("p") { OnStream = (r, _) => ToolStream(r.Model) };
        await using var gateway = await Start(provider);

        var original = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);
        var replay = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);
        var whole = await gateway.SubmitAsync(TestGateway.Request(), Ct);

        provider.Calls.Should().Be(1);
        replay[0].Gateway!.Cached.Should().BeTrue();
        Text(replay).Should().Be(Text(original)).And.Be("Hello world");
        Args(replay).Should().Be(Args(original)).And.Be("""{"q":"x"}""");
        replay.SelectMany(c => c.Choices).Select(c => c.FinishReason).Should().Contain(FinishReasons.ToolCalls);
        replay.Last().Usage!.TotalTokens.Should().Be(7);
        whole.Gateway!.Cached.Should().BeTrue("a streamed answer also serves whole requests");
        whole.Content.Should().Be("Hello world");
    }

    [Fact]
    public async Task A_broken_stream_is_never_cached()
    {
        var broken = true;
        var provider = new FakeProvider("p");
        provider.OnStream = (r, ct) => broken ? Breaks(r.Model) : ToolStream(r.Model);
        await using var gateway = await Start(provider, tweak: o => o.Pipeline.MaxAttempts = 1);

        var act = async () => await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);
        await act.Should().ThrowAsync<AllProvidersFailedException>();
        broken = false;

        (await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct))[0].Gateway!.Cached.Should().BeFalse();
    }

    private static string Text(List<ChatCompletionChunk> chunks) => string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content));

    private static string Args(List<ChatCompletionChunk> chunks) => string.Concat(chunks.SelectMany(c => c.Choices).SelectMany(c => c.Delta.ToolCalls ?? []).Select(t => t.Function?.Arguments));

    private static async IAsyncEnumerable<ChatCompletionChunk> ToolStream(string model)
    {
        await Task.Yield();
        yield return FakeProvider.Chunk(model, "Hello");
        yield return FakeProvider.Chunk(model, " world");
        yield return new ChatCompletionChunk { Id = "s", Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Id = "c1", Type = "function", Function = new FunctionCall { Name = "f", Arguments = "{\"q\":" } }] } }] };
        yield return new ChatCompletionChunk { Id = "s", Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = "\"x\"}" } }] } }] };
        yield return FakeProvider.Chunk(model, null!, FinishReasons.ToolCalls);
        yield return new ChatCompletionChunk { Id = "s", Model = model, Choices = [], Usage = TokenUsage.Of(5, 2) };
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> Breaks(string model)
    {
        yield return FakeProvider.Chunk(model, "partial");
        await Task.Yield();
        throw new PipelineGateway.Providers.ProviderException(AttemptOutcome.RetryableError, "reset");
    }
}
