using System.Runtime.CompilerServices;
using CsCheck;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Admission;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Metrics;

/// <summary>
/// The accounting invariants of docs/metrics.md: what callers are told they cost, what the metrics total, what the
/// budgets were charged and what the token limits were charged all agree, whatever mix of whole, streamed, cached,
/// coalesced, failed and cancelled requests produced them.
/// </summary>
public sealed class AccountingTests
{
    // $1 per prompt token and $2 per completion token: every upstream answer (3 + 1 tokens) costs exactly $5.
    private const decimal CallCost = 5m;
    internal const long TokenLimit = 1_000_000_000;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private enum Kind
    {
        Whole,
        Stream,
        CancelledBefore,
        CancelledWhileWaiting,
    }

    private sealed record Op(Kind Kind, string Text);

    private sealed record Outcome(Op Op, GatewayResponseInfo? Info, Exception? Error);

    /// <summary>
    /// What the provider saw given up on: calls cancelled while they waited for their answer (<c>InFlight</c>), and calls
    /// whose token was cancelled before they began (<c>AtStart</c>). The first are billed their prompt, always: the
    /// gateway had sent them before their caller gave up. The second are the race of a cancellation with the worker's
    /// send — the gateway decides from whether it had marked the attempt sent when the caller gave up, and a real
    /// upstream call begun with a cancelled token sends nothing — so each may or may not be billed (a full run's
    /// failure: one such call, not billed, counted as consumed by this test; forced with a sleep in that window).
    /// </summary>
    private sealed record GivenUp(System.Collections.Concurrent.ConcurrentBag<ChatCompletionRequest> InFlight, System.Collections.Concurrent.ConcurrentBag<ChatCompletionRequest> AtStart);

    private static async Task<(Gateway Gateway, FakeProvider Provider)> StartAsync(Func<TaskCompletionSource> gate, Action<GatewayOptions>? tweak = null, GivenUp? givenUp = null)
    {
        var provider = new FakeProvider("p")
        {
            OnComplete = async (r, ct) =>
            {
                var cancelledAtStart = ct.IsCancellationRequested;
                try
                {
                    await gate().Task.WaitAsync(ct);
                }
                catch (OperationCanceledException)
                {
                    (cancelledAtStart ? givenUp?.AtStart : givenUp?.InFlight)?.Add(r.Request); // billed its prompt (docs/metrics.md)
                    throw;
                }

                var text = r.Request.Messages[0].Content!.GetText();
                return text == "fail" ? throw new ProviderException(AttemptOutcome.NonRetryableError, "bad request", 400) : FakeProvider.Answer(r.Model, text);
            },
            OnStream = (r, ct) => GatedStream(gate(), r, ct),
        };

        var gateway = await Accounted(provider).AddCache(TimeSpan.FromHours(1)).Configure(o => tweak?.Invoke(o)).StartAsync(Ct);
        return (gateway, provider);
    }

    /// <summary>
    /// A gateway whose every charge is visible: $1 per prompt token and $2 per completion token for model "m", one budget,
    /// a token limit of <see cref="TokenLimit"/>, and frozen time — the token bucket never refills during a case, so what
    /// is left of it shows what was charged.
    /// </summary>
    internal static GatewayBuilder Accounted(FakeProvider provider) => TestGateway.With(provider)
        .UseTimeProvider(TestGateway.Clock())
        .AddBudget(1_000_000m)
        .Configure(o =>
        {
            o.Pricing["m"] = new ModelPrice { InputPerMillion = 1_000_000m, OutputPerMillion = 2_000_000m };
            o.Admission.RateLimits.Add(new RateLimitRule { Unit = RateLimitUnit.Tokens, Limit = TokenLimit, Window = TimeSpan.FromHours(1) });
            o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
        });

    private static async IAsyncEnumerable<ChatCompletionChunk> GatedStream(TaskCompletionSource gate, ProviderRequest r, [EnumeratorCancellation] CancellationToken ct)
    {
        await gate.Task.WaitAsync(ct);
        var text = r.Request.Messages[0].Content!.GetText();
        if (text == "fail")
        {
            throw new ProviderException(AttemptOutcome.NonRetryableError, "bad request", 400);
        }

        yield return FakeProvider.Chunk(r.Model, text);
        yield return FakeProvider.Chunk(r.Model, string.Empty, FinishReasons.Stop);
        yield return new ChatCompletionChunk { Id = "fake", Model = r.Model, Choices = [], Usage = TokenUsage.Of(3, 1) };
    }

    private static async Task<Outcome> RunAsync(Gateway gateway, Op op, CancellationTokenSource cts)
    {
        try
        {
            var request = TestGateway.Request(text: op.Text);
            if (op.Kind == Kind.Stream)
            {
                ChatCompletionChunk? last = null;
                await foreach (var chunk in gateway.StreamAsync(request, cts.Token))
                {
                    last = chunk;
                }

                last!.Gateway.Should().NotBeNull("the last chunk of a stream carries the request's info and cost");
                last.Usage.Should().NotBeNull("and its usage");
                return new Outcome(op, last.Gateway, null);
            }

            return new Outcome(op, (await gateway.SubmitAsync(request, cts.Token)).Gateway, null);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            return new Outcome(op, null, ex);
        }
    }

    [Fact]
    public async Task Callers_metrics_budgets_and_token_limits_agree_on_any_mix_of_requests()
    {
        var op = Gen.Select(
            Gen.Frequency((5, Gen.Const(Kind.Whole)), (3, Gen.Const(Kind.Stream)), (1, Gen.Const(Kind.CancelledBefore)), (1, Gen.Const(Kind.CancelledWhileWaiting))),
            Gen.OneOf("a", "b", "c", "fail"),
            (kind, text) => new Op(kind, text));
        var cases = op.Array[1, 12].Array[1, 3];
        var pcg = new PCG(5, 20261202);
        for (var run = 0; run < 25; run++)
        {
            var waves = cases.Generate(pcg, null, out _);
            await CheckAsync(waves);
        }
    }

    private static async Task CheckAsync(Op[][] waves)
    {
        TaskCompletionSource gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        var givenUp = new GivenUp([], []);
        var (gateway, _) = await StartAsync(() => gate, givenUp: givenUp);
        await using var _ = gateway;
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        var outcomes = new List<Outcome>();
        foreach (var wave in waves)
        {
            gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var lookups = gateway.Metrics.GetSnapshot().CacheLookups;
            var sources = wave.Select(o => new CancellationTokenSource()).ToArray();
            for (var i = 0; i < wave.Length; i++)
            {
                if (wave[i].Kind == Kind.CancelledBefore)
                {
                    await sources[i].CancelAsync();
                }
            }

            var running = wave.Select((o, i) => RunAsync(gateway, o, sources[i])).ToArray();

            // Every request that entered has been looked up in the cache (a hit answered, a miss led or joined a call)
            // before any upstream call answers: which ones coalesce is then decided, not raced.
            var entering = wave.Count(o => o.Kind != Kind.CancelledBefore);
            await Wait.Until(() => gateway.Metrics.GetSnapshot().CacheLookups == lookups + entering, "every request of the wave passed the cache");
            for (var i = 0; i < wave.Length; i++)
            {
                if (wave[i].Kind == Kind.CancelledWhileWaiting)
                {
                    await sources[i].CancelAsync();
                }
            }

            gate.SetResult();
            outcomes.AddRange(await Task.WhenAll(running));
        }

        var all = waves.SelectMany(w => w).ToArray();
        await Wait.Until(() => pipeline.Outstanding == 0, "every call ended, a cancelled one's too");
        var snapshot = gateway.Metrics.GetSnapshot();

        // A whole call its caller gave up on in flight is billed its prompt, estimated ($1 a token), to no caller's answer.
        static long Prompts(IEnumerable<ChatCompletionRequest> calls) => calls.Sum(r => (long)TokenCounter.EstimateUsage(r, null, 0, "m", countedPrompt: null).PromptTokens);
        var inFlightTokens = Prompts(givenUp.InFlight);
        var atStartTokens = Prompts(givenUp.AtStart);
        var what = string.Join(" | ", waves.Select(w => string.Join(", ", w.Select(o => $"{o.Kind}:{o.Text}"))));

        outcomes.Should().HaveCount(all.Length, what);
        foreach (var o in outcomes)
        {
            if (o.Op.Kind is Kind.CancelledBefore or Kind.CancelledWhileWaiting && o.Info is null)
            {
                o.Error.Should().BeOfType<RequestCancelledException>("cancellation is typed the same way whenever it happens: " + what);
            }
            else if (o.Info is { Billed: true } billed)
            {
                billed.Cost.Should().Be(CallCost, what);
                billed.CostSaved.Should().Be(0);
            }
            else if (o.Info is { } served)
            {
                served.Cost.Should().Be(0, "a hit or a coalesced request is charged nothing: " + what);
                served.CostSaved.Should().Be(CallCost, "it saved the call its answer came from");
            }
            else
            {
                o.Op.Text.Should().Be("fail", what);
            }
        }

        var billedCount = outcomes.Count(o => o.Info is { Billed: true });
        var charged = outcomes.Sum(o => o.Info?.Cost ?? 0);
        // Every figure's message names the case and what the callers and the provider saw: a failure in a full run is
        // then read from its message (two were seen without one).
        var seen = $"{what} — billed {billedCount}, charged {charged}, calls given up on in flight {givenUp.InFlight.Count} ({inFlightTokens} tokens), "
            + $"begun already given up on {givenUp.AtStart.Count} ({atStartTokens} tokens), "
            + $"outcomes: {string.Join(", ", outcomes.Select(o => $"{o.Op.Kind}:{o.Op.Text}={(o.Info is { } i ? $"{(i.Billed ? "billed" : i.Cached ? "hit" : i.Coalesced ? "coalesced" : "served")} {i.Cost}" : o.Error?.GetType().Name)}"))}";

        // What the gateway billed beyond its callers' answers: every call given up on in flight, and any of those begun
        // already given up on (see GivenUp) — then every other figure agrees with it exactly.
        var consumedTokens = (long)(snapshot.TotalCost - charged);
        consumedTokens.Should().BeInRange(inFlightTokens, inFlightTokens + atStartTokens, "total_cost is what callers were told they cost, and what calls given up on consumed: " + seen);
        snapshot.TotalCost.Should().Be((billedCount * CallCost) + consumedTokens, seen);
        snapshot.Providers.Values.Sum(p => p.TotalCost).Should().Be(snapshot.TotalCost, seen);
        snapshot.Models.Values.Sum(m => m.TotalCost).Should().Be(snapshot.TotalCost, seen);
        snapshot.Keys.Values.Sum(k => k.TotalCost).Should().Be(snapshot.TotalCost, seen);
        snapshot.CostSaved.Should().Be(outcomes.Sum(o => o.Info?.CostSaved ?? 0), seen);
        snapshot.PromptTokens.Should().Be((3L * billedCount) + consumedTokens, "tokens are the upstream's usage (and the estimate of what was consumed): " + seen);
        snapshot.CompletionTokens.Should().Be(billedCount, seen);

        var (spent, reserved) = gateway.Services.GetRequiredService<PipelineGateway.Cost.BudgetTracker>().Balances().Values.Single();
        spent.Should().Be(snapshot.TotalCost, "budgets and metrics agree to the cent: " + seen);
        reserved.Should().Be(0, seen);

        var tokens = gateway.Services.GetRequiredService<PipelineGateway.Admission.AdmissionRateLimiter>().GetStatus(TestGateway.Request()).Single();
        (TokenLimit - tokens.Remaining).Should().Be((4L * billedCount) + consumedTokens, "the token limit is charged the upstream usage, nothing for hits and followers: " + seen);

        snapshot.TotalRequests.Should().Be(all.Length, seen);
        snapshot.CancelledRequests.Should().Be(outcomes.Count(o => o.Error is RequestCancelledException), "every cancellation is counted: " + seen);
        snapshot.CacheHitRate.Should().Be(Math.Round((double)snapshot.CachedRequests / snapshot.TotalRequests, 4), seen);
        snapshot.CachedRequests.Should().Be(outcomes.Count(o => o.Info is { Cached: true }), seen);
    }

    [Fact]
    public async Task A_streamed_cache_hit_costs_nothing_and_is_not_charged_to_the_token_limit()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        gate.SetResult();
        var (gateway, provider) = await StartAsync(() => gate);
        await using var _ = gateway;

        var first = await RunAsync(gateway, new Op(Kind.Stream, "a"), new CancellationTokenSource());
        var second = await RunAsync(gateway, new Op(Kind.Stream, "a"), new CancellationTokenSource());

        provider.Calls.Should().Be(1);
        first.Info!.Cost.Should().Be(CallCost);
        second.Info!.Cached.Should().BeTrue();
        second.Info.Cost.Should().Be(0);
        gateway.Metrics.GetSnapshot().TotalCost.Should().Be(CallCost, "the replay is not billed again");
        var tokens = gateway.Services.GetRequiredService<PipelineGateway.Admission.AdmissionRateLimiter>().GetStatus(TestGateway.Request()).Single();
        (TokenLimit - tokens.Remaining).Should().Be(4);
    }

    [Fact]
    public async Task Five_identical_requests_cost_one_call_and_each_follower_gets_its_own_copy()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var (gateway, provider) = await StartAsync(() => gate);
        await using var _ = gateway;

        var all = Enumerable.Range(0, 5).Select(_ => gateway.SubmitAsync(TestGateway.Request(text: "same"), Ct).AsTask()).ToArray();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CoalescedRequests == 4, "four join the first");
        gate.SetResult();
        var answers = await Task.WhenAll(all);

        provider.Calls.Should().Be(1);
        answers.Sum(a => a.Gateway!.Cost).Should().Be(CallCost);
        answers.Count(a => a.Gateway!.Coalesced).Should().Be(4);
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.TotalCost.Should().Be(CallCost, "one upstream call, billed once");
        snapshot.CostSaved.Should().Be(4 * CallCost);
        answers.Select(a => a.Choices).Distinct().Should().HaveCount(5, "no two callers share an object");
    }

    [Fact]
    public async Task A_caller_that_changes_its_answer_does_not_change_what_later_hits_get()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        gate.SetResult();
        var (gateway, _) = await StartAsync(() => gate);
        await using var _ = gateway;

        var mine = await gateway.SubmitAsync(TestGateway.Request(text: "a"), Ct);
        mine.Choices[0].Message!.Content = new MessageContent("scribbled");
        var hit = await gateway.SubmitAsync(TestGateway.Request(text: "a"), Ct);
        hit.Choices.Clear();
        var again = await gateway.SubmitAsync(TestGateway.Request(text: "a"), Ct);

        hit.Gateway!.Cached.Should().BeTrue();
        again.Content.Should().Be("a", "the cache's copy is its own");
    }

    [Fact]
    public async Task A_token_cancelled_before_submitting_is_a_typed_cancellation_and_counted()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        gate.SetResult();
        var (gateway, provider) = await StartAsync(() => gate);
        await using var _ = gateway;
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        var whole = async () => await gateway.SubmitAsync(TestGateway.Request(), cancelled.Token);
        var stream = async () => await gateway.StreamAsync(TestGateway.Request(), cancelled.Token).ToListAsync(Ct);

        await whole.Should().ThrowAsync<RequestCancelledException>();
        await stream.Should().ThrowAsync<RequestCancelledException>();
        provider.Calls.Should().Be(0);
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.CancelledRequests.Should().Be(2);
        snapshot.TotalRequests.Should().Be(2);
    }

    [Fact]
    public async Task CostOptimized_ranks_by_the_price_it_bills_with_and_unpriced_deployments_last()
    {
        var expensive = new FakeProvider("expensive");
        var cheap = new FakeProvider("cheap");
        var unknown = new FakeProvider("unknown");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(unknown).AddProvider(expensive).AddProvider(cheap)
            .AddModel("m", m => m.Strategy(RoutingStrategyNames.CostOptimized).Deploy("unknown").Deploy("expensive").Deploy("cheap"))
            .Configure(o =>
            {
                o.Models[0].Deployments[0].Model = "in-house-llm";  // no price anywhere
                o.Models[0].Deployments[1].Model = "gpt-4-turbo";   // the shipped defaults: $10 / $30
                o.Models[0].Deployments[2].Model = "team-model";    // priced only in Gateway:Pricing
                o.Pricing["team-model"] = new ModelPrice { InputPerMillion = 0.10m, OutputPerMillion = 0.40m };
            })
            .StartAsync(Ct);

        var answer = await gateway.SubmitAsync(TestGateway.Request(), Ct);

        answer.Gateway!.Provider.Should().Be("cheap");
        answer.Gateway.Cost.Should().Be(((3 * 0.10m) + (1 * 0.40m)) / 1_000_000m, "billed with the price it was ranked by");
        expensive.Calls.Should().Be(0);
        unknown.Calls.Should().Be(0, "a deployment priced nowhere ranks last");
    }
}
