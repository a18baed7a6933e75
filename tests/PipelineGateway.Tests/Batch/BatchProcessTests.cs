using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Batch;

/// <summary>The real <c>pgw batch</c> and <c>pgw demo</c> processes.</summary>
public sealed class BatchProcessTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_batch_killed_mid_run_and_run_again_answers_every_custom_id_exactly_once()
    {
        using var files = new BatchFiles();
        var args = await SlowBatchAsync(files);

        using (var first = await StartUntilUnderWayAsync(files, args))
        {
            first.Process.Kill(); // SIGKILL: no chance to clean up
            await first.Process.WaitForExitAsync(Ct);
        }

        var afterKill = CountLines(files.Output);
        afterKill.Should().BeLessThan(Lines, "the kill came in the middle of the run");

        using var second = PgwProcess.Start(files.Dir, args);
        (await second.ExitCodeAsync()).Should().Be(0, second.Stderr);
        second.Stdout.Should().Contain("done by an earlier run");

        var ids = files.AnsweredIds();
        ids.Should().OnlyHaveUniqueItems("no custom_id is written twice");
        ids.Should().BeEquivalentTo(Enumerable.Range(0, Lines).Select(i => $"req-{i}"), "no custom_id is lost");
    }

    [Theory]
    [InlineData("TERM")]
    [InlineData("INT")] // what Ctrl+C sends
    public async Task A_stop_signal_stops_admitting_finishes_in_flight_work_exits_130_and_the_rerun_completes(string signal)
    {
        using var files = new BatchFiles();
        var args = await SlowBatchAsync(files);

        using (var first = await StartUntilUnderWayAsync(files, args))
        {
            PgwProcess.Signal(first.Process, signal);
            (await first.ExitCodeAsync()).Should().Be(130, first.Stderr);
            first.Stdout.Should().Contain("run the same command again to continue");
        }

        var afterStop = files.AnsweredIds();
        afterStop.Should().OnlyHaveUniqueItems().And.HaveCountLessThan(Lines);
        File.ReadAllText(files.Output).Should().EndWith("\n", "a graceful stop leaves no torn line");

        using var second = PgwProcess.Start(files.Dir, args);
        (await second.ExitCodeAsync()).Should().Be(0, second.Stderr);
        files.AnsweredIds().Should().OnlyHaveUniqueItems().And.HaveCount(Lines);
    }

    [Fact]
    public async Task A_missing_input_file_is_a_clear_error_and_no_output_is_created()
    {
        using var files = new BatchFiles();
        using var pgw = PgwProcess.Start(files.Dir, "batch", files.Input, "-o", files.Output);
        (await pgw.ExitCodeAsync()).Should().Be(2);
        pgw.Stderr.Should().Contain("pgw: The input file").And.Contain("does not exist");
        File.Exists(files.Output).Should().BeFalse();
    }

    [Fact]
    public async Task Pgw_batch_answers_responses_lines_with_response_objects()
    {
        using var files = new BatchFiles();
        File.WriteAllLines(files.Input,
        [
            """{"custom_id":"r1","method":"POST","url":"/v1/responses","body":{"model":"gpt-4o-mini","input":"Say hello.","instructions":"Be brief."}}""",
            """{"custom_id":"c1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}}""",
            """{"custom_id":"r2","method":"POST","url":"/v1/responses","body":{"model":"gpt-4o-mini","input":"and then?","previous_response_id":"resp_1"}}""",
        ]);
        using var pgw = PgwProcess.Start(files.Dir, "batch", files.Input, "-o", files.Output);
        (await pgw.ExitCodeAsync()).Should().Be(0, pgw.Stderr);

        var output = File.ReadAllLines(files.Output).Select(l => JsonDocument.Parse(l).RootElement).ToDictionary(l => l.GetProperty("custom_id").GetString()!);
        output.Keys.Should().BeEquivalentTo(["r1", "c1"]);
        var response = output["r1"].GetProperty("response").GetProperty("body");
        (response.GetProperty("object").GetString(), response.GetProperty("status").GetString()).Should().Be(("response", "completed"));
        response.GetProperty("output")[0].GetProperty("content")[0].GetProperty("text").GetString().Should().NotBeNullOrEmpty();
        output["c1"].GetProperty("response").GetProperty("body").GetProperty("object").GetString().Should().Be("chat.completion");
        var error = JsonDocument.Parse(File.ReadAllLines(files.Errors).Single()).RootElement;
        (error.GetProperty("custom_id").GetString(), error.GetProperty("error").GetProperty("code").GetString()).Should().Be(("r2", "invalid_body"));
    }

    [Fact]
    public async Task The_demo_shows_fallbacks_cache_hits_and_rate_limiting_in_its_metrics()
    {
        using var files = new BatchFiles();
        using var demo = PgwProcess.Start(files.Dir, "demo", "--output", files.Dir, "--json");
        (await demo.ExitCodeAsync()).Should().Be(0, demo.Stderr);

        var stdout = demo.Stdout;
        stdout.Should().Contain("progress: 240/240");
        var json = stdout[stdout.IndexOf("\n{", StringComparison.Ordinal)..(stdout.LastIndexOf("\n}", StringComparison.Ordinal) + 2)];
        var metrics = JsonDocument.Parse(json).RootElement;
        metrics.GetProperty("total_requests").GetInt64().Should().Be(240);
        metrics.GetProperty("cached_requests").GetInt64().Should().BeGreaterThan(0, "the sample has duplicate prompts");
        metrics.GetProperty("fallbacks").GetInt64().Should().BeGreaterThan(0, "the primary is flaky");
        metrics.GetProperty("rate_limit_waits").GetInt64().Should().BeGreaterThan(0, "the rate limit is tight");
        metrics.GetProperty("failed_requests").GetInt64().Should().Be(0);
        files.AnsweredIds().Should().HaveCount(240).And.OnlyHaveUniqueItems();
    }

    [Fact]
    public async Task The_demo_ends_with_a_compact_summary_of_the_metrics_and_per_provider_figures()
    {
        using var files = new BatchFiles();
        using var demo = PgwProcess.Start(files.Dir, "demo", "--output", files.Dir);
        (await demo.ExitCodeAsync()).Should().Be(0, demo.Stderr);

        var lines = demo.Stdout.Split('\n');
        lines.Should().Contain(l => l.Contains("Gateway metrics", StringComparison.Ordinal));
        var header = Array.FindIndex(lines, l => l.Contains("| total |", StringComparison.Ordinal));
        header.Should().BePositive("the totals table is drawn in ASCII when the output is redirected");
        var totals = lines[header + 2].Split('|', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        (totals[0], totals[1], totals[3]).Should().Be(("240", "240", "0"), "total, succeeded, failed");
        totals[4].Should().EndWith("%");
        totals[7].Should().StartWith("$");
        lines.Should().Contain(l => l.Contains("Per provider", StringComparison.Ordinal));
        lines.Should().Contain(l => l.TrimStart().StartsWith("| sim-openai", StringComparison.Ordinal) && l.Contains('%'));
        demo.Stdout.Should().NotContain("\"total_requests\"", "the full snapshot is for --json");
        lines.Length.Should().BeLessThan(40, "compact: not a 100-line dump");
    }

    private const int Lines = 400;

    /// <summary>Writes 400 lines and the slow config; returns the <c>pgw batch</c> arguments.</summary>
    private static async Task<string[]> SlowBatchAsync(BatchFiles files)
    {
        files.WriteRequests(Lines);
        var config = await files.WriteSlowConfigAsync(Ct);
        return ["batch", files.Input, "-o", files.Output, "--config", config, "--concurrency", "16"];
    }

    /// <summary>Starts a run and returns once it has written 40 results and is still going.</summary>
    private static async Task<PgwProcess> StartUntilUnderWayAsync(BatchFiles files, string[] args)
    {
        var run = PgwProcess.Start(files.Dir, args);
        await Wait.Until(() => File.Exists(files.Output) && CountLines(files.Output) >= 40 || run.Process.HasExited, "the first run has written 40 results", 60_000);
        run.Process.HasExited.Should().BeFalse($"the run must still be going when it is stopped; stderr: {run.Stderr}");
        return run;
    }

    private static int CountLines(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var n = 0;
        int b;
        while ((b = stream.ReadByte()) >= 0)
        {
            n += b == '\n' ? 1 : 0;
        }

        return n;
    }
}
