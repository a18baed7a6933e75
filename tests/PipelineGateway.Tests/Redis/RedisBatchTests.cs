using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Batch;
using PipelineGateway.Redis;
using PipelineGateway.Tests.Support;
using StackExchange.Redis;

namespace PipelineGateway.Tests.Redis;

/// <summary>One batch worked by two real <c>pgw batch --redis</c> processes; one is killed mid-run.</summary>
public sealed class RedisBatchTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_worker_killed_mid_batch_has_its_lines_finished_by_the_other_with_no_duplicate_custom_id()
    {
        var redis = RedisServer.Shared();
        using var files = new BatchFiles();
        const int lines = 400;
        files.WriteRequests(lines);
        var config = await files.WriteSlowConfigAsync(Ct);
        var batchId = "t" + Guid.NewGuid().ToString("N")[..12];
        string[] Args(string output) => ["batch", files.Input, "-o", output, "--config", config, "--concurrency", "8", "--redis", redis, "--batch-id", batchId, "--claim-after", "2"];
        var db = RedisServer.Connect(redis);
        var results = (RedisKey)$"pgw:batch:{{{batchId}}}:results";

        var survivorOutput = Path.Combine(files.Dir, "survivor.jsonl");
        using var victim = PgwProcess.Start(files.Dir, Args(Path.Combine(files.Dir, "victim.jsonl")));
        using var survivor = PgwProcess.Start(files.Dir, Args(survivorOutput));
        // Both under way: each a consumer of the work (a process slow to start, on a loaded CI machine, had not joined
        // yet when the other had finished 60 lines alone — killed then, it had worked nothing), and 60 lines done.
        var work = (RedisKey)$"pgw:batch:{{{batchId}}}:work";
        bool BothJoined()
        {
            try
            {
                return db.StreamConsumerInfo(work, "workers").Length == 2;
            }
            catch (RedisServerException)
            {
                return false; // the stream or its group is not made yet
            }
        }

        await Wait.Until(() => (BothJoined() && db.HashLength(results) >= 60) || victim.Process.HasExited, "both workers are under way", 60_000);
        victim.Process.HasExited.Should().BeFalse(victim.Stderr);
        victim.Process.Kill(); // SIGKILL: its pending lines stay claimed by a dead consumer
        await victim.Process.WaitForExitAsync(Ct);

        (await survivor.ExitCodeAsync()).Should().Be(0, survivor.Stderr);
        var ids = BatchFiles.ReadRecords(survivorOutput).Select(r => r.GetProperty("custom_id").GetString()).ToList();
        ids.Should().OnlyHaveUniqueItems("each line has one result, whoever ran it").And.HaveCount(lines, "the dead worker's lines were taken over");
        ((long)await db.HashLengthAsync(results)).Should().Be(lines);
        var pending = await db.StreamPendingAsync($"pgw:batch:{{{batchId}}}:work", "workers");
        pending.PendingMessageCount.Should().Be(0, "every line is acknowledged");
        var consumers = await db.StreamConsumerInfoAsync($"pgw:batch:{{{batchId}}}:work", "workers");
        consumers.Should().HaveCount(2, "both processes worked the batch");
        File.Exists(Path.Combine(files.Dir, "victim.jsonl")).Should().BeFalse("the killed worker never finished");
    }

    [Fact]
    public async Task A_shared_batch_reports_bad_lines_and_duplicates_once_and_every_worker_writes_the_whole_result()
    {
        var redis = RedisServer.Shared();
        using var files = new BatchFiles();
        File.WriteAllLines(files.Input,
        [
            BatchFiles.RequestLine("a"),
            "{not json",
            BatchFiles.RequestLine("a"),
            BatchFiles.RequestLine("b"),
            BatchFiles.RequestLine("c", model: "nope"),
            """{"custom_id":"r","method":"POST","url":"/v1/responses","body":{"model":"m","input":"x"}}""",
            """{"custom_id":"r","method":"POST","url":"/v1/responses","body":{"model":"m","input":"again"}}""",
        ]);
        File.AppendAllText(files.Input, """{"custom_id":"café-latin1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"x"}]}}""" + "\n", System.Text.Encoding.Latin1); // not UTF-8
        var shared = new RedisBatchOptions { Configuration = redis, BatchId = "t" + Guid.NewGuid().ToString("N")[..12] };
        await using var one = await TestGateway.With(new FakeProvider("p")).StartAsync(Ct);
        await using var two = await TestGateway.With(new FakeProvider("p")).StartAsync(Ct);
        var secondOutput = Path.Combine(files.Dir, "second.jsonl");

        // /v1/responses lines too, as pgw batch --redis runs them (its lines read and answered by the server's Responses code).
        var extra = PipelineGateway.Server.Responses.ResponsesBatch.Endpoint(TimeProvider.System);
        var runs = await Task.WhenAll(
            RedisBatchRunner.RunAsync(one, new BatchOptions { InputPath = files.Input, OutputPath = files.Output, Extra = extra }, shared, stop: Ct),
            RedisBatchRunner.RunAsync(two, new BatchOptions { InputPath = files.Input, OutputPath = secondOutput, Extra = extra }, shared, stop: Ct));

        runs.Should().AllSatisfy(r => r.Stopped.Should().BeFalse());
        runs.Sum(r => r.Succeeded).Should().Be(3);
        runs.Sum(r => r.Failed).Should().Be(1);
        runs.Sum(r => r.BadLines).Should().Be(4);
        foreach (var output in new[] { files.Output, secondOutput })
        {
            var records = BatchFiles.ReadRecords(output);
            records.Select(r => r.GetProperty("custom_id").GetString()).Should().BeEquivalentTo("a", "b", "r");
            records.Single(r => r.GetProperty("custom_id").GetString() == "r").GetProperty("response").GetProperty("body").GetProperty("object").GetString().Should().Be("response");
            var errors = BatchFiles.ReadRecords(BatchOptions.DefaultErrorsPath(output));
            errors.Select(BatchFiles.ErrorCode).Should().BeEquivalentTo("invalid_json", "duplicate_custom_id", "model_not_found", "duplicate_custom_id", "invalid_json");
            errors.Single(e => e.GetProperty("error").ValueKind == JsonValueKind.Object && e.GetProperty("error").GetProperty("line").GetInt64() == 8).GetProperty("error").GetProperty("message").GetString()
                .Should().StartWith("line 8 is not valid UTF-8 (at byte 17)", "the line is reported, not run with its custom_id changed");
            errors.Where(e => BatchFiles.ErrorCode(e) == "duplicate_custom_id").Select(e => e.GetProperty("error").GetProperty("line").GetInt64()).Should().BeEquivalentTo([3L, 7L]);
        }
    }

    [Fact]
    public async Task A_shared_batch_stopped_with_SIGTERM_exits_130_and_the_same_command_finishes_it()
    {
        var redis = RedisServer.Shared();
        using var files = new BatchFiles();
        files.WriteRequests(300);
        var config = await files.WriteSlowConfigAsync(Ct);
        var batchId = "t" + Guid.NewGuid().ToString("N")[..12];
        string[] args = ["batch", files.Input, "-o", files.Output, "--config", config, "--concurrency", "8", "--redis", redis, "--batch-id", batchId, "--claim-after", "600"];
        var db = RedisServer.Connect(redis);
        var results = (RedisKey)$"pgw:batch:{{{batchId}}}:results";

        using (var first = PgwProcess.Start(files.Dir, args))
        {
            await Wait.Until(() => db.HashLength(results) >= 40 || first.Process.HasExited, "the run is under way", 60_000);
            PgwProcess.Signal(first.Process, "TERM");
            (await first.ExitCodeAsync()).Should().Be(130, first.Stderr);
        }

        // claim-after is 10 minutes: the rerun finishes only because it takes up its own pending lines itself.
        using var second = PgwProcess.Start(files.Dir, args);
        (await second.ExitCodeAsync()).Should().Be(0, second.Stderr);
        files.OutputRecords.Select(r => r.GetProperty("custom_id").GetString()).Should().OnlyHaveUniqueItems().And.HaveCount(300);
    }
}
