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
/// The SQLite store's insert on its own: it binds by index into one prepared statement and skips a parameter whose
/// value is the one it already holds (SQLite keeps bindings from row to row), so every row read back must be the row
/// written, whatever the previous rows held.
/// </summary>
public sealed class SqliteRequestLogStoreTests : IDisposable
{
    private readonly BatchFiles _files = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        _files.Dispose();
    }

    [Fact]
    public async Task Property_every_row_reads_back_as_written_whatever_the_rows_before_it_held()
    {
        // CsCheck's PCG, fixed seed: 40 batches of 1–40 rows whose every field is drawn from two or three values (null
        // among them where the column allows it), so a value repeats, changes, turns null and comes back from row to
        // row and across batches; strings are fresh instances, so only their text can match.
        var options = new GatewayOptions();
        options.RequestLog.Path = Path.Combine(_files.Dir, "log.db");
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
                var row = Row(pcg, start.AddMilliseconds(written.Count), 1_000 + written.Count);
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
                row.Prompt, row.Answer,
            };
            read[i].Should().BeEquivalentTo(expected, $"row {i} reads back as written");
        }
    }

    private static RequestRecord Row(PCG pcg, DateTimeOffset ts, long sequence)
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
        };
    }
}
