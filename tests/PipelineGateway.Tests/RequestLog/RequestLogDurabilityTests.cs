using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using FluentAssertions;
using Microsoft.Data.Sqlite;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.RequestLog;

/// <summary>
/// The real <c>pgw serve</c> under load, stopped two ways, and its log compared with what the clients received:
/// after SIGTERM nothing answered is missing; after SIGKILL only requests answered in the last flush interval may be.
/// </summary>
public sealed partial class RequestLogDurabilityTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // The default interval, the bound the docs state; batches are never full here (MaxBatch 100,000), so only the
    // interval makes the writer commit: what is measured is that bound, not a batch filling up first.
    private static readonly TimeSpan FlushInterval = TimeSpan.FromSeconds(1);

    private static string Config(string db) => $$"""
        {
          "Gateway": {
            "Providers": [ { "Name": "sim", "Type": "Simulated", "Workers": 64, "Simulated": { "LatencyMs": 2 } } ],
            "Models": [ { "Name": "m", "Deployments": [ { "Provider": "sim", "Model": "m" } ] } ],
            "RequestLog": { "MaxBatch": 100000, "Path": "{{db.Replace("\\", "\\\\", StringComparison.Ordinal)}}" }
          }
        }
        """;

    private sealed record Answer(string RequestId, long At);

    private static async Task<(ConcurrentBag<Answer> Answers, Func<Task> Stop)> LoadAsync(Uri address, int clients)
    {
        var answers = new ConcurrentBag<Answer>();
        using var stop = new CancellationTokenSource();
        var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients }) { BaseAddress = address, Timeout = TimeSpan.FromSeconds(30) };
        var n = 0;
        var loops = Enumerable.Range(0, clients).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var i = Interlocked.Increment(ref n);
                    using var body = new StringContent($$"""{"model":"m","messages":[{"role":"user","content":"request {{i}}"}]}""", Encoding.UTF8, "application/json");
                    using var response = await http.PostAsync("v1/chat/completions", body, CancellationToken.None);
                    if (response.StatusCode == HttpStatusCode.OK && response.Headers.TryGetValues("x-gateway-request-id", out var ids))
                    {
                        await response.Content.ReadAsByteArrayAsync(CancellationToken.None);
                        answers.Add(new Answer(ids.Single(), Stopwatch.GetTimestamp()));
                    }
                }
                catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or IOException)
                {
                    return; // the server is gone
                }
            }
        })).ToArray();
        var stopper = stop;
        await Task.Yield();
        return (answers, async () =>
        {
            await Task.WhenAll(loops);
            http.Dispose();
        });
    }

    private static HashSet<string> Logged(string db)
    {
        using var connection = new SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False");
        connection.Open();
        using var cmd = connection.CreateCommand();
        cmd.CommandText = "SELECT request_id FROM requests";
        using var reader = cmd.ExecuteReader();
        var ids = new HashSet<string>(StringComparer.Ordinal);
        while (reader.Read())
        {
            ids.Add(reader.GetString(0));
        }

        return ids;
    }

    private static async Task<(PgwProcess Serve, Uri Address, string Db, BatchFiles Files)> StartServeAsync()
    {
        var files = new BatchFiles();
        var db = Path.Combine(files.Dir, "pgw-data", "gateway.db");
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, Config(db), Ct);
        var serve = PgwProcess.Start(files.Dir, "serve", "--urls", "http://127.0.0.1:0", "--config", config);
        await Wait.Until(() => Listening().IsMatch(serve.Stdout) || serve.Process.HasExited, "pgw serve is listening", 60_000);
        serve.Process.HasExited.Should().BeFalse(serve.Stderr);
        return (serve, new Uri(Listening().Match(serve.Stdout).Groups[1].Value), db, files);
    }

    [Fact]
    public async Task After_SIGTERM_under_load_every_answered_request_is_in_the_log()
    {
        var (serve, address, db, files) = await StartServeAsync();
        using var _ = files;
        using var __ = serve;
        var (answers, stop) = await LoadAsync(address, clients: 16);
        await Wait.Until(() => answers.Count >= 1_000, "a thousand answers", 60_000);

        PgwProcess.Signal(serve.Process, "TERM");
        (await serve.ExitCodeAsync(60_000)).Should().Be(0, serve.Stderr);
        await stop();

        var logged = Logged(db);
        var missing = answers.Where(a => !logged.Contains(a.RequestId)).ToList();
        missing.Should().BeEmpty($"every one of the {answers.Count} answered requests is in the log after SIGTERM");
        SqliteConnection.ClearAllPools();
    }

    [Fact]
    public async Task After_SIGKILL_under_load_only_requests_answered_in_the_last_flush_interval_can_be_missing()
    {
        var (serve, address, db, files) = await StartServeAsync();
        using var _ = files;
        using var __ = serve;
        var (answers, stop) = await LoadAsync(address, clients: 16);
        await Wait.Until(() => answers.Count >= 1_000, "a thousand answers", 60_000);
        await Wait.Until(() => File.Exists(db) && Logged(db).Count > 0, "the writer committed a batch", 60_000);

        // Then load for 2.5 intervals of wall-clock time (the bound under test is wall-clock time in a real process):
        // the kill lands between commits, wherever the writer's cadence puts them.
        var firstCommit = Stopwatch.GetTimestamp();
        await Wait.Until(() => Stopwatch.GetElapsedTime(firstCommit) >= FlushInterval * 2.5, "steady load past the first commit", 60_000);

        var killedAt = Stopwatch.GetTimestamp();
        PgwProcess.Signal(serve.Process, "KILL");
        await serve.ExitCodeAsync(60_000);
        await stop();

        var logged = Logged(db);
        var missing = answers.Where(a => !logged.Contains(a.RequestId)).ToList();
        var oldestMissing = missing.Count == 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(missing.Min(a => a.At), killedAt);

        // The bound: a row waits at most FlushInterval before its commit starts; the commit itself (and the answer's
        // trip to the client) gets a little slack on a loaded 2-core machine.
        oldestMissing.Should().BeLessThan(FlushInterval + TimeSpan.FromMilliseconds(500),
            $"{missing.Count} of {answers.Count} answered requests are missing; the oldest was answered {oldestMissing.TotalMilliseconds:F0} ms before the kill");
        logged.Should().NotBeEmpty();
        SqliteConnection.ClearAllPools();
    }

    [Fact]
    public async Task A_full_disk_never_stops_the_gateway_the_lost_rows_are_counted_and_it_says_so_once()
    {
        using var files = new BatchFiles();
        var db = Path.Combine(files.Dir, "pgw-data", "gateway.db");
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, Config(db).Replace("\"MaxBatch\": 100000", "\"MaxBatch\": 200, \"Capacity\": 1000", StringComparison.Ordinal), Ct);

        // Any file this pgw writes may grow to 256 KB, no further: past it a write fails as on a full disk.
        using var serve = PgwProcess.Start(files.Dir, fileSizeLimitKb: 256, "serve", "--urls", "http://127.0.0.1:0", "--config", config);
        await Wait.Until(() => Listening().IsMatch(serve.Stdout) || serve.Process.HasExited, "pgw serve is listening", 60_000);
        serve.Process.HasExited.Should().BeFalse(serve.Stderr);
        using var http = new HttpClient { BaseAddress = new Uri(Listening().Match(serve.Stdout).Groups[1].Value) };

        var answered = 0;
        for (var i = 0; i < 20_000 && !Failing(); i++)
        {
            using var body = new StringContent($$"""{"model":"m","messages":[{"role":"user","content":"request {{i}} {{new string('x', 200)}}"}]}""", Encoding.UTF8, "application/json");
            (await http.PostAsync("v1/chat/completions", body, Ct)).StatusCode.Should().Be(HttpStatusCode.OK, "the gateway keeps answering");
            answered++;
        }

        Failing().Should().BeTrue($"the log filled its 256 KB after {answered} requests");
        for (var i = 0; i < 1_500; i++)
        {
            using var body = new StringContent("""{"model":"m","messages":[{"role":"user","content":"after"}]}""", Encoding.UTF8, "application/json");
            (await http.PostAsync("v1/chat/completions", body, Ct)).StatusCode.Should().Be(HttpStatusCode.OK, "and keeps answering while the disk is full");
        }

        await Wait.Until(() => Stats(http).GetProperty("lost").GetInt64() > 0, "rows past the capacity are counted as lost");
        PgwProcess.Signal(serve.Process, "TERM");
        (await serve.ExitCodeAsync(60_000)).Should().Be(0, serve.Stderr);
        var said = (serve.Stdout + serve.Stderr).Split('\n').Count(l => l.Contains("request log cannot be written", StringComparison.Ordinal));
        said.Should().Be(1, "one message for the outage: " + serve.Stdout);
        SqliteConnection.ClearAllPools();

        bool Failing() => Stats(http).GetProperty("failing").GetBoolean();
    }

    private static System.Text.Json.JsonElement Stats(HttpClient http) =>
        System.Text.Json.JsonDocument.Parse(http.GetStringAsync("v1/gateway/metrics").GetAwaiter().GetResult()).RootElement.GetProperty("request_log");

    [GeneratedRegex(@"listening on (http://\S+/)")]
    private static partial Regex Listening();
}
