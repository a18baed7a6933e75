using Microsoft.Extensions.DependencyInjection;
using System.Collections.Concurrent;
using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Batch;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Batch;

public sealed class BatchRunnerTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static BatchOptions Options(BatchFiles files, int concurrency = 8, bool retryFailed = false) => new()
    {
        InputPath = files.Input,
        OutputPath = files.Output,
        Concurrency = concurrency,
        RetryFailed = retryFailed,
    };

    [Fact]
    public async Task Every_line_is_answered_once_in_the_OpenAI_batch_output_format()
    {
        using var files = new BatchFiles();
        files.WriteRequests(50);
        await using var gateway = await TestGateway.With(new FakeProvider("p")).StartAsync(Ct);

        var summary = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        summary.Should().BeEquivalentTo(new { Lines = 50L, Succeeded = 50L, Failed = 0L, BadLines = 0L, AlreadyDone = 0L, Remaining = 0L, Stopped = false });
        var records = files.OutputRecords;
        records.Select(r => r.GetProperty("custom_id").GetString()).Should().BeEquivalentTo(Enumerable.Range(0, 50).Select(i => $"req-{i}"));
        var first = records.Single(r => r.GetProperty("custom_id").GetString() == "req-7");
        first.EnumerateObject().Select(p => p.Name).Should().Equal("id", "custom_id", "response", "error");
        first.GetProperty("id").GetString().Should().Be("batch_req_8", "the id names the input line");
        first.GetProperty("error").ValueKind.Should().Be(JsonValueKind.Null);
        var response = first.GetProperty("response");
        response.GetProperty("status_code").GetInt32().Should().Be(200);
        response.GetProperty("request_id").GetString().Should().StartWith("req_");
        var body = response.GetProperty("body");
        body.GetProperty("object").GetString().Should().Be("chat.completion");
        body.GetProperty("model").GetString().Should().Be("m");
        body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString().Should().Be("ok");
        body.GetProperty("choices")[0].GetProperty("finish_reason").GetString().Should().Be("stop");
        body.GetProperty("usage").GetProperty("total_tokens").GetInt32().Should().Be(4);
        File.Exists(files.Errors).Should().BeTrue("the errors file is created even when empty");
        files.ErrorRecords.Should().BeEmpty();
    }

    [Fact]
    public async Task Bad_lines_are_reported_with_their_line_number_and_the_rest_proceeds()
    {
        using var files = new BatchFiles();
        File.WriteAllLines(files.Input,
        [
            BatchFiles.RequestLine("a"),
            "{not json",
            """{"method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"x"}]}}""",
            BatchFiles.RequestLine("a"),
            """{"custom_id":"e","method":"POST","url":"/v1/responses","body":{"model":"m","input":"x"}}""",
            """{"custom_id":"f","method":"GET","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}""",
            """{"custom_id":"g","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}}""",
            """{"custom_id":"h","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":"oops"}}""",
            "",
            BatchFiles.RequestLine("b"),
            BatchFiles.RequestLine("unknown-model", model: "nope"),
        ]);
        await using var gateway = await TestGateway.With(new FakeProvider("p")).StartAsync(Ct);

        var summary = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        summary.Should().BeEquivalentTo(new { Lines = 10L, Succeeded = 2L, Failed = 1L, BadLines = 7L, Remaining = 0L });
        files.OutputRecords.Select(r => r.GetProperty("custom_id").GetString()).Should().BeEquivalentTo("a", "b");
        var bad = files.ErrorRecords.Where(r => r.GetProperty("response").ValueKind == JsonValueKind.Null)
            .ToDictionary(r => r.GetProperty("error").GetProperty("line").GetInt64(), r => r.GetProperty("error").GetProperty("code").GetString());
        bad.Should().Equal(new Dictionary<long, string?>
        {
            [2] = "invalid_json",
            [3] = "missing_custom_id",
            [4] = "duplicate_custom_id",
            [5] = "unsupported_url",
            [6] = "unsupported_method",
            [7] = "invalid_body",
            [8] = "invalid_body",
        });
        var failed = files.ErrorRecords.Single(r => r.GetProperty("response").ValueKind == JsonValueKind.Object);
        failed.GetProperty("custom_id").GetString().Should().Be("unknown-model");
        failed.GetProperty("id").GetString().Should().Be("batch_req_11");
        failed.GetProperty("response").GetProperty("status_code").GetInt32().Should().Be(404);
        failed.GetProperty("response").GetProperty("body").GetProperty("error").GetProperty("code").GetString().Should().Be("model_not_found");
        failed.GetProperty("error").ValueKind.Should().Be(JsonValueKind.Null, "OpenAI's files set error only for a request that failed without an HTTP answer");
        var id = failed.GetProperty("response").GetProperty("request_id").GetString();
        id.Should().StartWith("req_", "a failed request's record names its request id as a success's does (it was null)");
        files.OutputRecords.Select(r => r.GetProperty("response").GetProperty("request_id").GetString()).Should().NotContain(id, "each submission its own id");

        // A rerun has nothing left to do and reports nothing twice.
        var again = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
        again.Should().BeEquivalentTo(new { AlreadyDone = 3L, Succeeded = 0L, Failed = 0L, BadLines = 7L, Remaining = 0L });
        files.OutputRecords.Should().HaveCount(2);
        files.ErrorRecords.Should().HaveCount(8);
    }

    /// <summary>
    /// Embeddings, completions and moderations lines (<c>/v1/embeddings</c>, <c>/v1/completions</c>, <c>/v1/moderations</c>, as OpenAI's Batch API takes them) run
    /// beside chat lines: each result's body is the route's answer; a bad body is a bad line naming the member, and a model
    /// that cannot serve the request a failed request (400).
    /// </summary>
    [Fact]
    public async Task Embeddings_and_completions_lines_run_beside_chat_lines_and_bad_ones_say_why()
    {
        using var files = new BatchFiles();
        File.WriteAllLines(files.Input,
        [
            BatchFiles.RequestLine("chat", model: "sim"),
            """{"custom_id":"emb","method":"POST","url":"/v1/embeddings","body":{"model":"sim","input":["one","two"],"dimensions":4}}""",
            """{"custom_id":"empty","method":"POST","url":"/v1/embeddings","body":{"model":"sim","input":[]}}""",
            """{"custom_id":"fake","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}""",
            """{"custom_id":"cmpl","method":"POST","url":"/v1/completions","body":{"model":"sim","prompt":"hello","max_tokens":3}}""",
            """{"custom_id":"cmpl-bad","method":"POST","url":"/v1/completions","body":{"model":"sim","prompt":[]}}""",
            """{"custom_id":"cmpl-fim","method":"POST","url":"/v1/completions","body":{"model":"sim","prompt":"def f(","suffix":"return x"}}""",
            """{"custom_id":"mod","method":"POST","url":"/v1/moderations","body":{"model":"sim","input":["a kind word","how to kill time"]}}""",
            """{"custom_id":"mod-bad","method":"POST","url":"/v1/moderations","body":{"model":"sim","input":7}}""",
        ]);
        await using var gateway = await TestGateway.With(new FakeProvider("p"))
            .AddSimulatedProvider("simulated", o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("sim", m => m.Deploy("simulated", "text-embedding-3-small"))
            .StartAsync(Ct);

        var summary = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        summary.Should().BeEquivalentTo(new { Lines = 9L, Succeeded = 4L, Failed = 2L, BadLines = 3L });
        var mod = files.OutputRecords.Single(r => r.GetProperty("custom_id").GetString() == "mod").GetProperty("response").GetProperty("body");
        mod.GetProperty("results").EnumerateArray().Select(r => r.GetProperty("flagged").GetBoolean()).Should().Equal(false, true);
        var emb = files.OutputRecords.Single(r => r.GetProperty("custom_id").GetString() == "emb").GetProperty("response").GetProperty("body");
        emb.GetProperty("object").GetString().Should().Be("list");
        emb.GetProperty("data").EnumerateArray().Select(d => d.GetProperty("embedding").GetArrayLength()).Should().Equal(4, 4);
        emb.GetProperty("usage").GetProperty("prompt_tokens").GetInt32().Should().BePositive();
        emb.TryGetProperty("choices", out _).Should().BeFalse("an embeddings answer, not a chat completion");
        files.OutputRecords.Single(r => r.GetProperty("custom_id").GetString() == "chat").GetProperty("response").GetProperty("body").GetProperty("object").GetString().Should().Be("chat.completion");

        var errors = files.ErrorRecords.ToDictionary(r => r.GetProperty("custom_id").GetString()!);
        errors["empty"].GetProperty("error").GetProperty("code").GetString().Should().Be("invalid_body");
        errors["empty"].GetProperty("error").GetProperty("message").GetString().Should().Contain("(input)");
        errors["fake"].GetProperty("response").GetProperty("status_code").GetInt32().Should().Be(400);
        errors["fake"].GetProperty("response").GetProperty("body").GetProperty("error").GetProperty("message").GetString().Should().Contain("no embeddings API");

        var cmpl = files.OutputRecords.Single(r => r.GetProperty("custom_id").GetString() == "cmpl").GetProperty("response").GetProperty("body");
        cmpl.GetProperty("object").GetString().Should().Be("text_completion");
        cmpl.GetProperty("choices")[0].GetProperty("text").GetString().Should().NotBeNullOrEmpty();
        cmpl.GetProperty("usage").GetProperty("completion_tokens").GetInt32().Should().Be(3);
        errors["cmpl-bad"].GetProperty("error").GetProperty("message").GetString().Should().Contain("(prompt)");
        errors["cmpl-fim"].GetProperty("response").GetProperty("body").GetProperty("error").GetProperty("param").GetString().Should().Be("suffix", "the simulated provider answers as chat, which has no suffix");
    }

    /// <summary>
    /// A line that is not UTF-8 (a file saved as Latin-1) is a bad line saying where, never run with its custom_id or
    /// prompt decoded into replacement characters (its result would match no line of the caller's); the lines around it
    /// run as written.
    /// </summary>
    [Fact]
    public async Task A_line_that_is_not_UTF8_is_a_bad_line_and_the_rest_run_unchanged()
    {
        using var files = new BatchFiles();
        using (var input = File.Create(files.Input))
        {
            input.Write(System.Text.Encoding.UTF8.GetBytes(Raw("caf\u00e9-utf8") + "\r\n"));
            input.Write(System.Text.Encoding.Latin1.GetBytes(Raw("caf\u00e9-latin1") + "\n"));
            input.Write(System.Text.Encoding.UTF8.GetBytes(BatchFiles.RequestLine("last")));
        }

        await using var gateway = await TestGateway.With(new FakeProvider("p")).StartAsync(Ct);

        var summary = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        summary.Should().BeEquivalentTo(new { Lines = 3L, Succeeded = 2L, BadLines = 1L });
        files.OutputRecords.Select(r => r.GetProperty("custom_id").GetString()).Should().BeEquivalentTo("caf\u00e9-utf8", "last");
        var bad = files.ErrorRecords.Single().GetProperty("error");
        (bad.GetProperty("code").GetString(), bad.GetProperty("line").GetInt64()).Should().Be(("invalid_json", 2L));
        bad.GetProperty("message").GetString().Should().Be("line 2 is not valid UTF-8 (at byte 17): JSON text is UTF-8 (save the file as UTF-8).");

        // The characters as they are in the file (RequestLine would escape them).
        static string Raw(string customId) => $$$"""{"custom_id":"{{{customId}}}","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"{{{customId}}}"}]}}""";
    }

    /// <summary>A UTF-16 file (Windows PowerShell's Out-File) is read as such, and its lines counted right (its NULs are no lines).</summary>
    [Fact]
    public async Task A_UTF16_file_is_run_and_its_lines_counted_right()
    {
        using var files = new BatchFiles();
        File.WriteAllText(files.Input, BatchFiles.RequestLine("caf\u00e9") + "\r\n\r\n" + BatchFiles.RequestLine("second") + "\r\n", System.Text.Encoding.Unicode);
        await using var gateway = await TestGateway.With(new FakeProvider("p")).StartAsync(Ct);

        var summary = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        summary.Should().BeEquivalentTo(new { Lines = 2L, Succeeded = 2L, BadLines = 0L });
        files.OutputRecords.Select(r => r.GetProperty("custom_id").GetString()).Should().BeEquivalentTo("caf\u00e9", "second");
    }

    [Fact]
    public async Task A_torn_last_line_is_cut_off_and_its_request_done_again()
    {
        using var files = new BatchFiles();
        files.WriteRequests(20);
        var provider = new FakeProvider("p");
        await using var gateway = await TestGateway.With(provider).StartAsync(Ct);
        await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        // Simulate a kill in the middle of a write: keep 10 whole lines and half of the 11th.
        var lines = File.ReadAllLines(files.Output);
        File.WriteAllText(files.Output, string.Join('\n', lines.Take(10)) + '\n' + lines[10][..(lines[10].Length / 2)]);

        var summary = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);

        summary.AlreadyDone.Should().Be(10);
        summary.Succeeded.Should().Be(10);
        files.AnsweredIds().Should().OnlyHaveUniqueItems().And.BeEquivalentTo(Enumerable.Range(0, 20).Select(i => $"req-{i}"));
        provider.Calls.Should().Be(30);
    }

    [Fact]
    public async Task Stopping_admits_no_more_lines_finishes_in_flight_work_and_a_rerun_completes_exactly_once()
    {
        using var files = new BatchFiles();
        files.WriteRequests(200);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = 0;
        var provider = new FakeProvider("p")
        {
            OnComplete = async (r, ct) =>
            {
                if (Interlocked.Increment(ref started) > 30)
                {
                    await gate.Task.WaitAsync(ct);
                }

                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await new GatewayBuilder().AddProvider(provider, workers: 4, queueCapacity: 64).AddModel("m", "p").StartAsync(Ct);
        using var stop = new CancellationTokenSource();
        var run = BatchRunner.RunAsync(gateway, Options(files, concurrency: 8), stop: stop.Token);
        await Wait.Until(() => Volatile.Read(ref started) > 30, "the run is under way");
        await stop.CancelAsync();
        gate.SetResult();

        var stopped = await run;
        stopped.Stopped.Should().BeTrue();
        stopped.Remaining.Should().BeGreaterThan(0);
        stopped.Succeeded.Should().BeGreaterThanOrEqualTo(30, "in-flight requests finish and are written");
        files.OutputRecords.Should().HaveCount((int)stopped.Succeeded);

        var resumed = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
        resumed.AlreadyDone.Should().Be(stopped.Succeeded);
        resumed.Stopped.Should().BeFalse();
        files.AnsweredIds().Should().OnlyHaveUniqueItems().And.HaveCount(200);
    }

    [Fact]
    public async Task Failed_requests_go_to_the_errors_file_and_retry_failed_runs_them_again()
    {
        using var files = new BatchFiles();
        files.WriteRequests(10);
        var healthy = false;
        var provider = new FakeProvider("p")
        {
            OnComplete = (r, _) => Volatile.Read(ref healthy) || r.Request.Messages[0].Content!.GetText() != "prompt 3"
                ? ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok"))
                : throw FakeProvider.Fail503(),
        };
        await using var gateway = await TestGateway.With(provider)
            .Configure(o =>
            {
                o.Health.Enabled = false;
                o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
            })
            .StartAsync(Ct);

        var first = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
        first.Failed.Should().Be(1);
        var failure = files.ErrorRecords.Single();
        failure.GetProperty("custom_id").GetString().Should().Be("req-3");
        failure.GetProperty("response").GetProperty("status_code").GetInt32().Should().Be(503, "the upstream said 503 on every attempt: overloaded");
        failure.GetProperty("response").GetProperty("body").GetProperty("error").GetProperty("code").GetString().Should().Be("upstream_overloaded");
        failure.GetProperty("response").GetProperty("body").GetProperty("error").GetProperty("message").GetString().Should().Contain("503");
        failure.GetProperty("error").ValueKind.Should().Be(JsonValueKind.Null);

        var rerun = await BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
        rerun.AlreadyDone.Should().Be(10, "a failure is a result too");

        Volatile.Write(ref healthy, true);
        var retried = await BatchRunner.RunAsync(gateway, Options(files, retryFailed: true), stop: Ct);
        retried.Succeeded.Should().Be(1);
        files.ErrorRecords.Should().BeEmpty();
        files.OutputRecords.Select(r => r.GetProperty("custom_id").GetString()).Should().OnlyHaveUniqueItems().And.HaveCount(10);
    }

    [Fact]
    public async Task A_missing_input_or_an_output_held_by_another_run_is_a_clear_error_before_any_work()
    {
        using var files = new BatchFiles();
        var provider = new FakeProvider("p");
        await using var gateway = await TestGateway.With(provider).StartAsync(Ct);

        var missing = () => BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
        (await missing.Should().ThrowAsync<BatchException>()).WithMessage("*input file*does not exist*");

        files.WriteRequests(5);
        await using (new FileStream(files.Output + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None))
        {
            var locked = () => BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
            (await locked.Should().ThrowAsync<BatchException>()).WithMessage("*another 'pgw batch'*");
        }

        File.WriteAllText(files.Output, "some other file\n");
        var foreign = () => BatchRunner.RunAsync(gateway, Options(files), stop: Ct);
        (await foreign.Should().ThrowAsync<BatchException>()).WithMessage("*line 1 is not a batch result line*");

        var unwritable = () => BatchRunner.RunAsync(gateway, new BatchOptions { InputPath = files.Input, OutputPath = "/proc/pgw-cannot-write/out.jsonl" }, stop: Ct);
        (await unwritable.Should().ThrowAsync<BatchException>()).WithMessage("*Cannot open*");
        provider.Calls.Should().Be(0);
    }

    [Fact]
    public async Task A_batch_against_a_provider_limited_to_R_requests_per_minute_runs_at_R()
    {
        const int rpm = 60;
        const int lines = 300;
        var clock = TestGateway.Clock();
        var calls = new ConcurrentQueue<DateTimeOffset>();
        var provider = new FakeProvider("limited")
        {
            OnComplete = (r, _) =>
            {
                calls.Enqueue(clock.GetUtcNow());
                return ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok"));
            },
        };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 8, queueCapacity: 64)
            .AddModel("m", "limited")
            .UseTimeProvider(clock)
            .Configure(o =>
            {
                o.Providers[0].RequestsPerMinute = rpm;
                o.Pipeline.DefaultTimeout = TimeSpan.FromHours(1);
            })
            .StartAsync(Ct);
        using var files = new BatchFiles();
        files.WriteRequests(lines);

        var run = BatchRunner.RunAsync(gateway, Options(files, concurrency: 64), stop: Ct);
        for (var minute = 0; !run.IsCompleted; minute++)
        {
            var expected = Math.Min(lines, (minute + 1) * rpm);
            await Wait.Until(() => calls.Count >= expected, $"minute {minute}'s calls are sent");

            // The refused workers wait on the fake clock before it moves (a wait started after the move would count its
            // minute from the new time): every worker that has a line waits.
            if (calls.Count < lines)
            {
                await Wait.Until(() => gateway.Services.GetRequiredService<PipelineGateway.Dispatch.ProviderPools>().All[0].WaitingForRate == 8, "the workers wait for the next minute");
            }

            calls.Count.Should().Be(expected, "the limit holds within the minute");
            clock.Advance(TimeSpan.FromMinutes(1));
            if (calls.Count == lines)
            {
                break;
            }
        }

        var summary = await run;
        summary.Succeeded.Should().Be(lines);
        var times = calls.OrderBy(t => t).ToArray();
        var minutes = (times[^1] - times[0]).TotalMinutes;
        var rate = (lines - rpm) / minutes; // the first minute's R go at once; after that, R a minute
        rate.Should().BeInRange(rpm * 0.95, rpm * 1.05);
        for (var i = rpm; i < times.Length; i++)
        {
            (times[i] - times[i - rpm]).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMinutes(1));
        }
    }
}
