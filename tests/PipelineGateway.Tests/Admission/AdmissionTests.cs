using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Admission;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Admission;

public sealed class AdmissionTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<(Gateway Gateway, FakeProvider Provider)> Start(FakeTimeProvider clock, Action<GatewayOptions> configure)
    {
        var provider = new FakeProvider("p");
        var gateway = await TestGateway.With(provider)
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(10);
                configure(o);
            })
            .StartAsync(Ct);
        return (gateway, provider);
    }

    private static ChatCompletionRequest Req(string? key = null, int? maxTokens = null, string text = "Hello!")
    {
        var r = TestGateway.Request(text: text);
        r.MaxTokens = maxTokens;
        if (key is not null)
        {
            r.Gateway = new GatewayRequestOptions { RateLimitKey = key };
        }

        return r;
    }

    /// <summary>Sends fail-fast requests until one is refused; returns how many were admitted.</summary>
    private static async Task<int> Drain(Gateway gateway, Func<ChatCompletionRequest> request, int max = 100_000)
    {
        for (var i = 0; i < max; i++)
        {
            try
            {
                await gateway.SubmitAsync(request(), SubmitMode.FailFast, Ct);
            }
            catch (RateLimitedException)
            {
                return i;
            }
        }

        return max;
    }

    [Fact]
    public async Task Per_minute_and_per_hour_limits_admit_exact_counts()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o => o.Admission.RateLimits.AddRange(
        [
            new RateLimitRule { Name = "rpm", Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 10, Window = TimeSpan.FromMinutes(1) },
            new RateLimitRule { Name = "rph", Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 25, Window = TimeSpan.FromHours(1) },
        ]));
        await using var _ = gateway;

        (await Drain(gateway, () => Req())).Should().Be(10);
        clock.Advance(TimeSpan.FromMinutes(1));
        (await Drain(gateway, () => Req())).Should().Be(10);
        clock.Advance(TimeSpan.FromMinutes(1));
        (await Drain(gateway, () => Req())).Should().Be(5, "the hour's 25 are used up");
        clock.Advance(TimeSpan.FromMinutes(1));
        (await Drain(gateway, () => Req())).Should().Be(0);
        clock.Advance(TimeSpan.FromMinutes(57));
        (await Drain(gateway, () => Req())).Should().Be(10, "the first minute's requests left the hour window");
    }

    [Fact]
    public async Task Limits_partitioned_by_model_count_the_model_asked_not_its_spelling()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o =>
        {
            o.Admission.PartitionBy = RateLimitPartition.Model;
            o.Admission.RateLimits.Add(new RateLimitRule { Name = "per-model", Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 3, Window = TimeSpan.FromMinutes(1) });
            o.Models[0].Aliases = ["m-alias"]; // (the builder's group object is shared by each options build: set, not added)
            o.Models.Add(new PipelineGateway.Routing.ModelGroupOptions { Name = "w/*", Deployments = [new PipelineGateway.Routing.DeploymentOptions { Provider = "p" }] });
        });
        await using var _ = gateway;
        ChatCompletionRequest Named(string model)
        {
            var r = Req();
            r.Model = model;
            return r;
        }

        // Case and alias are one model (a caller varying them made a partition each: no limit at all).
        string[] spellings = ["m", "M", "m-alias", "M-ALIAS"];
        var admitted = 0;
        foreach (var model in spellings)
        {
            try
            {
                await gateway.SubmitAsync(Named(model), SubmitMode.FailFast, Ct);
                admitted++;
            }
            catch (RateLimitedException)
            {
            }
        }

        admitted.Should().Be(3, "one model, limited to 3 a minute, whatever it is called");
        (await Drain(gateway, () => Named("W/x"))).Should().Be(3, "a wildcard's name is its own model");
        (await Drain(gateway, () => Named("w/X"))).Should().Be(3, "another name the wildcard takes is another model");
        (await Drain(gateway, () => Named("w/x"))).Should().Be(0, "the prefix's case does not make another");
    }

    [Fact]
    public async Task A_refusal_by_one_limit_consumes_nothing_from_the_others()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o => o.Admission.RateLimits.AddRange(
        [
            new RateLimitRule { Name = "per-second", Algorithm = RateLimitAlgorithm.TokenBucket, Limit = 2, Window = TimeSpan.FromSeconds(1) },
            new RateLimitRule { Name = "per-minute", Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 5, Window = TimeSpan.FromMinutes(1) },
        ]));
        await using var _ = gateway;

        // Hammer the per-second limit: every refused request must leave the per-minute window untouched.
        (await Drain(gateway, () => Req())).Should().Be(2);
        for (var i = 0; i < 20; i++)
        {
            var act = async () => await gateway.SubmitAsync(Req(), SubmitMode.FailFast, Ct);
            (await act.Should().ThrowAsync<RateLimitedException>()).Which.Limit.Should().Be("per-second");
        }

        clock.Advance(TimeSpan.FromSeconds(1));
        (await Drain(gateway, () => Req())).Should().Be(2);
        clock.Advance(TimeSpan.FromSeconds(1));
        (await Drain(gateway, () => Req())).Should().Be(1, "exactly 5 per minute were charged, not 5 minus the refusals");
    }

    [Fact]
    public async Task Token_bucket_allows_its_burst_then_refills_at_the_rate()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o => o.Admission.RateLimits.Add(
            new RateLimitRule { Algorithm = RateLimitAlgorithm.TokenBucket, Limit = 60, Window = TimeSpan.FromMinutes(1), Burst = 5 }));
        await using var _ = gateway;

        (await Drain(gateway, () => Req())).Should().Be(5, "the burst");
        clock.Advance(TimeSpan.FromMilliseconds(999));
        (await Drain(gateway, () => Req())).Should().Be(0);
        clock.Advance(TimeSpan.FromMilliseconds(1));
        (await Drain(gateway, () => Req())).Should().Be(1, "one a second");
        clock.Advance(TimeSpan.FromSeconds(10));
        (await Drain(gateway, () => Req())).Should().Be(5, "refill stops at the burst");
    }

    [Fact]
    public async Task Sliding_window_has_no_double_burst_at_the_window_edge()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o => o.Admission.RateLimits.Add(
            new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 10, Window = TimeSpan.FromMinutes(1) }));
        await using var _ = gateway;

        clock.Advance(TimeSpan.FromSeconds(59));
        (await Drain(gateway, () => Req())).Should().Be(10);
        clock.Advance(TimeSpan.FromSeconds(2)); // a fixed window would have reset here
        (await Drain(gateway, () => Req())).Should().Be(0, "the 10 from 2 s ago are still inside the last minute");

        var act = async () => await gateway.SubmitAsync(Req(), SubmitMode.FailFast, Ct);
        (await act.Should().ThrowAsync<RateLimitedException>()).Which.RetryAfter.Should().Be(TimeSpan.FromSeconds(58), "retry-after is exact");
        clock.Advance(TimeSpan.FromSeconds(58));
        (await Drain(gateway, () => Req())).Should().Be(10);
    }

    [Fact]
    public async Task Partitions_isolate_tenants()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o =>
        {
            o.Admission.PartitionBy = RateLimitPartition.Key;
            o.Admission.RateLimits.Add(new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 3, Window = TimeSpan.FromMinutes(1) });
        });
        await using var _ = gateway;

        (await Drain(gateway, () => Req("tenant-a"))).Should().Be(3);
        (await Drain(gateway, () => Req("tenant-b"))).Should().Be(3, "tenant a's flood does not limit tenant b");
        (await Drain(gateway, () => Req())).Should().Be(3, "callers without a key share their own partition");
    }

    [Fact]
    public async Task Partitions_can_combine_key_and_model()
    {
        var limiter = new AdmissionRateLimiter(Microsoft.Extensions.Options.Options.Create(new GatewayOptions
        {
            Admission = new AdmissionOptions { PartitionBy = RateLimitPartition.Key | RateLimitPartition.Model, RateLimits = [new RateLimitRule()] },
        }), TimeProvider.System);

        var a = Req("k");
        var b = Req("k");
        b.Model = "other";
        limiter.PartitionKey(a).Should().NotBe(limiter.PartitionKey(b));
        limiter.PartitionKey(a).Should().Be(limiter.PartitionKey(Req("k")));
    }

    [Fact]
    public void A_user_partition_is_the_end_user_by_any_of_its_names_cut_as_budgets_cut_it()
    {
        var limiter = new AdmissionRateLimiter(Microsoft.Extensions.Options.Options.Create(new GatewayOptions
        {
            Admission = new AdmissionOptions { PartitionBy = RateLimitPartition.User, RateLimits = [new RateLimitRule()] },
        }), TimeProvider.System);
        ChatCompletionRequest By(string? user, bool safetyIdentifier = false) => Req("k").NamingUser(user, safetyIdentifier);

        limiter.PartitionKey(By("alice", safetyIdentifier: true)).Should().Be(limiter.PartitionKey(By("alice")), "OpenAI's newer name for the same user");
        limiter.PartitionKey(By("bob")).Should().NotBe(limiter.PartitionKey(By("alice")));
        var name = new string('u', 256);
        limiter.PartitionKey(By(name + "-one-tail")).Should().Be(limiter.PartitionKey(By(name + "-another-tail")), "a partition per user, not per megabyte of name")
            .And.HaveLength(limiter.PartitionKey(By(name)).Length);
        limiter.PartitionKey(By(null)).Should().Be(limiter.PartitionKey(By(string.Empty)), "none named: one partition");
    }

    [Fact]
    public async Task Token_limits_charge_the_estimate_and_correct_to_actual_usage()
    {
        var clock = TestGateway.Clock();
        var (gateway, provider) = await Start(clock, o => o.Admission.RateLimits.Add(
            new RateLimitRule { Name = "tpm", Unit = RateLimitUnit.Tokens, Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1000, Window = TimeSpan.FromMinutes(1) }));
        await using var _ = gateway;
        provider.OnComplete = (r, _) => ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok")); // usage: 3 + 1 = 4 tokens
        var limiter = gateway.Services.GetRequiredService<AdmissionRateLimiter>();

        // Estimated at admission: prompt tokens + max_tokens (400) — two fit in 1000, a third would not…
        var estimate = TokenCounter.CountPrompt(Req(), "m") + 400;
        estimate.Should().BeGreaterThan(400);
        await gateway.SubmitAsync(Req(maxTokens: 400), SubmitMode.FailFast, Ct);
        await gateway.SubmitAsync(Req(maxTokens: 400), SubmitMode.FailFast, Ct);

        // …but each answer used 4 tokens, so the charges were corrected and there is room for more.
        limiter.GetStatus(Req()).Single().Remaining.Should().Be(1000 - 8);
        await gateway.SubmitAsync(Req(maxTokens: 400), SubmitMode.FailFast, Ct);
        limiter.GetStatus(Req()).Single().Remaining.Should().Be(1000 - 12);
    }

    /// <summary>
    /// A prompt asked for by a name no tokenizer knows — an alias, <c>m</c> — over a gpt deployment is counted with that
    /// deployment's tokenizer: the token limit charges what the upstream will count, not ~4 characters a token (for
    /// this prompt, one long word repeated, at least half as much again).
    /// </summary>
    [Fact]
    public async Task A_prompt_asked_by_an_alias_is_counted_with_its_deployments_tokenizer()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 4, queueCapacity: 16)
            .AddModel("m", m => m.Deploy("p", "gpt-4o-mini"))
            .UseTimeProvider(TestGateway.Clock())
            .Configure(o =>
            {
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(10);
                o.Admission.RateLimits.Add(new RateLimitRule { Name = "tpm", Unit = RateLimitUnit.Tokens, Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 100_000, Window = TimeSpan.FromMinutes(1) });
            })
            .StartAsync(Ct);
        var called = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        provider.OnComplete = async (r, _) =>
        {
            called.TrySetResult();
            await release.Task;
            return FakeProvider.Answer(r.Model, "ok");
        };
        var limiter = gateway.Services.GetRequiredService<AdmissionRateLimiter>();
        var text = string.Join(' ', Enumerable.Repeat("tokenization", 200));
        var counted = TokenCounter.CountPrompt(Req(text: text), "gpt-4o-mini");
        counted.Should().BeLessThan(TokenCounter.ApproximatePrompt(Req(text: text)) * 2 / 3, "the test tells the two counts apart");

        var call = gateway.SubmitAsync(Req(maxTokens: 100, text: text), SubmitMode.FailFast, Ct);
        await called.Task.WaitAsync(Ct); // admitted: charged

        limiter.GetStatus(Req()).Single().Remaining.Should().Be(100_000 - (counted + 100));
        release.SetResult();
        await call;
    }

    /// <summary>
    /// A request for several choices may write <c>max_tokens</c> for each: the estimate holds back every one (as
    /// OpenAI's own limits count them) — it held back one, so <c>n</c> 8 went through a limit it could overrun eightfold.
    /// </summary>
    [Fact]
    public async Task Token_limits_hold_back_the_completion_budget_of_every_choice()
    {
        var clock = TestGateway.Clock();
        var (gateway, provider) = await Start(clock, o => o.Admission.RateLimits.Add(
            new RateLimitRule { Name = "tpm", Unit = RateLimitUnit.Tokens, Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1000, Window = TimeSpan.FromMinutes(1) }));
        await using var _ = gateway;
        var calls = 0;
        provider.OnComplete = (r, _) =>
        {
            Interlocked.Increment(ref calls);
            return ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok"));
        };

        await gateway.SubmitAsync(Req(maxTokens: 200), SubmitMode.FailFast, Ct); // one choice: ~210 tokens fit
        var several = Req(maxTokens: 200);
        several.N = 8; // 8 × 200: more than the limit holds
        var act = async () => await gateway.SubmitAsync(several, SubmitMode.FailFast, Ct);
        (await act.Should().ThrowAsync<RateLimitedException>()).Which.Limit.Should().Contain("tpm");
        calls.Should().Be(1, "the request that could not fit never reached the provider");
    }

    [Fact]
    public async Task A_failed_request_gives_its_tokens_back()
    {
        var clock = TestGateway.Clock();
        var (gateway, provider) = await Start(clock, o =>
        {
            o.Pipeline.MaxAttempts = 1;
            o.Admission.RateLimits.Add(new RateLimitRule { Unit = RateLimitUnit.Tokens, Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1000, Window = TimeSpan.FromMinutes(1) });
        });
        await using var _ = gateway;
        provider.OnComplete = (_, _) => throw FakeProvider.Fail503();
        var limiter = gateway.Services.GetRequiredService<AdmissionRateLimiter>();

        var act = async () => await gateway.SubmitAsync(Req(maxTokens: 500), SubmitMode.FailFast, Ct);
        await act.Should().ThrowAsync<AllProvidersFailedException>();

        limiter.GetStatus(Req()).Single().Remaining.Should().Be(1000);
    }

    [Fact]
    public async Task Waiting_callers_are_admitted_in_arrival_order_as_permits_refill()
    {
        var clock = TestGateway.Clock();
        var order = new List<string>();
        var (gateway, provider) = await Start(clock, o => o.Admission.RateLimits.Add(
            new RateLimitRule { Algorithm = RateLimitAlgorithm.TokenBucket, Limit = 1, Window = TimeSpan.FromSeconds(1), Burst = 1 }));
        await using var _ = gateway;
        provider.OnComplete = (r, _) =>
        {
            lock (order)
            {
                order.Add(r.Request.Messages[0].Content!.GetText());
            }

            return ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok"));
        };

        await gateway.SubmitAsync(Req(text: "first"), Ct);
        var waiting = new List<Task>();
        for (var i = 0; i < 5; i++)
        {
            waiting.Add(gateway.SubmitAsync(Req(text: "w" + i), Ct).AsTask());
            var expected = i + 1;
            await Wait.Until(() => gateway.Metrics.GetSnapshot().RateLimitWaits == expected, "the caller is queued");
        }

        for (var i = 0; i < 5; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            var done = i + 1;
            await Wait.Until(() => waiting.Count(t => t.IsCompleted) == done, "one more is admitted");
        }

        order.Should().Equal("first", "w0", "w1", "w2", "w3", "w4");
    }

    [Fact]
    public async Task A_waiting_caller_is_refused_at_once_when_the_wait_would_pass_its_maximum()
    {
        var clock = TestGateway.Clock();
        var (gateway, _) = await Start(clock, o =>
        {
            o.Admission.MaxWait = TimeSpan.FromSeconds(5);
            o.Admission.RateLimits.Add(new RateLimitRule { Algorithm = RateLimitAlgorithm.SlidingWindow, Limit = 1, Window = TimeSpan.FromMinutes(1) });
        });
        await using var _ = gateway;
        await gateway.SubmitAsync(Req(), Ct);

        // The next permit is a minute away, more than the 5 s a caller may wait: no point queueing it.
        var act = async () => await gateway.SubmitAsync(Req(), Ct);
        (await act.Should().ThrowAsync<RateLimitedException>()).Which.RetryAfter.Should().Be(TimeSpan.FromMinutes(1));
        gateway.Metrics.GetSnapshot().RateLimitWaits.Should().Be(0);
    }
}
