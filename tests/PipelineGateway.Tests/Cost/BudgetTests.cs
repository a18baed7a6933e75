using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Cost;

public sealed class BudgetTests
{
    /// <summary>
    /// A spent budget's 429 tells the SDKs not to retry (<c>x-should-retry: false</c>, which the OpenAI and Anthropic SDKs
    /// obey): it stays spent until its period ends. So does a 502 whose every deployment refused its key or model; a rate
    /// limit's 429 and an upstream's 5xx leave the SDKs' own retry be.
    /// </summary>
    [Fact]
    public void A_spent_budget_and_refused_deployments_say_a_retry_cannot_help_others_do_not()
    {
        OpenAIErrorMapping.RetryCannotHelp(new BudgetExceededException("daily", 5m, 5m)).Should().BeTrue();
        var refused = new PipelineGateway.GatewayAttempt("p", "m", AttemptOutcome.DeploymentUnavailable, TimeSpan.Zero, 401);
        OpenAIErrorMapping.RetryCannotHelp(new AllProvidersFailedException("m", [refused])).Should().BeTrue();
        var failed = new PipelineGateway.GatewayAttempt("p", "m", AttemptOutcome.RetryableError, TimeSpan.Zero, 500);
        OpenAIErrorMapping.RetryCannotHelp(new AllProvidersFailedException("m", [refused, failed])).Should().BeFalse();
        OpenAIErrorMapping.RetryCannotHelp(new RateLimitedException("key", TimeSpan.FromSeconds(1))).Should().BeFalse();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // $1 a token in and out, so costs are easy to read: each answer here costs 3 + 1 = $4; the estimate for a
    // request with max_tokens 1 is its approximate prompt ((6 + 16) / 4 = 5 tokens) + 1 = $6.
    private static GatewayBuilder Priced(FakeProvider provider) => new GatewayBuilder()
        .AddProvider(provider, workers: 16, queueCapacity: 1000)
        .Configure(o =>
        {
            o.Pipeline.MaxInFlight = 2048;
            o.Pipeline.AdmissionQueueCapacity = 2048;
            o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = provider.Name, InputPricePerMillion = 1_000_000m, OutputPricePerMillion = 1_000_000m }] });
        });

    private static ChatCompletionRequest Req(string? key = null)
    {
        var r = TestGateway.Request();
        r.MaxTokens = 1;
        r.Gateway = key is null ? null : new GatewayRequestOptions { RateLimitKey = key };
        return r;
    }

    private static ChatCompletionRequest ByUser(string? user, string? key = null, bool safetyIdentifier = false) => Req(key).NamingUser(user, safetyIdentifier);

    /// <summary>
    /// Per end-user budgets (LiteLLM's customer budgets): each user a request names (<c>user</c>, or
    /// <c>safety_identifier</c>) has an account of its own; a request that names none is not under them; a budget for
    /// one named user, or for one key's users, only for those.
    /// </summary>
    [Fact]
    public async Task Per_user_budgets_limit_each_end_user_and_not_requests_that_name_none()
    {
        await using var gateway = await Priced(new FakeProvider("p"))
            .Configure(o =>
            {
                o.Budgets.Add(new BudgetOptions { Name = "per user", Scope = BudgetScope.User, Period = BudgetPeriod.Day, LimitUsd = 10m });
                o.Budgets.Add(new BudgetOptions { Name = "carol", Scope = BudgetScope.User, User = "carol", Period = BudgetPeriod.Day, LimitUsd = 7m });
                o.Budgets.Add(new BudgetOptions { Name = "team-b users", Scope = BudgetScope.User, Key = "team-b", Period = BudgetPeriod.Day, LimitUsd = 5m });
            })
            .StartAsync(Ct);

        await gateway.SubmitAsync(ByUser("alice"), Ct); // 0 + 6 fits; spent 4
        await gateway.SubmitAsync(ByUser("alice", safetyIdentifier: true), Ct); // the same user by its newer name; spent 8
        var act = async () => await gateway.SubmitAsync(ByUser("alice"), Ct); // 8 + 6 > 10
        (await act.Should().ThrowAsync<BudgetExceededException>()).Which.Budget.Should().Be("per user");

        await gateway.SubmitAsync(ByUser("bob"), Ct); // another user: its own account
        for (var i = 0; i < 4; i++)
        {
            await gateway.SubmitAsync(ByUser(null), Ct); // names no user: no per-user budget applies
            await gateway.SubmitAsync(ByUser(string.Empty), Ct);
        }

        await gateway.SubmitAsync(ByUser("carol"), Ct); // 0 + 6 fits carol's 7; spent 4
        var carol = async () => await gateway.SubmitAsync(ByUser("carol"), Ct); // 4 + 6 > 7, though the per-user 10 has room
        (await carol.Should().ThrowAsync<BudgetExceededException>()).Which.Budget.Should().Be("carol");

        var teamB = async () => await gateway.SubmitAsync(ByUser("dave", key: "team-b"), Ct); // 0 + 6 > team-b's 5 a user
        (await teamB.Should().ThrowAsync<BudgetExceededException>()).Which.Budget.Should().Be("team-b users");
        await gateway.SubmitAsync(ByUser("dave", key: "team-a"), Ct); // another key's users are not under it

        var balances = gateway.Services.GetRequiredService<BudgetTracker>().Balances();
        balances.Where(b => b.Value.Spent > 0).ToDictionary(b => b.Key, b => b.Value.Spent).Should().BeEquivalentTo(new Dictionary<string, decimal>
        {
            ["per user:alice"] = 8m, ["per user:bob"] = 4m, ["per user:carol"] = 4m, ["carol:carol"] = 4m, ["per user:dave"] = 4m,
        });
    }

    [Fact]
    public async Task Where_a_key_and_user_stand_is_read_per_budget_and_a_new_period_starts_from_nothing()
    {
        var clock = TestGateway.Clock();
        clock.SetUtcNow(new DateTimeOffset(2026, 12, 6, 23, 0, 0, TimeSpan.Zero));
        await using var gateway = await Priced(new FakeProvider("p"))
            .UseTimeProvider(clock)
            .AddUserBudget(10m, BudgetPeriod.Day, name: "per user")
            .AddBudget(100m, BudgetPeriod.Month, BudgetScope.Key, name: "per key")
            .StartAsync(Ct);
        var budgets = gateway.Services.GetRequiredService<BudgetTracker>();
        var standings = gateway.Services.GetRequiredService<IGatewayBudgets>(); // the public face of the same
        await gateway.SubmitAsync(ByUser("alice", key: "a"), Ct); // $4 in both

        var standing = await standings.GetStandingAsync("a", "alice", Ct);
        standing.Select(s => (s.Budget.Name, s.Spent, s.Reserved, s.Remaining, s.PeriodEnd)).Should().Equal(
            ("per user", 4m, 0m, 6m, new DateTimeOffset(2026, 12, 7, 0, 0, 0, TimeSpan.Zero)),
            ("per key", 4m, 0m, 96m, new DateTimeOffset(2027, 1, 1, 0, 0, 0, TimeSpan.Zero)));
        (await standings.GetStandingAsync("a", null, Ct)).Select(s => s.Budget.Name).Should().Equal(["per key"], "a request naming no user is under no per-user budget");
        var accounts = budgets.AccountCount;
        (await budgets.StandingAsync("b", "bob", Ct))!.Select(s => s.Spent).Should().Equal(0m, 0m);
        budgets.AccountCount.Should().Be(accounts, "asking makes no account");

        clock.Advance(TimeSpan.FromHours(2)); // a new day, the same month
        (await budgets.StandingAsync("a", "alice", Ct))!.Select(s => (s.Spent, s.PeriodEnd.Day)).Should().Equal((0m, 8), (4m, 1));
    }

    /// <summary>
    /// A shared budget's settlement is sent after the answer: a caller asking again at once found its last estimate
    /// still reserved and was refused though its request fit. A refusal while this instance's settlements are on their
    /// way waits for them and asks once more; one with none on their way is not asked again. (The store here holds its
    /// settlements until the test lets them land, so the moment is certain; <see cref="Redis.RedisBudgetTests"/> has
    /// the real Redis.)
    /// </summary>
    [Fact]
    public async Task A_shared_budget_refusal_waits_for_this_instances_settlements_on_their_way_and_asks_once_more()
    {
        var store = new HeldSettlementsStore();
        var builder = Priced(new FakeProvider("p")).AddBudget(10m, BudgetPeriod.Day);
        builder.Services.AddSingleton<IDistributedBudgetStore>(store);
        await using var gateway = await builder.StartAsync(Ct);

        await gateway.SubmitAsync(Req(), Ct); // reserved 6; its settlement (to spent 4) held
        var second = gateway.SubmitAsync(Req(), Ct).AsTask(); // 0 + 6 reserved + 6 > 10: refused while the first settles
        await Wait.Until(() => store.Reservations == 2, "the second request was refused once");
        second.IsCompleted.Should().BeFalse("it waits for the settlement on its way");
        store.Land();
        (await second).Content.Should().Be("ok", "4 spent + 6 fits, once the first settled");
        store.Reservations.Should().Be(3);

        var third = async () => await gateway.SubmitAsync(Req(), Ct); // 8 spent + 6 > 10, nothing on its way
        await third.Should().ThrowAsync<BudgetExceededException>();
        store.Reservations.Should().Be(4, "a refusal with no settlement on its way is not asked again");
    }

    private sealed class HeldSettlementsStore : IDistributedBudgetStore
    {
        private readonly TaskCompletionSource _land = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private long _spent;
        private long _reserved;
        private int _reservations;

        public int Reservations => Volatile.Read(ref _reservations);

        public bool FailOpen => false;

        public void Land() => _land.TrySetResult();

        public ValueTask<BudgetReservationResult> TryReserveAsync(IReadOnlyList<BudgetAccountRef> accounts, long estimateNanoUsd, CancellationToken cancellationToken)
        {
            lock (this)
            {
                Interlocked.Increment(ref _reservations);
                if (_spent + _reserved + estimateNanoUsd > accounts[0].LimitNanoUsd)
                {
                    return ValueTask.FromResult(new BudgetReservationResult { RefusedBy = 0, SpentAndReservedNanoUsd = _spent + _reserved });
                }

                _reserved += estimateNanoUsd;
                return ValueTask.FromResult(new BudgetReservationResult { Reserved = true });
            }
        }

        public async Task SettleAsync(IReadOnlyList<BudgetAccountRef> accounts, long estimateNanoUsd, long actualNanoUsd)
        {
            await _land.Task;
            lock (this)
            {
                _reserved -= estimateNanoUsd;
                _spent += actualNanoUsd;
            }
        }

        public ValueTask<(long SpentNanoUsd, long ReservedNanoUsd)?> ReadAsync(BudgetAccountRef account, CancellationToken cancellationToken)
        {
            lock (this)
            {
                return ValueTask.FromResult<(long, long)?>((_spent, _reserved));
            }
        }
    }

    [Fact]
    public void A_budget_without_a_name_is_called_by_its_scope_period_and_limit()
    {
        new BudgetOptions { LimitUsd = 5000m }.DisplayName.Should().Be("global monthly $5000");
        new BudgetOptions { Scope = BudgetScope.Key, Period = BudgetPeriod.Day, LimitUsd = 20m }.DisplayName.Should().Be("per-key daily $20");
        new BudgetOptions { Scope = BudgetScope.Key, Key = "team-a", LimitUsd = 1m }.DisplayName.Should().Be("team-a monthly $1");
        new BudgetOptions { Scope = BudgetScope.User, Period = BudgetPeriod.Day, LimitUsd = 5m }.DisplayName.Should().Be("per-user daily $5");
        new BudgetOptions { Scope = BudgetScope.User, Key = "team-b", LimitUsd = 5m }.DisplayName.Should().Be("team-b per-user monthly $5");
        new BudgetOptions { Scope = BudgetScope.User, User = "ceo", LimitUsd = 500m }.DisplayName.Should().Be("user monthly $500");
    }

    /// <summary>
    /// The users are the caller's to name: a budget per user keeps at most <see cref="BudgetOptions.MaxUsers"/> accounts in
    /// a period (one per request would otherwise grow without bound); a new user past it is refused saying so, a user it
    /// keeps is served, and the next period has room again.
    /// </summary>
    [Fact]
    public async Task A_per_user_budget_keeps_at_most_its_MaxUsers_accounts_in_a_period()
    {
        var clock = TestGateway.Clock();
        await using var gateway = await Priced(new FakeProvider("p"))
            .UseTimeProvider(clock)
            .Configure(o => o.Budgets.Add(new BudgetOptions { Name = "per user", Scope = BudgetScope.User, Period = BudgetPeriod.Day, LimitUsd = 100m, MaxUsers = 2 }))
            .StartAsync(Ct);
        var budgets = gateway.Services.GetRequiredService<BudgetTracker>();

        await gateway.SubmitAsync(ByUser("u1"), Ct);
        await gateway.SubmitAsync(ByUser("u2"), Ct);
        var third = async () => await gateway.SubmitAsync(ByUser("u3"), Ct);
        (await third.Should().ThrowAsync<BudgetExceededException>()).Which.Message.Should().Contain("at most 2 users");
        await gateway.SubmitAsync(ByUser("u1"), Ct);
        await gateway.SubmitAsync(ByUser(null), Ct);
        budgets.AccountCount.Should().Be(2);

        clock.Advance(TimeSpan.FromDays(1));
        await gateway.SubmitAsync(ByUser("u1"), Ct); // notices the new day: the sweep forgets yesterday's accounts
        // The sweep removes an account and then gives its place back: wait for the places, not only the accounts (waiting
        // for the accounts alone let u3 come between the two, refused — seen once in a fresh clone's run).
        await Wait.Until(() => budgets.AccountCount == 1 && budgets.UsersKept(0) == 1, "yesterday's accounts are forgotten, and the room with them");
        await gateway.SubmitAsync(ByUser("u3"), Ct); // refused yesterday, room today
        budgets.Balances().Keys.Should().BeEquivalentTo("per user:u1", "per user:u3");
        var fourth = async () => await gateway.SubmitAsync(ByUser("u4"), Ct);
        await fourth.Should().ThrowAsync<BudgetExceededException>("two users kept today again");
    }

    [Fact]
    public async Task Concurrent_requests_cannot_overspend_beyond_the_reservations_in_flight()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate);
        await using var gateway = await Priced(provider).AddBudget(120m, BudgetPeriod.Day).StartAsync(Ct);

        // 1,000 concurrent requests, each reserving $6: only 20 fit in $120 while they are all in flight.
        var all = Enumerable.Range(0, 1000).Select(_ => gateway.SubmitAsync(Req(), Ct).AsTask()).ToArray();
        await Wait.Until(() => gateway.Metrics.GetSnapshot().TotalRequests == 980, "the rest are refused");
        gate.SetResult();
        var admitted = await Outcomes.CountSucceeded<BudgetExceededException>(all);

        admitted.Should().Be(20);
        var spent = gateway.Services.GetRequiredService<BudgetTracker>().Balances().Single().Value;
        spent.Spent.Should().Be(80m, "20 answers of $4 each settled");
        spent.Reserved.Should().Be(0);
        gateway.Metrics.GetSnapshot().BudgetExceededRequests.Should().Be(980);
    }

    /// <summary>
    /// The reservation holds back the completion budget of every choice asked: <c>n</c> 8 with <c>max_tokens</c> 1 is
    /// estimated at 5 + 8 = $13, past a $10 budget, and refused before the provider sees it (it reserved $6 — one
    /// choice — and could overspend the budget by the other seven).
    /// </summary>
    [Fact]
    public async Task A_reservation_holds_back_every_choice_the_request_asks()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await Priced(provider).AddBudget(10m, BudgetPeriod.Day).StartAsync(Ct);
        var several = Req();
        several.N = 8;
        var act = async () => await gateway.SubmitAsync(several, Ct);
        await act.Should().ThrowAsync<BudgetExceededException>();
        provider.Calls.Should().Be(0);

        await gateway.SubmitAsync(Req(), Ct); // one choice: $6 reserved, $4 spent
        gateway.Services.GetRequiredService<BudgetTracker>().Balances().Single().Value.Spent.Should().Be(4m);
    }

    /// <summary>
    /// An operation's reservation holds back what its request already says it will cost beyond tokens: the images asked,
    /// weighed by size and quality (three wide HD DALL·E 3 images: 3 × 3 × $0.04 = $0.36), the minutes of audio its file
    /// holds (2 s at whisper-1's $0.006 a minute). Both reserved $0 — their models have no token price — and could
    /// overspend any budget.
    /// </summary>
    [Fact]
    public async Task An_operations_reservation_holds_back_its_images_and_its_minutes_of_audio()
    {
        await using var gateway = await new GatewayBuilder()
            .AddSimulatedProvider("sim", o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("img", m => m.Deploy("sim", "dall-e-3"))
            .AddModel("whisper", m => m.Deploy("sim", "whisper-1"))
            .AddBudget(0.1m, BudgetPeriod.Day)
            .StartAsync(Ct);
        var images = Images.ToRequest(JsonDocument.Parse("""{"model":"img","prompt":"a lighthouse","n":3,"size":"1792x1024","quality":"hd"}""").RootElement);
        var act = async () => await gateway.SubmitAsync(images, Ct);
        (await act.Should().ThrowAsync<BudgetExceededException>()).Which.Message.Should().Contain("0.36");

        var one = Images.ToRequest(JsonDocument.Parse("""{"model":"img","prompt":"a lighthouse","size":"16x16"}""").RootElement);
        (await gateway.SubmitAsync(one, Ct)).Gateway!.Cost.Should().Be(0.04m);

        await using var tight = await new GatewayBuilder()
            .AddSimulatedProvider("sim", o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("whisper", m => m.Deploy("sim", "whisper-1"))
            .AddBudget(0.0001m, BudgetPeriod.Day)
            .StartAsync(Ct);
        var wav = SimulatedSpeech.Audio(Speech.ToRequest(JsonDocument.Parse("""{"model":"m","input":"one two three four five","voice":"alloy","response_format":"wav"}""").RootElement).Operation!).List.ToArray();
        var transcription = Transcriptions.ToRequest(OperationKind.Transcription, [new("model", "whisper")], new Upload(wav, "a.wav", "audio/wav"));
        var refused = async () => await tight.SubmitAsync(transcription, Ct);
        await refused.Should().ThrowAsync<BudgetExceededException>("2 s of audio is $0.0002, past the $0.0001 budget");
    }

    /// <summary>A gateway with a $10 daily budget per key, on <paramref name="clock"/>.</summary>
    private static Task<Gateway> PerUserDaily(Microsoft.Extensions.Time.Testing.FakeTimeProvider clock) => Priced(new FakeProvider("p"))
        .UseTimeProvider(clock)
        .Configure(o => o.Budgets.Add(new BudgetOptions { Name = "per user", Scope = BudgetScope.Key, Period = BudgetPeriod.Day, LimitUsd = 10m }))
        .StartAsync(Ct);

    /// <summary>
    /// A sweep that runs late — started on an earlier day, run after a request carried an account into the new one —
    /// forgets no account of the new day: it forgot every account whose period differed from its own, so today's spend
    /// of a key was lost (and the key could spend its budget again). Found when the sweep moved off the request thread.
    /// </summary>
    [Fact]
    public async Task A_late_sweep_never_forgets_an_account_already_in_the_new_period()
    {
        var clock = TestGateway.Clock();
        await using var gateway = await PerUserDaily(clock);
        var budgets = gateway.Services.GetRequiredService<BudgetTracker>();
        await gateway.SubmitAsync(Req("user-0"), Ct);
        var yesterday = clock.GetUtcNow();

        clock.Advance(TimeSpan.FromDays(1));
        await gateway.SubmitAsync(Req("user-0"), Ct); // the account carried into today, today's spend in it
        await Wait.Until(() => budgets.AccountCount == 1, "today's sweep is done");
        var spent = budgets.Balances().Single().Value.Spent;

        budgets.Sweep(yesterday);

        budgets.AccountCount.Should().Be(1, "today's account is not yesterday's to forget");
        budgets.Balances().Single().Value.Spent.Should().Be(spent).And.BePositive();
    }

    [Fact]
    public async Task Per_key_accounts_of_ended_days_are_forgotten_and_a_returning_key_starts_afresh()
    {
        // A library caller's keys can be one per end user: an account per key kept forever would grow without bound.
        var clock = TestGateway.Clock();
        await using var gateway = await PerUserDaily(clock);
        var budgets = gateway.Services.GetRequiredService<BudgetTracker>();

        for (var i = 0; i < 50; i++)
        {
            await gateway.SubmitAsync(Req("user-" + i), Ct);
        }

        await gateway.SubmitAsync(Req("user-0"), Ct); // spent 8 of 10 today
        budgets.AccountCount.Should().Be(50);
        var act = async () => await gateway.SubmitAsync(Req("user-0"), Ct);
        await act.Should().ThrowAsync<BudgetExceededException>("the day's account is still there");

        clock.Advance(TimeSpan.FromDays(1));
        await gateway.SubmitAsync(Req("user-0"), Ct);
        await Wait.Until(() => budgets.AccountCount == 1, "yesterday's 50 accounts are forgotten (off the request's thread); user-0 has today's");
        budgets.Balances().Single().Value.Spent.Should().Be(4m, "the returning key starts the day from nothing");
        await gateway.SubmitAsync(Req("user-0"), Ct);
        await act.Should().ThrowAsync<BudgetExceededException>("today's account counts as before");
    }

    [Fact]
    public async Task A_refusal_names_the_budget_and_a_new_day_starts_afresh()
    {
        var clock = TestGateway.Clock();
        var provider = new FakeProvider("p");
        await using var gateway = await Priced(provider)
            .UseTimeProvider(clock)
            .Configure(o => o.Budgets.Add(new BudgetOptions { Name = "tenant-a daily", Scope = BudgetScope.Key, Key = "a", Period = BudgetPeriod.Day, LimitUsd = 10m }))
            .StartAsync(Ct);

        await gateway.SubmitAsync(Req("a"), Ct); // 0 + 6 fits; spent 4
        await gateway.SubmitAsync(Req("a"), Ct); // 4 + 6 fits; spent 8
        var act = async () => await gateway.SubmitAsync(Req("a"), Ct); // 8 + 6 > 10
        var refusal = (await act.Should().ThrowAsync<BudgetExceededException>()).Which;
        refusal.Budget.Should().Be("tenant-a daily");
        refusal.Limit.Should().Be(10m);
        refusal.Message.Should().Contain("tenant-a daily");

        await gateway.SubmitAsync(Req("b"), Ct); // another key is not limited by a's budget

        clock.Advance(TimeSpan.FromDays(1));
        (await gateway.SubmitAsync(Req("a"), Ct)).Content.Should().Be("ok");
        var keys = gateway.Metrics.GetSnapshot().Keys;
        keys["a"].TotalCost.Should().Be(12m);
        keys["b"].TotalCost.Should().Be(4m);
    }

    [Fact]
    public async Task Cache_hits_cost_nothing_against_a_budget()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await Priced(provider).AddCache(TimeSpan.FromHours(1)).AddBudget(9m).StartAsync(Ct);

        var first = TestGateway.Request();
        first.MaxTokens = 1;
        await gateway.SubmitAsync(first, Ct);
        for (var i = 0; i < 10; i++)
        {
            var again = TestGateway.Request();
            again.MaxTokens = 1;
            (await gateway.SubmitAsync(again, Ct)).Gateway!.Cached.Should().BeTrue();
        }

        gateway.Services.GetRequiredService<BudgetTracker>().Balances().Single().Value.Spent.Should().Be(4m);
    }
}
