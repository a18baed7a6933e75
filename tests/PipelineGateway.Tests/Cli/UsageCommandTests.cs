using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Cli;

/// <summary>The real <c>pgw</c>: <c>pgw batch</c> keeps the request log beside its config, <c>pgw usage</c> reads it.</summary>
public sealed class UsageCommandTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private const string FastConfig = """
        {
          "Gateway": {
            "Providers": [ { "Name": "sim", "Type": "Simulated", "Simulated": { "LatencyMs": 0, "Seed": 1 } } ],
            "Models": [ { "Name": "m", "Deployments": [ { "Provider": "sim", "Model": "gpt-4o-mini" } ] } ]
          }
        }
        """;

    private static async Task<string> RunOk(BatchFiles files, params string[] args)
    {
        using var pgw = PgwProcess.Start(files.Dir, args);
        (await pgw.ExitCodeAsync(60_000)).Should().Be(0, pgw.Stderr);
        return pgw.Stdout;
    }

    /// <summary>Writes the config and <paramref name="lines"/> requests, runs <c>pgw batch</c> (which logs them); returns the config's path.</summary>
    private static async Task<string> LoggedBatchAsync(BatchFiles files, int lines)
    {
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, FastConfig, Ct);
        await File.WriteAllLinesAsync(files.Input, Enumerable.Range(0, lines).Select(i => BatchFiles.RequestLine($"req-{i}", text: $"line {i}")), Ct);
        await RunOk(files, "batch", files.Input, "-o", files.Output, "--config", config);
        return config;
    }

    [Fact]
    public async Task A_batch_is_logged_beside_its_config_and_pgw_usage_prints_who_spent_what()
    {
        using var files = new BatchFiles();
        var config = await LoggedBatchAsync(files, 5);
        File.Exists(Path.Combine(files.Dir, "pgw-data", "gateway.db")).Should().BeTrue("the log is beside the configuration file");

        var table = await RunOk(files, "usage", "--config", config, "--by", "model", "--since", "1h");
        var lines = table.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.Should().Contain(l => l.StartsWith("MODEL", StringComparison.Ordinal) && l.Contains("COST USD", StringComparison.Ordinal));
        lines.Single(l => l.StartsWith("m ", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1].Should().Be("5");
        lines.Should().Contain(l => l.StartsWith("TOTAL", StringComparison.Ordinal));

        var byDay = await RunOk(files, "usage", "--db", Path.Combine(files.Dir, "pgw-data", "gateway.db"), "--by", "day");
        byDay.Should().Contain(DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>
    /// <c>pgw usage --by user</c>: spend per end user the requests named; a name's control characters never reach the
    /// terminal (shown as '?') and a long one is cut, so one caller's name neither drives the terminal nor widens the table.
    /// </summary>
    [Fact]
    public async Task Pgw_usage_by_user_prints_each_end_users_spend_safely()
    {
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, FastConfig, Ct);
        static string Line(string id, string? user) =>
            "{\"custom_id\":\"" + id + "\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\","
            + (user is null ? string.Empty : "\"user\":\"" + user + "\",")
            + "\"messages\":[{\"role\":\"user\",\"content\":\"" + id + "\"}]}}";
        await File.WriteAllLinesAsync(files.Input, [Line("a1", "alice"), Line("a2", "alice"), Line("e1", "eve\\u001b[31m\\nfake"), Line("l1", new string('l', 300)), Line("n1", null)], Ct);
        await RunOk(files, "batch", files.Input, "-o", files.Output, "--config", config);

        var table = await RunOk(files, "usage", "--config", config, "--by", "user", "--since", "1h");

        table.Should().NotContain("\u001b").And.NotContain("\nfake");
        var lines = table.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.Should().Contain(l => l.StartsWith("USER", StringComparison.Ordinal));
        lines.Single(l => l.StartsWith("alice ", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1].Should().Be("2");
        lines.Should().ContainSingle(l => l.StartsWith("eve?[31m?fake ", StringComparison.Ordinal));
        lines.Should().ContainSingle(l => l.StartsWith(new string('l', 47) + "… ", StringComparison.Ordinal));
        lines.Should().ContainSingle(l => l.StartsWith("(no user) ", StringComparison.Ordinal));
    }

    /// <summary>
    /// <c>pgw usage</c> only reads: a log the caller may not write (another user's, a read-only mount; here immutable,
    /// file and directory, which binds root too) is read, and its file is left exactly as it was.
    /// </summary>
    [Fact]
    public async Task Pgw_usage_reads_a_log_it_may_not_write_and_changes_nothing()
    {
        using var files = new BatchFiles();
        var config = await LoggedBatchAsync(files, 4);
        var dir = Path.Combine(files.Dir, "pgw-data");
        var db = Path.Combine(dir, "gateway.db");
        var before = await File.ReadAllBytesAsync(db, Ct);

        ImmutableFiles.MakeOrSkip(db, dir);
        try
        {
            var table = await RunOk(files, "usage", "--config", config, "--by", "model", "--since", "1h");
            table.Split('\n', StringSplitOptions.RemoveEmptyEntries).Single(l => l.StartsWith("m ", StringComparison.Ordinal))
                .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1].Should().Be("4");
        }
        finally
        {
            ImmutableFiles.Set(false, db, dir);
        }

        (await File.ReadAllBytesAsync(db, Ct)).Should().Equal(before);
    }

    [Theory]
    [InlineData("not SQLite", "not a usable SQLite database")]
    [InlineData("SQLite without the table", "not a request log")]
    public async Task Usage_on_a_file_that_is_not_a_request_log_is_one_line_naming_it_and_exit_code_1(string kind, string says)
    {
        using var files = new BatchFiles();
        var path = Path.Combine(files.Dir, "other.db");
        if (kind == "not SQLite")
        {
            await File.WriteAllTextAsync(path, new string('#', 4096), Ct);
        }
        else
        {
            await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path};Pooling=False");
            await connection.OpenAsync(Ct);
            await using var create = connection.CreateCommand();
            create.CommandText = "CREATE TABLE notes (text TEXT)";
            await create.ExecuteNonQueryAsync(Ct);
        }

        var before = await File.ReadAllBytesAsync(path, Ct);
        using var usage = PgwProcess.Start(files.Dir, "usage", "--db", path);

        (await usage.ExitCodeAsync(60_000)).Should().Be(1);
        var error = usage.Stderr.Trim();
        error.Should().Contain(path).And.Contain(says);
        error.Split('\n').Should().ContainSingle("one line, no stack trace: " + error);
        (await File.ReadAllBytesAsync(path, Ct)).Should().Equal(before, "a reader changes nothing, not even a file it refuses");
    }

    [Fact]
    public async Task No_log_writes_nothing_and_usage_on_a_missing_file_says_where_it_looked()
    {
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, FastConfig, Ct);
        await File.WriteAllLinesAsync(files.Input, [BatchFiles.RequestLine("req-0")], Ct);

        await RunOk(files, "batch", files.Input, "-o", files.Output, "--config", config, "--no-log");
        Directory.Exists(Path.Combine(files.Dir, "pgw-data")).Should().BeFalse();

        using var usage = PgwProcess.Start(files.Dir, "usage", "--config", config);
        (await usage.ExitCodeAsync(60_000)).Should().Be(1);
        usage.Stderr.Should().Contain(Path.Combine(files.Dir, "pgw-data", "gateway.db")).And.Contain("No request log");
    }

    [Fact]
    public async Task Serve_with_an_unusable_log_path_is_one_line_naming_the_setting_and_exit_code_1()
    {
        using var files = new BatchFiles();
        var notADatabase = Path.Combine(files.Dir, "notes.txt");
        await File.WriteAllTextAsync(notADatabase, new string('#', 4096), Ct);
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, FastConfig.Replace("\"Models\"", $"\"RequestLog\": {{ \"Path\": \"{notADatabase}\" }},\n    \"Models\"", StringComparison.Ordinal), Ct);

        using var serve = PgwProcess.Start(files.Dir, "serve", "--urls", "http://127.0.0.1:0", "--config", config);

        (await serve.ExitCodeAsync(60_000)).Should().Be(1);
        var error = serve.Stderr.Trim();
        error.Should().Contain("Gateway:RequestLog:Path").And.Contain(notADatabase).And.Contain("not a usable SQLite database");
        error.Split('\n').Should().ContainSingle("one line, no stack trace: " + error);
    }
}
