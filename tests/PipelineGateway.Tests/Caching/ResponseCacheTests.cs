using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Caching;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.Anthropic;
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

    [Fact]
    public async Task A_cached_stream_keeps_its_thinking_and_stop_reason_for_whole_and_streamed_hits()
    {
        // Claude's signed thinking must come back whole from a hit: the caller gives it back in its tool loop's next
        // turn, and Claude refuses the turn without it. Two blocks (the second a redacted one), the first in pieces.
        var provider = new FakeProvider("p") { OnStream = (r, _) => ThinkingStream(r.Model) };
        await using var gateway = await Start(provider);

        await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);
        var whole = await gateway.SubmitAsync(TestGateway.Request(), Ct);
        var replay = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        provider.Calls.Should().Be(1);
        whole.Gateway!.Cached.Should().BeTrue();
        var message = whole.Choices[0].Message!;
        Member(message.AdditionalProperties, "reasoning_content").Should().Be("Let me think.");
        ThinkingBlocks.Read(message.AdditionalProperties).Should().Equal(Signed, Hidden);
        AnthropicStop.Of(whole).Should().Be(("stop_sequence", "END"));
        whole.Content.Should().Be("Hi");

        replay[0].Gateway!.Cached.Should().BeTrue();
        var collected = new ThinkingBlocks.Collector();
        foreach (var delta in replay.SelectMany(c => c.Choices).Select(c => c.Delta))
        {
            collected.Add(ThinkingBlocks.Read(delta.AdditionalProperties));
        }

        collected.Blocks().Should().Equal(Signed, Hidden);
        string.Concat(replay.SelectMany(c => c.Choices).Select(c => Member(c.Delta.AdditionalProperties, "reasoning_content"))).Should().Be("Let me think.");
        Text(replay).Should().Be("Hi");
        replay.Select(c => c.AnthropicStop).Should().Contain(("stop_sequence", "END"));
    }

    [Fact]
    public async Task A_cached_answer_keeps_its_refusal_reasoning_and_log_probabilities_both_ways()
    {
        using var logprobs = System.Text.Json.JsonDocument.Parse("""{"content":null,"refusal":[{"token":"No","logprob":-0.5,"bytes":[78,111],"top_logprobs":[]}]}""");
        var answer = new ChatCompletionResponse
        {
            Id = "r",
            Model = "m",
            Choices =
            [
                new ChatChoice
                {
                    Message = new ChatCompletionMessage
                    {
                        Role = ChatRoles.Assistant,
                        Refusal = "No.",
                        AdditionalProperties = new() { ["reasoning"] = System.Text.Json.JsonSerializer.SerializeToElement("Unsafe.") },
                    },
                    FinishReason = FinishReasons.Stop,
                    Logprobs = logprobs.RootElement.Clone(),
                },
            ],
            Usage = TokenUsage.Of(3, 1),
        };
        var provider = new FakeProvider("p") { OnComplete = (_, _) => ValueTask.FromResult(answer) };
        await using var gateway = await Start(provider);

        await gateway.SubmitAsync(TestGateway.Request(), Ct);
        var replay = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        provider.Calls.Should().Be(1);
        replay[0].Gateway!.Cached.Should().BeTrue();
        var choices = replay.SelectMany(c => c.Choices).ToList();
        string.Concat(choices.Select(c => c.Delta.Refusal)).Should().Be("No.");
        Text(replay).Should().BeEmpty();
        string.Concat(choices.Select(c => Member(c.Delta.AdditionalProperties, "reasoning"))).Should().Be("Unsafe.");
        choices.Where(c => c.Logprobs is not null).Select(c => c.Logprobs!.Value.GetProperty("refusal")[0].GetProperty("token").GetString()).Should().Equal("No");

        // And back: the replayed stream, assembled as a stream being stored is, says what the answer said.
        var assembled = new StreamReplay();
        replay.ForEach(assembled.Add);
        var again = assembled.ToResponse();
        again.Choices[0].Message!.Refusal.Should().Be("No.");
        again.Choices[0].Message!.Content.Should().BeNull("a refusal has no text");
        Member(again.Choices[0].Message!.AdditionalProperties, "reasoning").Should().Be("Unsafe.");
        again.Choices[0].Logprobs!.Value.GetRawText().Should().Be("""{"content":null,"refusal":[{"token":"No","logprob":-0.5,"bytes":[78,111],"top_logprobs":[]}]}""");
    }

    private static readonly ThinkingBlock Signed = new(ThinkingBlock.Plain, "Let me think.", "SIG", null);

    private static readonly ThinkingBlock Hidden = new(ThinkingBlock.Redacted, null, null, "opaque");

    private static string? Member(Dictionary<string, System.Text.Json.JsonElement>? extra, string name) =>
        extra?.TryGetValue(name, out var value) == true ? value.GetString() : null;

    private static async IAsyncEnumerable<ChatCompletionChunk> ThinkingStream(string model)
    {
        await Task.Yield();
        ChatCompletionChunk Thinking(string? text, string? signature, ThinkingBlock? whole = null) => new()
        {
            Id = "s",
            Model = model,
            Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { AdditionalProperties = ThinkingBlocks.Write(null, [whole ?? new ThinkingBlock(ThinkingBlock.Plain, text, signature, null)], text) } }],
        };

        yield return Thinking("Let me ", null);
        yield return Thinking("think.", null);
        yield return Thinking(string.Empty, "SIG");
        yield return Thinking(null, null, Hidden);
        yield return FakeProvider.Chunk(model, "Hi");
        var finish = FakeProvider.Chunk(model, null!, FinishReasons.Stop);
        finish.AnthropicStop = ("stop_sequence", "END");
        yield return finish;
        yield return new ChatCompletionChunk { Id = "s", Model = model, Choices = [], Usage = TokenUsage.Of(5, 2) };
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
