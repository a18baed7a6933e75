using System.Text.Json;
using CsCheck;
using FluentAssertions;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;
using PipelineGateway.Routing;
using PipelineGateway.Sqlite;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.RequestLog;

/// <summary>The request log on a real SQLite file: rows, budgets across a restart, a locked or corrupt file, drops, retention, bodies.</summary>
public sealed class RequestLogTests : IDisposable
{
    private readonly LogFiles _files = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string Db => _files.Db;

    public void Dispose() => _files.Dispose();

    // $1 a token in and out: each answer (3 in, 1 out) costs $4; the estimate reserved per request is $6.
    private GatewayBuilder Logged(FakeProvider provider, Action<GatewayOptions>? more = null) => new GatewayBuilder()
        .AddProvider(provider, workers: 4, queueCapacity: 64)
        .Configure(o =>
        {
            o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = provider.Name, InputPricePerMillion = 1_000_000m, OutputPricePerMillion = 1_000_000m }] });
            o.RequestLog.Path = Db;
            more?.Invoke(o);
        })
        .AddSqliteRequestLog();

    /// <summary>A logged gateway (one fake provider, "p") that answered these requests, their rows committed.</summary>
    private async Task<Gateway> LoggedWithRequestsAsync(params (string Key, string Text)[] requests)
    {
        var gateway = await Logged(new FakeProvider("p")).StartAsync(Ct);
        foreach (var (key, text) in requests)
        {
            await gateway.SubmitAsync(Req(key, text), Ct);
        }

        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);
        return gateway;
    }

    private static ChatCompletionRequest Req(string? key = null, string text = "Hello!", double? temperature = 0)
    {
        var r = TestGateway.Request(text: text);
        r.MaxTokens = 1;
        r.Temperature = temperature;
        r.Gateway = key is null ? null : new GatewayRequestOptions { RateLimitKey = key };
        return r;
    }

    private static async Task<IReadOnlyList<RequestRecord>> Rows(Gateway gateway, RequestLogQuery? query = null)
    {
        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);
        var page = await gateway.Services.GetRequiredService<IRequestLogStore>().QueryAsync(query ?? new RequestLogQuery { Limit = 1000 }, Ct);
        return [.. page.Rows.Select(r => r.Request).Reverse()];
    }

    [Fact]
    public async Task Every_request_is_one_row_saying_who_asked_what_answered_what_it_cost_and_why_it_failed()
    {
        var failing = false;
        var provider = new FakeProvider("p") { OnComplete = (r, _) => failing ? throw FakeProvider.Fail503() : ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok")) };
        await using var gateway = await Logged(provider, o => o.Cache.Enabled = true).StartAsync(Ct);

        await gateway.SubmitAsync(Req("a", "one"), Ct);
        await gateway.SubmitAsync(Req("a", "one"), Ct); // a cache hit
        await foreach (var _ in gateway.StreamAsync(Req("b", "two"), Ct))
        {
        }

        failing = true;
        var act = async () => await gateway.SubmitAsync(Req("b", "three"), Ct);
        await act.Should().ThrowAsync<AllProvidersFailedException>();

        var rows = await Rows(gateway);
        rows.Should().HaveCount(4);
        var (answered, hit, streamed, failed) = (rows[0], rows[1], rows[2], rows[3]);

        answered.KeyId.Should().Be("a");
        answered.Model.Should().Be("m");
        answered.Provider.Should().Be("p");
        answered.ProviderModel.Should().Be("m");
        answered.Status.Should().Be(200);
        answered.ErrorCode.Should().BeNull();
        (answered.PromptTokens, answered.CompletionTokens, answered.Cost).Should().Be((3, 1, 4m));
        answered.Cached.Should().BeFalse();
        answered.Priority.Should().Be("interactive");
        answered.RequestId.Should().StartWith("req_");
        JsonDocument.Parse(answered.Attempts).RootElement.EnumerateArray().Single().GetProperty("outcome").GetString().Should().Be("Success");

        hit.Cached.Should().BeTrue();
        hit.Cost.Should().Be(0, "a cache hit costs nothing");
        hit.CostSaved.Should().Be(4m);
        hit.PromptTokens.Should().Be(0, "only billed usage is logged, as in the metrics");

        streamed.Stream.Should().BeTrue();
        streamed.TimeToFirstTokenMs.Should().NotBeNull();
        streamed.KeyId.Should().Be("b");

        failed.Status.Should().Be(503, "what the caller got: the last attempt's 503");
        failed.ErrorType.Should().Be("server_overloaded");
        failed.Provider.Should().BeNull();
        failed.Cost.Should().Be(0);
        var attempts = JsonDocument.Parse(failed.Attempts).RootElement.EnumerateArray().ToList();
        attempts.Should().NotBeEmpty().And.OnlyContain(a => a.GetProperty("status").GetInt32() == 503);

        // The log and the metrics agree on the cost, to the cent.
        rows.Sum(r => r.Cost).Should().Be(gateway.Metrics.GetSnapshot().TotalCost);
        gateway.Metrics.GetSnapshot().RequestLog.Written.Should().Be(4);

        var onlyB = await Rows(gateway, new RequestLogQuery { KeyId = "b", Status = 503 });
        onlyB.Should().ContainSingle().Which.RequestId.Should().Be(failed.RequestId);
    }

    [Fact]
    public async Task Spend_groups_by_key_model_deployment_and_day()
    {
        await using var gateway = await LoggedWithRequestsAsync(("a", "1"), ("a", "2"), ("b", "3"));
        var store = gateway.Services.GetRequiredService<IRequestLogStore>();
        var since = DateTimeOffset.UtcNow.AddHours(-1);

        var byKey = await store.SpendAsync(SpendGrouping.Key, since, Ct);
        byKey.Select(r => (r.Group, r.Requests, r.Cost)).Should().Equal(("a", 2L, 8m), ("b", 1L, 4m));
        (await store.SpendAsync(SpendGrouping.Deployment, since, Ct)).Single().Group.Should().Be("p/m");
        (await store.SpendAsync(SpendGrouping.Day, since, Ct)).Single().Group.Should().Be(DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture));
        (await store.SpendAsync(SpendGrouping.Model, DateTimeOffset.UtcNow.AddMinutes(1), Ct)).Should().BeEmpty();
    }

    [Fact]
    public async Task A_restart_changes_no_budget_spend_is_restored_from_the_log()
    {
        var clock = TestGateway.Clock();
        var budget = new BudgetOptions { Name = "a daily", Scope = BudgetScope.Key, Key = "a", Period = BudgetPeriod.Day, LimitUsd = 10m };
        await using (var first = await Logged(new FakeProvider("p"), o => o.Budgets.Add(budget)).UseTimeProvider(clock).StartAsync(Ct))
        {
            await first.SubmitAsync(Req("a", "1"), Ct); // spent 4
            await first.SubmitAsync(Req("a", "2"), Ct); // spent 8
        }

        // Disposed: the writer stopped after the drain, so both rows are in the file. A new process reads them back.
        await using var second = await Logged(new FakeProvider("p"), o => o.Budgets.Add(budget)).UseTimeProvider(clock).StartAsync(Ct);
        second.Services.GetRequiredService<BudgetTracker>().Balances().Single().Value.Spent.Should().Be(8m);
        var act = async () => await second.SubmitAsync(Req("a", "3"), Ct); // 8 + 6 > 10, as before the restart
        await act.Should().ThrowAsync<BudgetExceededException>();

        clock.Advance(TimeSpan.FromDays(1));
        (await second.SubmitAsync(Req("a", "4"), Ct)).Content.Should().Be("ok", "yesterday's spend does not count against today's budget");
    }

    [Fact]
    public async Task A_restart_changes_no_per_user_budget_each_users_spend_is_restored_from_the_log()
    {
        var clock = TestGateway.Clock();
        var budget = new BudgetOptions { Name = "per user", Scope = BudgetScope.User, Period = BudgetPeriod.Day, LimitUsd = 10m };
        var longName = new string('u', 300); // accounted to (and restored as) its first 256 characters
        static ChatCompletionRequest By(string? user, string text) => Req("a", text).NamingUser(user);

        await using (var first = await Logged(new FakeProvider("p"), o => o.Budgets.Add(budget)).UseTimeProvider(clock).StartAsync(Ct))
        {
            await first.SubmitAsync(By("alice", "1"), Ct); // spent 4
            await first.SubmitAsync(By("alice", "2"), Ct); // spent 8
            await first.SubmitAsync(By(longName, "3"), Ct); // spent 4
            await first.SubmitAsync(By(longName + "-other-tail", "4"), Ct); // the same first 256: spent 8
            await first.SubmitAsync(By(null, "5"), Ct);
        }

        await using var second = await Logged(new FakeProvider("p"), o => o.Budgets.Add(budget)).UseTimeProvider(clock).StartAsync(Ct);
        second.Services.GetRequiredService<BudgetTracker>().Balances().ToDictionary(b => b.Key, b => b.Value.Spent).Should().BeEquivalentTo(
            new Dictionary<string, decimal> { ["per user:alice"] = 8m, [$"per user:{longName[..256]}"] = 8m });
        var alice = async () => await second.SubmitAsync(By("alice", "6"), Ct); // 8 + 6 > 10, as before the restart
        await alice.Should().ThrowAsync<BudgetExceededException>();
        var tail = async () => await second.SubmitAsync(By(longName + "-a-third-tail", "7"), Ct);
        await tail.Should().ThrowAsync<BudgetExceededException>();
        (await second.SubmitAsync(By("bob", "8"), Ct)).Content.Should().Be("ok");
    }

    [Fact]
    public async Task A_locked_database_never_stops_the_gateway_says_so_once_and_the_rows_are_written_when_it_frees()
    {
        var logs = new CapturingLoggerProvider();
        var provider = new FakeProvider("p");
        await using var gateway = await Logged(provider, o => o.RequestLog.LockTimeout = TimeSpan.FromMilliseconds(50))
            .ConfigureLogging(l => l.AddProvider(logs))
            .StartAsync(Ct);
        var writer = gateway.Services.GetRequiredService<RequestLogWriter>();
        await gateway.SubmitAsync(Req("a", "before"), Ct);
        await writer.FlushAsync(Ct);

        // Another process holds the write lock.
        using (var other = new SqliteConnection($"Data Source={Db}"))
        {
            other.Open();
            using var tx = other.BeginTransaction(System.Data.IsolationLevel.Serializable);
            using (var cmd = other.CreateCommand())
            {
                cmd.Transaction = tx;
                cmd.CommandText = "DELETE FROM requests WHERE 0";
                cmd.ExecuteNonQuery();
            }

            for (var i = 0; i < 5; i++)
            {
                (await gateway.SubmitAsync(Req("a", $"during {i}"), Ct)).Content.Should().Be("ok", "the gateway keeps answering");
            }

            await Wait.Until(() => gateway.Metrics.GetSnapshot().RequestLog.Failing, "the writer finds the file locked");
            gateway.Metrics.GetSnapshot().RequestLog.Lost.Should().Be(0, "the rows are kept for the retry");
            tx.Rollback();
        }

        await writer.FlushAsync(Ct);
        var stats = gateway.Metrics.GetSnapshot().RequestLog;
        (stats.Written, stats.Lost, stats.Failing).Should().Be((6L, 0L, false));
        (await Rows(gateway)).Should().HaveCount(6);
        logs.Lines.Count(l => l.Contains("request log cannot be written", StringComparison.Ordinal)).Should().Be(1, "one message per outage");
        logs.Lines.Should().Contain(l => l.Contains("locked", StringComparison.Ordinal) && l.Contains("Gateway:RequestLog:Path", StringComparison.Ordinal));
        logs.Lines.Should().Contain(l => l.Contains("written again", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_read_only_database_never_stops_the_gateway_and_its_rows_are_written_once_it_is_writable_again()
    {
        var logs = new CapturingLoggerProvider();
        await using var gateway = await Logged(new FakeProvider("p"), o => o.RequestLog.LockTimeout = TimeSpan.FromMilliseconds(50))
            .ConfigureLogging(l => l.AddProvider(logs))
            .StartAsync(Ct);
        var writer = gateway.Services.GetRequiredService<RequestLogWriter>();
        await gateway.SubmitAsync(Req("a", "before"), Ct);
        await writer.FlushAsync(Ct);

        // Not the -shm file: SQLite writes it through a shared memory mapping, and a write fault on a page of an
        // immutable file is a SIGBUS (ext4's page_mkwrite refuses it) — it killed the test host now and then, when the
        // page had been written back before the next write (a loaded machine). The file and its log refuse the writes.
        var files = new[] { Db, Db + "-wal" };
        ImmutableFiles.MakeOrSkip(files);

        try
        {
            for (var i = 0; i < 5; i++)
            {
                (await gateway.SubmitAsync(Req("a", $"during {i}"), Ct)).Content.Should().Be("ok", "the gateway keeps answering");
            }

            await Wait.Until(() => gateway.Metrics.GetSnapshot().RequestLog.Failing, "the writer finds the file read-only");
            gateway.Metrics.GetSnapshot().RequestLog.Lost.Should().Be(0, "the rows are kept for the retry");
        }
        finally
        {
            ImmutableFiles.Set(false, files);
        }

        await writer.FlushAsync(Ct);
        (await Rows(gateway)).Should().HaveCount(6);
        logs.Lines.Count(l => l.Contains("request log cannot be written", StringComparison.Ordinal)).Should().Be(1, "one message per outage");
    }

    [Fact]
    public async Task A_read_only_database_at_start_fails_the_start_naming_the_setting()
    {
        await using (var first = await Logged(new FakeProvider("p")).StartAsync(Ct))
        {
            await first.SubmitAsync(Req("a"), Ct);
        }

        SqliteConnection.ClearAllPools();
        var files = new[] { Db, Db + "-wal", Db + "-shm", Path.GetDirectoryName(Db)! };
        ImmutableFiles.MakeOrSkip(files);

        try
        {
            var act = async () => await Logged(new FakeProvider("p")).StartAsync(Ct);
            var error = (await act.Should().ThrowAsync<InvalidOperationException>()).Which;
            error.Message.Should().Contain("Gateway:RequestLog:Path").And.Contain(Db).And.Contain("read-only");
        }
        finally
        {
            ImmutableFiles.Set(false, files);
        }
    }

    [Fact]
    public async Task A_store_of_its_own_is_given_each_rows_attempts_as_they_happened()
    {
        // Any store, not only SQLite (which keeps the common single-success row without its attempts JSON), is given the
        // attempts the caller was told about: a fallback's two, and the common row's one.
        var failFirst = true;
        var first = new FakeProvider("p1") { OnComplete = (r, _) => failFirst ? throw FakeProvider.Fail503() : ValueTask.FromResult(FakeProvider.Answer(r.Model, "one")) };
        var second = new FakeProvider("p2");
        var store = new CapturingStore();
        var builder = TestGateway.With(first, second);
        builder.Services.AddSingleton<IRequestLogStore>(store);
        await using var gateway = await builder.StartAsync(Ct);

        var fellBack = await gateway.SubmitAsync(Req("a", "fell back"), Ct);
        failFirst = false;
        var single = await gateway.SubmitAsync(Req("a", "single"), Ct);
        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);

        store.Rows.Should().HaveCount(2);
        var (fallbackRow, singleRow) = (store.Rows[0], store.Rows[1]);
        fellBack.Gateway!.Attempts.Should().HaveCount(2);
        fallbackRow.Attempts.Should().Be(AttemptsJson.Format(fellBack.Gateway.Attempts));
        (fallbackRow.Provider, fallbackRow.Model).Should().Be(("p2", "m"));
        single.Gateway!.Attempts.Should().ContainSingle();
        singleRow.Attempts.Should().Be(AttemptsJson.Format(single.Gateway.Attempts), "the rebuilt attempt is the one that happened: provider, model, outcome and time");
        (singleRow.Provider, singleRow.ProviderModel, singleRow.Status).Should().Be(("p1", "m", 200));
    }

    /// <summary>
    /// A stream its caller leaves while the upstream waits: the caller is answered (the cancellation) before the worker
    /// unwinds and records its attempt, and the row — billed at that deployment — still lists the attempt, cancelled.
    /// </summary>
    [Fact]
    public async Task A_stream_left_by_its_caller_is_logged_with_its_attempt_and_what_it_consumed()
    {
        var provider = new FakeProvider("p") { OnStream = (r, ct) => OneWordThenWait(r, ct) };
        var store = new CapturingStore();
        var builder = TestGateway.With(provider);
        builder.Services.AddSingleton<IRequestLogStore>(store);
        await using var gateway = await builder.StartAsync(Ct);

        await foreach (var chunk in gateway.StreamAsync(Req("a", "tell me"), Ct))
        {
            break; // the first word came: the caller leaves
        }

        await Wait.Until(() => gateway.Metrics.GetSnapshot().CancelledRequests == 1, "the request ends as cancelled");
        // The row is queued by a listener after the metrics' one: once the request is retired it is, and the flush writes it.
        await Wait.Until(() => gateway.Services.GetRequiredService<PipelineGateway.Pipeline.GatewayPipeline>().Outstanding == 0, "the request retired");
        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);

        var row = store.Rows.Should().ContainSingle().Subject;
        (row.Status, row.Provider, row.CompletionTokens, row.UsageEstimated).Should().Be((499, "p", 1, true));
        var attempt = row.AttemptList.Should().ContainSingle("the streaming attempt, though its worker had not recorded it yet").Subject;
        (attempt.Provider, attempt.Outcome, attempt.Error).Should().Be(("p", AttemptOutcome.Cancelled, "caller"));

        static async IAsyncEnumerable<ChatCompletionChunk> OneWordThenWait(PipelineGateway.Providers.ProviderRequest r, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
        {
            await Task.Yield();
            yield return FakeProvider.Chunk(r.Model, "one");
            await FakeProvider.UntilCancelled(ct); // resumes off the cancelling thread: the caller is answered first
        }
    }

    /// <summary>
    /// A whole request its caller gives up on while the upstream works is logged with that attempt, cancelled, and billed
    /// its prompt (estimated) to that deployment: the upstream read it and will likely bill the answer whoever waits — a
    /// tenant must not get answers generated for nothing by cancelling just before they come. The same figure reaches the
    /// metrics and the budgets.
    /// </summary>
    [Fact]
    public async Task A_whole_request_cancelled_in_flight_is_logged_with_its_attempt_and_billed_its_prompt()
    {
        var provider = FakeProvider.NeverAnswers("p"); // resumes off the cancelling thread: the caller is answered first
        var store = new CapturingStore();
        var builder = TestGateway.With(provider).Configure(o => o.Models[0].Deployments[0].InputPricePerMillion = 1_000_000m); // $1 a token
        builder.Services.AddSingleton<IRequestLogStore>(store);
        await using var gateway = await builder.StartAsync(Ct);

        var row = await CancelledInFlightAsync(gateway, store, () => Wait.Until(() => provider.Calls == 1, "the attempt is under way"));
        (row.Status, row.Provider, row.UsageEstimated, row.CompletionTokens).Should().Be((499, "p", true, 0L));
        row.PromptTokens.Should().BePositive();
        row.Cost.Should().Be(row.PromptTokens, "its prompt, at the deployment's price");
        gateway.Metrics.GetSnapshot().TotalCost.Should().Be(row.Cost, "the metrics agree with the log");
        var attempt = row.AttemptList.Should().ContainSingle("the attempt in flight, though its worker had not recorded it yet").Subject;
        (attempt.Provider, attempt.Outcome, attempt.Error).Should().Be(("p", AttemptOutcome.Cancelled, "caller"));
    }

    /// <summary>
    /// A hedged request its caller gives up on while both legs are in flight is logged with both, cancelled, and billed
    /// both prompts — each upstream read it — each at its own deployment: the log's cost is the metrics' total and the
    /// sum of the two providers' (it was billed the first leg's only).
    /// </summary>
    [Fact]
    public async Task A_hedged_request_cancelled_with_both_legs_in_flight_is_logged_with_both_and_billed_both()
    {
        var clock = TestGateway.Clock();
        var first = FakeProvider.NeverAnswers("first");
        var second = FakeProvider.NeverAnswers("second");
        var store = new CapturingStore();
        var builder = TestGateway.With(first, second).UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Models[0].Hedging = new HedgingOptions { Delay = TimeSpan.FromMilliseconds(500) };
                o.Models[0].Deployments[0].InputPricePerMillion = 1_000_000m; // $1 a token, both
                o.Models[0].Deployments[1].InputPricePerMillion = 1_000_000m;
            });
        builder.Services.AddSingleton<IRequestLogStore>(store);
        await using var gateway = await builder.StartAsync(Ct);
        using var costs = new Microsoft.Extensions.Diagnostics.Metrics.Testing.MetricCollector<double>(gateway.Services.GetRequiredService<PipelineGateway.Metrics.GatewayInstruments>().Cost);

        var row = await CancelledInFlightAsync(gateway, store, async () =>
        {
            await Wait.Until(() => first.Calls == 1, "the first leg is under way");
            clock.Advance(TimeSpan.FromMilliseconds(500));
            await Wait.Until(() => second.Calls == 1, "the hedge leg is under way");
        });
        row.Status.Should().Be(499);
        row.AttemptList!.Select(a => (a.Provider, a.Outcome, a.Error)).Should().BeEquivalentTo(
            [("first", AttemptOutcome.Cancelled, "caller"), ("second", AttemptOutcome.Cancelled, "caller")],
            "both legs (in the order their worker recorded them when it had: they end together)");
        var prompt = row.PromptTokens / 2;
        prompt.Should().BePositive();
        (row.Cost, row.UsageEstimated).Should().Be((prompt * 2m, true), "both prompts at $1 a token");
        var metrics = gateway.Metrics.GetSnapshot();
        metrics.TotalCost.Should().Be(row.Cost);
        (metrics.Providers["first"].TotalCost, metrics.Providers["second"].TotalCost).Should().Be(((decimal)prompt, (decimal)prompt), "each leg to its own provider");
        costs.RecordObservableInstruments();
        costs.GetMeasurementSnapshot().Select(m => ((string)m.Tags["gen_ai.system"]!, m.Value)).Should().BeEquivalentTo(
            [("first", (double)prompt), ("second", (double)prompt)], "the OpenTelemetry cost counter too");
    }

    /// <summary>A whole request submitted, its caller giving up once <paramref name="underWay"/> says the upstream works; its log row.</summary>
    private static async Task<RequestRecord> CancelledInFlightAsync(Gateway gateway, CapturingStore store, Func<Task> underWay)
    {
        using var cancel = new CancellationTokenSource();
        var pending = gateway.SubmitAsync(Req("a", "slow"), cancel.Token);
        await underWay();
        await cancel.CancelAsync();
        var act = async () => await pending;
        await act.Should().ThrowAsync<RequestCancelledException>();
        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);
        return store.Rows.Should().ContainSingle().Subject;
    }

    private sealed class CapturingStore : IRequestLogStore
    {
        public List<RequestRecord> Rows { get; } = [];

        public ValueTask InitializeAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public ValueTask WriteAsync(IReadOnlyList<RequestRecord> batch, CancellationToken cancellationToken)
        {
            lock (Rows)
            {
                Rows.AddRange(batch);
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask<int> DeleteOlderThanAsync(DateTimeOffset cutoff, int max, CancellationToken cancellationToken) => ValueTask.FromResult(0);

        public ValueTask<RequestLogPage> QueryAsync(RequestLogQuery query, CancellationToken cancellationToken) => ValueTask.FromResult(new RequestLogPage([], null));

        public ValueTask<IReadOnlyList<SpendRow>> SpendAsync(SpendGrouping groupBy, DateTimeOffset since, CancellationToken cancellationToken) => ValueTask.FromResult<IReadOnlyList<SpendRow>>([]);

        public ValueTask<IReadOnlyList<DailySpend>> DailySpendAsync(DateTimeOffset since, CancellationToken cancellationToken) => ValueTask.FromResult<IReadOnlyList<DailySpend>>([]);
    }

    [Fact]
    public async Task A_full_queue_drops_rows_and_counts_them_and_requests_never_wait()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await Logged(provider, o =>
        {
            o.RequestLog.Capacity = 2;
            o.RequestLog.MaxBatch = 100_000;
            o.RequestLog.FlushInterval = TimeSpan.FromHours(1);
        }).StartAsync(Ct);

        for (var i = 0; i < 10; i++)
        {
            await gateway.SubmitAsync(Req("a", $"r{i}"), Ct);
        }

        var stats = gateway.Metrics.GetSnapshot().RequestLog;
        stats.Dropped.Should().Be(8, "two fit in the queue, the rest are dropped and counted");
        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);
        gateway.Metrics.GetSnapshot().RequestLog.Written.Should().Be(2);
    }

    [Fact]
    public async Task In_wait_mode_a_full_queue_makes_the_ending_request_wait_and_no_row_is_dropped()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await Logged(provider, o =>
        {
            o.RequestLog.Capacity = 2;
            o.RequestLog.MaxBatch = 100_000;
            o.RequestLog.FlushInterval = TimeSpan.FromHours(1); // only a full queue wakes the writer
            o.RequestLog.WhenFull = RequestLogFullMode.Wait;
        }).StartAsync(Ct);

        for (var i = 0; i < 10; i++)
        {
            (await gateway.SubmitAsync(Req("a", $"r{i}"), Ct)).Content.Should().Be("ok");
        }

        await gateway.Services.GetRequiredService<RequestLogWriter>().FlushAsync(Ct);
        var stats = gateway.Metrics.GetSnapshot().RequestLog;
        (stats.Dropped, stats.Written).Should().Be((0L, 10L), "a full queue made the ending thread wait for room instead of dropping");
    }

    [Fact]
    public async Task Rows_older_than_the_retention_are_deleted()
    {
        var clock = TestGateway.Clock();
        await using var gateway = await Logged(new FakeProvider("p"), o => o.RequestLog.RetentionDays = 30).UseTimeProvider(clock).StartAsync(Ct);
        await gateway.SubmitAsync(Req("a", "old"), Ct);
        (await Rows(gateway)).Should().HaveCount(1);

        clock.Advance(TimeSpan.FromDays(31));
        await gateway.SubmitAsync(Req("a", "new"), Ct);
        var rows = await Rows(gateway);
        rows.Should().ContainSingle().Which.Timestamp.Should().Be(clock.GetUtcNow(), "only the new one is kept");
    }

    [Fact]
    public async Task Bodies_are_off_by_default_and_when_on_are_redacted_and_capped()
    {
        const string secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";
        await using (var quiet = await Logged(new FakeProvider("p")).StartAsync(Ct))
        {
            await quiet.SubmitAsync(Req("a", "my key is " + secret), Ct);
            var row = (await Rows(quiet)).Single();
            (row.Prompt, row.Answer).Should().Be((null, null));
        }

        SqliteConnection.ClearAllPools();
        File.Delete(Db);
        await using var verbose = await Logged(new FakeProvider("p"), o =>
        {
            o.RequestLog.LogBodies = true;
            o.RequestLog.MaxBodyChars = 100;
        }).StartAsync(Ct);
        await verbose.SubmitAsync(Req("a", "my key is " + secret + new string('x', 500)), Ct);
        var logged = (await Rows(verbose)).Single();
        logged.Prompt.Should().NotContain(secret).And.Contain("my key is");
        logged.Prompt!.Length.Should().BeLessThanOrEqualTo(100 + "…[truncated]".Length);
        logged.Answer.Should().Be("ok");

        // A secret across the cap (a configured key's value: no pattern finds a piece of it), in a prompt of megabytes (an
        // image inline): redacted whole, never a fragment kept.
        const string configured = "Zq8wLmN3pXv7Rt2KcY5bHd9F";
        PipelineGateway.Providers.SecretRedactor.Register(configured);
        var across = new string('x', 59) + " "; // after the prompt's JSON opening, the secret starts before the cap and ends after it
        var sequence = (await Rows(verbose)).Count;
        await verbose.SubmitAsync(Req("a", across + configured + new string('y', 3_000_000)), Ct);
        var large = (await Rows(verbose)).Skip(sequence).Single();
        large.Prompt.Should().NotContain(configured[..6]).And.Contain("[redac");

        // Audio inline, past the head: cut before it is serialized (LoggedPrompt), said by its size.
        var audio = Req("a");
        audio.Messages = [new ChatCompletionMessage
        {
            Role = ChatRoles.User,
            Content = new MessageContent([new ContentPart { Type = "input_audio", AdditionalProperties = new() { ["input_audio"] = JsonSerializer.SerializeToElement(new { data = new string('A', 1_000_000), format = "wav" }) } }]),
        }];
        sequence = (await Rows(verbose)).Count;
        await verbose.SubmitAsync(audio, Ct);
        var spoken = (await Rows(verbose)).Skip(sequence).Single();
        spoken.Prompt.Should().Contain("bytes]").And.NotContain("AAAAAAAA");
    }

    [Fact]
    public async Task An_unusable_path_fails_the_start_naming_the_setting()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Db)!);
        await File.WriteAllTextAsync(Db, new string('#', 4096), Ct); // not a database

        var act = async () => await Logged(new FakeProvider("p")).StartAsync(Ct);

        var error = (await act.Should().ThrowAsync<InvalidOperationException>()).Which;
        error.Message.Should().Contain("Gateway:RequestLog:Path").And.Contain(Db).And.Contain("not a usable SQLite database");
    }

    [Fact]
    public async Task Disabled_nothing_is_written_and_the_metrics_say_so()
    {
        await using var gateway = await Logged(new FakeProvider("p"), o => o.RequestLog.Enabled = false).StartAsync(Ct);
        await gateway.SubmitAsync(Req("a"), Ct);
        gateway.Metrics.GetSnapshot().RequestLog.Enabled.Should().BeFalse();
        File.Exists(Db).Should().BeFalse();
    }

    /// <summary>
    /// The read-only store (<c>pgw usage</c>) reads a log while the gateway writes it: rows committed to the write-ahead
    /// log and not yet copied into the file are counted (a reader that took the file as immutable would miss them).
    /// </summary>
    /// <summary>
    /// A row whose usage is the gateway's estimate (the upstream reported none) says so (<c>usage_estimated</c>), with
    /// the estimate's tokens and cost; the upstream's own count is not marked.
    /// </summary>
    [Fact]
    public async Task A_row_billed_an_estimated_usage_says_so()
    {
        var counted = true;
        var provider = new FakeProvider("p")
        {
            OnComplete = (r, _) =>
            {
                var answer = FakeProvider.Answer(r.Model, "Bounded channels push back.");
                answer.Usage = counted ? answer.Usage : null;
                return ValueTask.FromResult(answer);
            },
        };
        await using var gateway = await Logged(provider).StartAsync(Ct);

        await gateway.SubmitAsync(Req("a", "first"), Ct);
        counted = false;
        await gateway.SubmitAsync(Req("a", "second"), Ct);

        var rows = await Rows(gateway);
        rows.Select(r => r.UsageEstimated).Should().Equal(false, true);
        rows[1].CompletionTokens.Should().BePositive();
        rows[1].Cost.Should().BePositive("the estimate is billed");
    }

    /// <summary>
    /// A log written before <c>usage_estimated</c> existed (schema 1): read as it is by a read-only store (its rows not
    /// estimated, the file unchanged), and given the column when a gateway opens it to write — its old rows kept.
    /// </summary>
    [Fact]
    public async Task A_log_of_the_schema_before_reads_as_it_is_and_gets_the_column_when_written()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Db)!);
        await using (var old = new SqliteConnection($"Data Source={Db};Pooling=false"))
        {
            await old.OpenAsync(Ct);
            await using var create = old.CreateCommand();
            // An hour old: inside the retention the gateway's start applies.
            create.CommandText = LogFiles.OldRequestsTable() + """
                CREATE VIEW request_log AS SELECT id, key_id FROM requests;
                INSERT INTO requests (ts, request_id, key_id, model, provider, provider_model, status, prompt_tokens, completion_tokens,
                    cost_nano, cost_saved_nano, cached, coalesced, stream, latency_ms, priority, attempts)
                VALUES ($ts, 'req_old', 'old-key', 'm', 'p', 'm', 200, 3, 1, 4000000000000000, 0, 0, 0, 0, 12.5, 'interactive', '[]');
                PRAGMA user_version = 1;
                """;
            create.Parameters.AddWithValue("$ts", DateTimeOffset.UtcNow.AddHours(-1).ToUnixTimeMilliseconds());
            await create.ExecuteNonQueryAsync(Ct);
        }

        SqliteConnection.ClearAllPools();
        var before = await File.ReadAllBytesAsync(Db, Ct);
        using (var reader = (SqliteRequestLogStore)await PipelineGateway.Sqlite.SqliteRequestLogExtensions.OpenRequestLogAsync(Db, Ct))
        {
            var page = await reader.QueryAsync(new RequestLogQuery { Limit = 10 }, Ct);
            page.Rows.Should().ContainSingle().Which.Request.Should().Match<RequestRecord>(r => r.KeyId == "old-key" && !r.UsageEstimated && r.User == null);
            (await reader.SpendAsync(SpendGrouping.User, DateTimeOffset.UtcNow.AddDays(-1), Ct)).Should().ContainSingle().Which.Group.Should().Be(string.Empty);
        }

        SqliteConnection.ClearAllPools();
        (await File.ReadAllBytesAsync(Db, Ct)).Should().Equal(before, "a read-only store changes nothing");

        await using var gateway = await LoggedWithRequestsAsync(("new-key", "1"));
        var rows = await Rows(gateway);
        rows.Select(r => (r.KeyId, r.UsageEstimated)).Should().Equal(("old-key", false), ("new-key", false));
        await using var check = new SqliteConnection($"Data Source={Db};Mode=ReadOnly;Pooling=false");
        await check.OpenAsync(Ct);
        await using var version = check.CreateCommand();
        version.CommandText = "PRAGMA user_version";
        Convert.ToInt64(await version.ExecuteScalarAsync(Ct), System.Globalization.CultureInfo.InvariantCulture).Should().Be(4);
        version.CommandText = "SELECT usage_estimated FROM request_log WHERE key_id = 'old-key'";
        Convert.ToInt64(await version.ExecuteScalarAsync(Ct), System.Globalization.CultureInfo.InvariantCulture).Should().Be(0, "the view is made again with the new column");
        version.CommandText = "SELECT user_id IS NULL FROM request_log WHERE key_id = 'old-key'";
        Convert.ToInt64(await version.ExecuteScalarAsync(Ct), System.Globalization.CultureInfo.InvariantCulture).Should().Be(1, "schema 3's column, no user named on the old row");
    }

    [Fact]
    public async Task A_read_only_store_sees_rows_a_running_writer_has_committed()
    {
        await using var gateway = await LoggedWithRequestsAsync(("a", "1"), ("b", "2"));
        File.Exists(Db + "-wal").Should().BeTrue("the gateway still writes: its rows are in the write-ahead log");

        using var reader = (SqliteRequestLogStore)await PipelineGateway.Sqlite.SqliteRequestLogExtensions.OpenRequestLogAsync(Db, Ct);
        var byKey = await reader.SpendAsync(SpendGrouping.Key, DateTimeOffset.UtcNow.AddHours(-1), Ct);

        byKey.Select(r => (r.Group, r.Requests)).Should().Equal(("a", 1L), ("b", 1L));
        await FluentActions.Awaiting(async () => await reader.WriteAsync([], Ct)).Should().ThrowAsync<InvalidOperationException>().WithMessage("*reading only*");
    }

    /// <summary>
    /// Processes opening one request log at once — `pgw batch --redis` workers beside a gateway, a restart overlapping its
    /// predecessor — each make or check its schema in a write transaction of their own: here eight stores open each of
    /// twenty fresh files at once (separate connections, as separate processes have). The view's drop and re-creation
    /// raced, and an opener failed with "view request_log already exists" (a CI run's worker did, one in a few).
    /// </summary>
    [Fact]
    public async Task Stores_opening_one_new_log_at_once_all_open_it()
    {
        for (var file = 0; file < 20; file++)
        {
            var options = new GatewayOptions();
            options.RequestLog.Path = Path.Combine(_files.Dir, $"shared-{file}", "gateway.db");
            var stores = Enumerable.Range(0, 8).Select(_ => new SqliteRequestLogStore(Options.Create(options))).ToList();
            try
            {
                await Task.WhenAll(stores.Select(s => Task.Run(async () => await s.InitializeAsync(Ct), Ct)));
            }
            finally
            {
                stores.ForEach(s => s.Dispose());
            }
        }
    }

    [Fact]
    public async Task Property_every_row_reads_back_as_written_whatever_the_rows_before_it_held()
    {
        // The store's insert on its own: it binds by index into one prepared statement and skips a parameter whose
        // value is the one it already holds (SQLite keeps bindings from row to row), so every row read back must be the
        // row written, whatever the previous rows held.
        // CsCheck's PCG, fixed seed: 40 batches of 1–40 rows whose every field is drawn from two or three values (null
        // among them where the column allows it), so a value repeats, changes, turns null and comes back from row to
        // row and across batches; strings are fresh instances, so only their text can match.
        var options = new GatewayOptions();
        options.RequestLog.Path = Db;
        using var store = new SqliteRequestLogStore(Options.Create(options));
        await store.InitializeAsync(Ct);
        var pcg = new PCG(7, 21);
        var written = new List<(RequestRecord Row, string Id, string Attempts)>();
        var start = new DateTimeOffset(2026, 12, 4, 12, 0, 0, TimeSpan.Zero);
        for (var batch = 0; batch < 40; batch++)
        {
            var rows = Gen.Int[1, 40].Generate(pcg, null, out _);
            var list = new List<RequestRecord>();
            for (var i = 0; i < rows; i++)
            {
                var row = RandomRow(pcg, start.AddMilliseconds(written.Count), 1_000 + written.Count);
                written.Add((row, PipelineGateway.Pipeline.RequestIds.Format(row.RequestSequence), row.AttemptsText ?? AttemptsJson.Format(row.AttemptList)));
                list.Add(row);
            }

            await store.WriteAsync(list, Ct);
        }

        var read = new List<RequestRecord>();
        long? before = null;
        do
        {
            var page = await store.QueryAsync(new RequestLogQuery { Limit = 1000, Before = before }, Ct);
            read.AddRange(page.Rows.Select(r => r.Request));
            before = page.NextCursor;
        }
        while (before is not null);

        read.Reverse();
        read.Should().HaveCount(written.Count);
        for (var i = 0; i < read.Count; i++)
        {
            var (row, id, attempts) = written[i];
            var expected = new
            {
                row.Timestamp, RequestId = row.RequestIdText ?? id, row.KeyId, row.Model, row.Provider, row.ProviderModel,
                row.Status, row.ErrorCode, row.ErrorType, row.PromptTokens, row.CompletionTokens, row.Cost, row.CostSaved,
                row.Cached, row.Coalesced, row.Stream, row.LatencyMs, row.TimeToFirstTokenMs, row.Priority, Attempts = attempts,
                row.Prompt, row.Answer, row.User,
            };
            read[i].Should().BeEquivalentTo(expected, $"row {i} reads back as written");
        }
    }

    private static RequestRecord RandomRow(PCG pcg, DateTimeOffset ts, long sequence)
    {
        T Pick<T>(params T[] values) => values[(int)(pcg.Next() % (uint)values.Length)];
        string? Fresh(string? s) => s is null ? null : new string(s.AsSpan());
        var provider = Fresh(Pick<string?>(null, "p1", "p2"));
        var providerModel = Fresh(Pick<string?>(null, "x", "y-ü"));
        var latency = TimeSpan.FromMilliseconds(Pick(1.5, 2.25, 410.125));
        IReadOnlyList<GatewayAttempt>? attempts = Pick(0, 1, 2, 3, 4) switch
        {
            // The common row: one success at the deployment that answered (stored as upstream_ms, no JSON).
            0 or 1 => [new GatewayAttempt(provider ?? "p1", providerModel ?? "x", AttemptOutcome.Success, latency)],
            2 => [new GatewayAttempt("p1", "x", AttemptOutcome.RetryableError, latency, 503) { ErrorCode = "provider_error" }, new GatewayAttempt("p2", "y-ü", AttemptOutcome.Success, latency)],
            3 => [],
            _ => null,
        };
        var asText = Pick(false, false, true);
        return new RequestRecord
        {
            Timestamp = ts,
            RequestSequence = sequence,
            RequestId = Pick<string?>(null, null, "req_given_1", "req_given_2")!,
            KeyId = Fresh(Pick("", "team-a", "ключ"))!,
            Model = Fresh(Pick("m", "gpt-4o"))!,
            Provider = provider,
            ProviderModel = providerModel,
            Status = Pick(200, 429, 500),
            ErrorCode = Fresh(Pick<string?>(null, "rate_limit_exceeded")),
            ErrorType = Fresh(Pick<string?>(null, "requests")),
            PromptTokens = Pick(0L, 1L, 1_234L),
            CompletionTokens = Pick(0L, 7L),
            Cost = Pick(0m, 0.000001m, 1.5m),
            CostSaved = Pick(0m, 0.25m),
            Cached = Pick(false, true),
            Coalesced = Pick(false, true),
            Stream = Pick(false, true),
            LatencyMs = Pick(0, 1.5, 2.25),
            TimeToFirstTokenMs = Pick<double?>(null, 0, 1.5),
            Priority = Fresh(Pick("interactive", "batch"))!,
            AttemptList = asText ? null : attempts,
            Attempts = asText ? AttemptsJson.Format(attempts) : null!,
            Prompt = Fresh(Pick<string?>(null, "", "hi")),
            Answer = Fresh(Pick<string?>(null, "", "hello")),
            User = Fresh(Pick<string?>(null, "u1", "ü-user")),
        };
    }
}
