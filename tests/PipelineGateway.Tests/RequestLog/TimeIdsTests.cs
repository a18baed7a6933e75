using CsCheck;
using FluentAssertions;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;
using PipelineGateway.Sqlite;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.RequestLog;

/// <summary>
/// The request log's rows are ordered by their request's time in their id (schema 4, docs/observability.md): a time
/// bound is an id bound and the log keeps no index on <c>ts</c>. Rows come to the writer out of time order (a row is
/// written when its request ends, stamped when it began), two writers can share a log, and a log written before keeps
/// its rows and its index until the retention has taken them.
/// </summary>
public sealed class TimeIdsTests : IDisposable
{
    private static readonly DateTimeOffset Start = new(2026, 12, 7, 12, 0, 0, TimeSpan.Zero);
    private readonly LogFiles _files = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string Db => _files.Db;

    public void Dispose() => _files.Dispose();

    private async Task<SqliteRequestLogStore> OpenAsync()
    {
        var options = new GatewayOptions();
        options.RequestLog.Path = Db;
        var store = new SqliteRequestLogStore(Options.Create(options));
        await store.InitializeAsync(Ct);
        return store;
    }

    private static RequestRecord Row(DateTimeOffset ts, string key, string id) => new()
    {
        Timestamp = ts,
        RequestId = id,
        KeyId = key,
        Model = "m",
        Status = 200,
        Cost = 1m,
        AttemptList = [],
    };

    private static async Task<List<RequestRecord>> AllAsync(SqliteRequestLogStore store, RequestLogQuery query)
    {
        var read = new List<RequestRecord>();
        long? before = null;
        do
        {
            var page = await store.QueryAsync(new RequestLogQuery { KeyId = query.KeyId, Since = query.Since, Until = query.Until, Limit = 7, Before = before }, Ct);
            read.AddRange(page.Rows.Select(r => r.Request));
            before = page.NextCursor;
        }
        while (before is not null);

        return read;
    }

    private async Task<bool> HasTimeIndexAsync()
    {
        await using var check = new SqliteConnection($"Data Source={Db};Mode=ReadOnly;Pooling=false");
        await check.OpenAsync(Ct);
        await using var cmd = check.CreateCommand();
        cmd.CommandText = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'requests_ts'";
        return Convert.ToInt64(await cmd.ExecuteScalarAsync(Ct), System.Globalization.CultureInfo.InvariantCulture) == 1;
    }

    [Fact]
    public async Task Property_time_bounds_spend_and_the_retention_select_rows_by_their_time_whatever_order_they_came_in()
    {
        // CsCheck's PCG, fixed seed: 30 batches of 1–30 rows stamped anywhere in a 20-second window (many in one
        // millisecond), written in the order drawn — not the time order — under two keys; then 40 queries with bounds
        // and a key drawn from the same window, each paged 7 rows at a time.
        using var store = await OpenAsync();
        var pcg = new PCG(11, 20261207);
        var written = new List<RequestRecord>();
        for (var batch = 0; batch < 30; batch++)
        {
            var rows = Enumerable.Range(0, Gen.Int[1, 30].Generate(pcg, null, out _))
                .Select(i => Row(Start.AddMilliseconds(Gen.Int[0, 19_999].Generate(pcg, null, out _)), Gen.OneOf("a", "b").Generate(pcg, null, out _), $"req_{written.Count}_{pcg.Next()}"))
                .ToList();
            written.AddRange(rows);
            await store.WriteAsync(rows, Ct);
        }

        (await HasTimeIndexAsync()).Should().BeFalse("a new log keeps no index on ts");
        store.TimeIds.Should().BeTrue();
        var all = await AllAsync(store, new RequestLogQuery());
        all.Select(r => r.RequestId).Should().BeEquivalentTo(written.Select(r => r.RequestId), "every row is kept, ids taken in one millisecond too");
        all.Select(r => r.Timestamp).Should().BeInDescendingOrder("the newest request first, whatever order the rows were written in");
        (await store.QueryAsync(new RequestLogQuery { Limit = 1000 }, Ct)).Rows.Should().OnlyContain(r => r.Id < (1L << 53),
            "an id (and the paging cursor) is a JSON number JavaScript reads exactly");

        // A bound is none, any millisecond of the window, or exactly a row's time (the edge: a row there is in "since",
        // out of "until").
        DateTimeOffset? Bound() => Gen.Int[0, 2].Generate(pcg, null, out _) switch
        {
            0 => null,
            1 => Start.AddMilliseconds(Gen.Int[-10, 20_010].Generate(pcg, null, out _)),
            _ => written[Gen.Int[0, written.Count - 1].Generate(pcg, null, out _)].Timestamp,
        };

        for (var q = 0; q < 40; q++)
        {
            var since = Bound();
            var until = Bound();
            var key = Gen.OneOf<string?>(null, "a", "b").Generate(pcg, null, out _);
            var expected = written.Where(r => (since is null || r.Timestamp >= since) && (until is null || r.Timestamp < until) && (key is null || r.KeyId == key)).Select(r => r.RequestId);
            var read = await AllAsync(store, new RequestLogQuery { KeyId = key, Since = since, Until = until });
            read.Select(r => r.RequestId).Should().BeEquivalentTo(expected, $"since {since:O}, until {until:O}, key {key}");

            var from = since ?? Start;
            var spend = await store.SpendAsync(SpendGrouping.Key, from, Ct);
            spend.ToDictionary(s => s.Group, s => s.Requests).Should().BeEquivalentTo(
                written.Where(r => r.Timestamp >= from).GroupBy(r => r.KeyId).ToDictionary(g => g.Key, g => (long)g.Count()), $"spend since {from:O}");
        }

        // The retention takes exactly the rows begun before its cutoff, oldest first, in chunks.
        var cutoff = written[written.Count / 2].Timestamp;
        var deleted = 0;
        for (int chunk; (chunk = await store.DeleteOlderThanAsync(cutoff, 50, Ct)) > 0;)
        {
            deleted += chunk;
        }

        deleted.Should().Be(written.Count(r => r.Timestamp < cutoff));
        (await AllAsync(store, new RequestLogQuery())).Select(r => r.RequestId).Should().BeEquivalentTo(written.Where(r => r.Timestamp >= cutoff).Select(r => r.RequestId));
    }

    [Fact]
    public async Task A_log_written_before_time_ids_keeps_its_rows_and_its_time_index_until_the_retention_has_taken_them()
    {
        // A schema-3 log: ids 1, 2 in the order written, and the ts index.
        Directory.CreateDirectory(Path.GetDirectoryName(Db)!);
        var now = DateTimeOffset.UtcNow;
        await using (var old = new SqliteConnection($"Data Source={Db};Pooling=false"))
        {
            await old.OpenAsync(Ct);
            await using var create = old.CreateCommand();
            create.CommandText = LogFiles.OldRequestsTable(", usage_estimated INTEGER NOT NULL DEFAULT 0, user_id TEXT") + """
                CREATE INDEX requests_ts ON requests (ts);
                CREATE INDEX requests_key_ts ON requests (key_id, ts);
                INSERT INTO requests (ts, request_id, key_id, model, status, prompt_tokens, completion_tokens, cost_nano, cost_saved_nano, cached, coalesced, stream, latency_ms, priority)
                VALUES ($weeks, 'req_weeks_old', 'k', 'm', 200, 3, 1, 1000000000, 0, 0, 0, 0, 1.5, 'interactive'),
                       ($hour, 'req_hour_old', 'k', 'm', 200, 3, 1, 1000000000, 0, 0, 0, 0, 1.5, 'interactive');
                PRAGMA user_version = 3;
                """;
            create.Parameters.AddWithValue("$weeks", now.AddDays(-40).ToUnixTimeMilliseconds());
            create.Parameters.AddWithValue("$hour", now.AddHours(-1).ToUnixTimeMilliseconds());
            await create.ExecuteNonQueryAsync(Ct);
        }

        SqliteConnection.ClearAllPools();
        using var store = await OpenAsync();
        await store.WriteAsync([Row(now, "k", "req_new")], Ct);

        async Task<IEnumerable<string>> SinceAsync(DateTimeOffset since) => (await AllAsync(store, new RequestLogQuery { Since = since })).Select(r => r.RequestId);
        (await SinceAsync(now.AddHours(-2))).Should().Equal(["req_new", "req_hour_old"], "the old rows are found by their time");
        (await AllAsync(store, new RequestLogQuery { Until = now })).Select(r => r.RequestId).Should().Equal("req_hour_old", "req_weeks_old");
        (await store.SpendAsync(SpendGrouping.Key, now.AddHours(-2), Ct)).Single().Requests.Should().Be(2);
        (await HasTimeIndexAsync()).Should().BeTrue("the old rows are read by time through their index while they last");
        store.TimeIds.Should().BeFalse();

        (await store.DeleteOlderThanAsync(now.AddDays(-30), 100, Ct)).Should().Be(1);
        (await HasTimeIndexAsync()).Should().BeTrue("one old row is left");

        (await store.DeleteOlderThanAsync(now.AddMinutes(-30), 100, Ct)).Should().Be(1);
        (await HasTimeIndexAsync()).Should().BeFalse("the last old row is gone: time ids from here on");
        store.TimeIds.Should().BeTrue("time bounds are read from ids now");
        (await SinceAsync(now.AddHours(-2))).Should().Equal("req_new");
        (await SinceAsync(now.AddMilliseconds(1))).Should().BeEmpty();
        (await store.SpendAsync(SpendGrouping.Key, now.AddHours(-2), Ct)).Single().Requests.Should().Be(1);

        // Opened again (a restart): the log is of time ids, and stays without the index.
        store.Dispose();
        SqliteConnection.ClearAllPools();
        using var reopened = await OpenAsync();
        (await HasTimeIndexAsync()).Should().BeFalse();
        (await AllAsync(reopened, new RequestLogQuery { Since = now.AddHours(-2) })).Select(r => r.RequestId).Should().Equal("req_new");
    }

    [Fact]
    public async Task A_millisecond_with_more_rows_than_ids_keeps_them_all_and_bounds_and_the_retention_still_find_them()
    {
        // A frozen test clock stamps every row with one millisecond: past its 2,048 ids, rows take later ones.
        using var store = await OpenAsync();
        var rows = Enumerable.Range(0, 2_100).Select(i => Row(Start, "a", $"req_{i}")).ToList();
        await store.WriteAsync(rows, Ct);
        await store.WriteAsync([Row(Start.AddMilliseconds(1), "a", "req_next")], Ct);

        var within = await AllAsync(store, new RequestLogQuery { Since = Start, Until = Start.AddMilliseconds(1) });
        within.Should().HaveCount(2_100, "the rows past the millisecond's ids are found by their own time");
        (await AllAsync(store, new RequestLogQuery { Since = Start.AddMilliseconds(1) })).Select(r => r.RequestId).Should().Equal("req_next");

        var deleted = 0;
        for (int chunk; (chunk = await store.DeleteOlderThanAsync(Start.AddMilliseconds(1), 500, Ct)) > 0;)
        {
            deleted += chunk;
        }

        deleted.Should().Be(2_100);
        (await AllAsync(store, new RequestLogQuery())).Select(r => r.RequestId).Should().Equal("req_next");
    }

    [Fact]
    public async Task Two_writers_of_one_log_that_pick_the_same_id_in_one_millisecond_keep_both_rows()
    {
        // `pgw batch --redis` workers beside a gateway write one log: each row's id is its millisecond and a sequence,
        // and a writer that finds its id taken takes the next.
        using var first = await OpenAsync();
        using var second = await OpenAsync();
        first.NextSequence = 5;
        second.NextSequence = 5;

        await first.WriteAsync([Row(Start, "a", "req_first")], Ct);
        await second.WriteAsync([Row(Start, "b", "req_second"), Row(Start, "b", "req_third")], Ct);

        (await AllAsync(first, new RequestLogQuery { Since = Start, Until = Start.AddMilliseconds(1) })).Select(r => r.RequestId)
            .Should().BeEquivalentTo(["req_first", "req_second", "req_third"]);
    }
}
