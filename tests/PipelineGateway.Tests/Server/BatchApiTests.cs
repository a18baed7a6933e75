using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using OpenAI;
using OpenAI.Batch;
using OpenAI.Files;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Server.Batches;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

#pragma warning disable OPENAI001 // the SDK's Batch client is experimental

/// <summary>
/// OpenAI's Batch API over real HTTP (<c>/v1/files</c>, <c>/v1/batches</c>), driven by the official OpenAI .NET SDK:
/// a JSONL file uploaded, a batch created from it and run in the background through the pipeline, its results and
/// errors downloaded as files — every custom_id exactly once — each key's files and batches its own, a cancel that keeps
/// what finished, a batch that goes on after a restart, and the refusals of bad requests.
/// </summary>
public sealed class BatchApiTests : IAsyncDisposable
{
    private const string KeyA = "sk-gw-batch-a-0123456789";
    private const string KeyB = "sk-gw-batch-b-0123456789";
    private readonly BatchGateways _gateways = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public ValueTask DisposeAsync() => _gateways.DisposeAsync();

    /// <summary>A gateway on <paramref name="provider"/> ("m", and "other" that key B may not use), its Batch API in the test's directory.</summary>
    private async Task<Uri> StartAsync(FakeProvider provider, long maxFileBytes = 200L * 1024 * 1024, TimeProvider? clock = null, long bytesPerKey = 1L << 31, Dictionary<string, string?>? more = null)
    {
        // Requests may wait longer than a batch's window (the expiry test's clock jumps a day).
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Server:BatchDirectory"] = Path.Combine(_gateways.Dir, "batches"),
            ["Gateway:Server:BatchConcurrency"] = "4",
            ["Gateway:Server:MaxBatchFileBytes"] = maxFileBytes.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Gateway:Server:BatchBytesPerKey"] = bytesPerKey.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Gateway:Server:Keys:0:Id"] = "a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(KeyA),
            ["Gateway:Server:Keys:1:Id"] = "b",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(KeyB),
            ["Gateway:Server:Keys:1:AllowedModels:0"] = "m",
            ["Gateway:Pipeline:MaxAttempts"] = "1",
            ["Gateway:Pipeline:DefaultTimeout"] = "2.00:00:00",
        }.Concat(more ?? []).ToDictionary()).Build();
        var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s =>
        {
            var gateway = s.AddPipelineGateway().AddProvider(provider).AddModel("m", m => m.Deploy(provider.Name)).AddModel("other", m => m.Deploy(provider.Name));
            if (clock is not null)
            {
                gateway.UseTimeProvider(clock);
            }
        });
        _gateways.Add(app);
        return await GatewayServer.StartAsync(app, Ct);
    }

    private static OpenAIClientOptions Options(Uri root) => new() { Endpoint = new Uri(root, "v1"), RetryPolicy = new ClientRetryPolicy(0) };

    private static HttpClient Http(Uri root, string key) => BatchGateways.Client(root, key);

    private static string Line(string id, string model = "m", string url = "/v1/chat/completions", string text = "hello") =>
        $$$"""{"custom_id":"{{{id}}}","method":"POST","url":"{{{url}}}","body":{"model":"{{{model}}}","messages":[{"role":"user","content":"{{{text}}}"}]}}""";

    private static Task<JsonElement> JsonAsync(HttpResponseMessage response) => BatchGateways.JsonAsync(response, Ct);

    /// <summary>Polls the batch until it has ended (the run is in the background): its last state.</summary>
    private static async Task<JsonElement> EndedAsync(HttpClient http, string id)
    {
        JsonElement batch = default;
        await Wait.Until(() =>
        {
            using var response = http.GetAsync($"v1/batches/{id}", Ct).GetAwaiter().GetResult();
            batch = JsonAsync(response).GetAwaiter().GetResult();
            return batch.GetProperty("status").GetString() is "completed" or "failed" or "cancelled" or "expired";
        }, $"batch {id} ends");
        return batch;
    }

    private static async Task<string[]> LinesAsync(HttpClient http, string fileId) =>
        (await http.GetStringAsync($"v1/files/{fileId}/content", Ct)).Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [Fact]
    public async Task The_OpenAI_SDK_uploads_a_file_runs_a_batch_and_downloads_every_result_once()
    {
        var root = await StartAsync(new FakeProvider("p"));
        var lines = string.Join('\n', [.. Enumerable.Range(0, 20).Select(i => Line($"task-{i}", text: $"question {i}")),
            Line("wrong-endpoint", url: "/v1/embeddings"), Line("unknown-model", model: "nope"), "not json"]);
        var files = new OpenAIFileClient(new ApiKeyCredential(KeyA), Options(root));
        var input = (await files.UploadFileAsync(BinaryData.FromString(lines), "prompts.jsonl", FileUploadPurpose.Batch)).Value;
        input.Id.Should().MatchRegex("^file-[0-9a-f]{24}$");
        (input.Filename, input.SizeInBytes).Should().Be(("prompts.jsonl", Encoding.UTF8.GetByteCount(lines)));

        var batches = new BatchClient(new ApiKeyCredential(KeyA), new BatchClientOptions { Endpoint = new Uri(root, "v1"), RetryPolicy = new ClientRetryPolicy(0) });
        var operation = await batches.CreateBatchAsync(BinaryContent.Create(BinaryData.FromString(
            $$$"""{"input_file_id":"{{{input.Id}}}","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"job":"nightly"}}""")), waitUntilCompleted: false);
        var id = operation.BatchId;
        id.Should().MatchRegex("^batch_[0-9a-f]{24}$");

        using var http = Http(root, KeyA);
        var batch = await EndedAsync(http, id);
        batch.GetProperty("status").GetString().Should().Be("completed");
        batch.GetProperty("object").GetString().Should().Be("batch");
        batch.GetProperty("endpoint").GetString().Should().Be("/v1/chat/completions");
        batch.GetProperty("metadata").GetProperty("job").GetString().Should().Be("nightly");
        var counts = batch.GetProperty("request_counts");
        (counts.GetProperty("total").GetInt64(), counts.GetProperty("completed").GetInt64(), counts.GetProperty("failed").GetInt64()).Should().Be((23, 20, 3));
        foreach (var stamp in (string[])["created_at", "in_progress_at", "finalizing_at", "completed_at", "expires_at"])
        {
            batch.GetProperty(stamp).GetInt64().Should().BePositive(stamp);
        }

        // The results through the SDK's download: each custom_id once, each a whole chat completion.
        var output = (await files.DownloadFileAsync(batch.GetProperty("output_file_id").GetString(), Ct)).Value.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        output.Select(l => JsonDocument.Parse(l).RootElement.GetProperty("custom_id").GetString()).Should().BeEquivalentTo(Enumerable.Range(0, 20).Select(i => $"task-{i}"));
        JsonDocument.Parse(output[0]).RootElement.GetProperty("response").GetProperty("body").GetProperty("object").GetString().Should().Be("chat.completion");
        var errors = await LinesAsync(http, batch.GetProperty("error_file_id").GetString()!);
        errors.Select(l => BatchFiles.ErrorCode(JsonDocument.Parse(l).RootElement)).Should().BeEquivalentTo(["unsupported_url", "model_not_found", "invalid_json"]);
        errors.Should().Contain(l => l.Contains("'url' must be \\\"/v1/chat/completions\\\"", StringComparison.Ordinal), "the files' JSON is escaped as the answers' (quotes as \\\", an apostrophe as itself), not \\u0027");

        // The results are files of the key: listed with the input, described, and deleted like it.
        var listed = (await files.GetFilesAsync(Ct)).Value;
        listed.Select(f => f.Id).Should().BeEquivalentTo([input.Id, batch.GetProperty("output_file_id").GetString(), batch.GetProperty("error_file_id").GetString()]);
        (await files.GetFileAsync(batch.GetProperty("output_file_id").GetString(), Ct)).Value.Filename.Should().Be($"{id}_output.jsonl");
        (await files.DeleteFileAsync(input.Id, Ct)).Value.Deleted.Should().BeTrue();
        (await http.GetAsync($"v1/files/{input.Id}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        var late = await http.PostAsync($"v1/batches/{id}/cancel", null, Ct);
        late.StatusCode.Should().Be(HttpStatusCode.Conflict, "a completed batch cannot be cancelled");
        (await JsonAsync(late)).GetProperty("error").GetProperty("message").GetString().Should().Contain("'completed'");
        var list = await JsonAsync(await http.GetAsync("v1/batches?limit=5", Ct));
        list.GetProperty("data")[0].GetProperty("id").GetString().Should().Be(id);
        list.GetProperty("has_more").GetBoolean().Should().BeFalse();
    }

    /// <summary>
    /// A key sees only its own files and batches (another's are 404s, as ids that do not exist), and its batch runs as
    /// that key: a line for a model the key may not use fails, the others are answered.
    /// </summary>
    [Fact]
    public async Task Each_key_has_its_own_files_and_batches_and_a_batch_runs_as_its_key()
    {
        var root = await StartAsync(new FakeProvider("p"));
        using var a = Http(root, KeyA);
        using var b = Http(root, KeyB);
        var upload = await UploadAsync(b, Line("allowed") + "\n" + Line("forbidden", model: "other"));
        var fileId = upload.GetProperty("id").GetString()!;

        (await a.GetAsync($"v1/files/{fileId}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await a.GetAsync($"v1/files/{fileId}/content", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await a.DeleteAsync($"v1/files/{fileId}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await JsonAsync(await a.GetAsync("v1/files", Ct))).GetProperty("data").GetArrayLength().Should().Be(0);
        var stolen = await a.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct);
        stolen.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await JsonAsync(stolen)).GetProperty("error").GetProperty("param").GetString().Should().Be("input_file_id");

        var created = await JsonAsync(await b.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct));
        var id = created.GetProperty("id").GetString()!;
        (await a.GetAsync($"v1/batches/{id}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await a.PostAsync($"v1/batches/{id}/cancel", null, Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        var batch = await EndedAsync(b, id);
        var counts = batch.GetProperty("request_counts");
        (counts.GetProperty("completed").GetInt64(), counts.GetProperty("failed").GetInt64()).Should().Be((1, 1));
        var error = JsonDocument.Parse((await LinesAsync(b, batch.GetProperty("error_file_id").GetString()!)).Single()).RootElement;
        (error.GetProperty("custom_id").GetString(), error.GetProperty("error").GetProperty("code").GetString()).Should().Be(("forbidden", "model_not_allowed"));
    }

    /// <summary>
    /// A cancel stops the batch taking lines: it is <c>cancelling</c> while the requests in flight finish, then
    /// <c>cancelled</c> with their results kept; the lines never sent have none. A second cancel of an ended batch is a 409.
    /// </summary>
    [Fact]
    public async Task A_cancelled_batch_keeps_what_finished_and_runs_nothing_more()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate);
        var root = await StartAsync(provider);
        using var http = Http(root, KeyA);
        var fileId = (await UploadAsync(http, string.Join('\n', Enumerable.Range(0, 50).Select(i => Line($"t{i}"))))).GetProperty("id").GetString()!;
        var id = (await JsonAsync(await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct))).GetProperty("id").GetString()!;
        await Wait.Until(() => provider.Calls == 4, "the batch's four requests are in flight");

        var cancelling = await JsonAsync(await http.PostAsync($"v1/batches/{id}/cancel", null, Ct));
        cancelling.GetProperty("status").GetString().Should().BeOneOf("cancelling", "cancelled");
        (await JsonAsync(await http.DeleteAsync($"v1/files/{fileId}", Ct))).GetProperty("error").GetProperty("code").GetString().Should().Be("file_in_use");
        gate.SetResult();
        var batch = await EndedAsync(http, id);
        batch.GetProperty("status").GetString().Should().Be("cancelled");
        batch.GetProperty("cancelling_at").GetInt64().Should().BePositive();
        batch.GetProperty("cancelled_at").GetInt64().Should().BePositive();
        provider.Calls.Should().Be(4, "no line was sent after the cancel");
        (await LinesAsync(http, batch.GetProperty("output_file_id").GetString()!)).Should().HaveCount(4);
        batch.GetProperty("request_counts").GetProperty("completed").GetInt64().Should().Be(4);
        (await JsonAsync(await http.PostAsync($"v1/batches/{id}/cancel", null, Ct))).GetProperty("status").GetString().Should().Be("cancelled", "a cancel again is harmless");
    }

    /// <summary>
    /// A batch running when the gateway stops goes on where it stopped at the next start on the same directory: the
    /// requests in flight at the stop run again, and the results hold every custom_id exactly once.
    /// </summary>
    [Fact]
    public async Task A_batch_stopped_by_a_restart_goes_on_and_answers_every_line_exactly_once()
    {
        var answered = 0;
        var first = new FakeProvider("p")
        {
            OnComplete = async (r, ct) =>
            {
                if (Interlocked.Increment(ref answered) > 10)
                {
                    await FakeProvider.UntilCancelled(ct); // hangs until the stop cancels it
                }

                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        var root = await StartAsync(first);
        using (var http = Http(root, KeyA))
        {
            var fileId = (await UploadAsync(http, string.Join('\n', Enumerable.Range(0, 40).Select(i => Line($"t{i}"))))).GetProperty("id").GetString()!;
            await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct);
            await Wait.Until(() => Volatile.Read(ref answered) >= 14, "ten lines answered and four hanging");
        }

        await _gateways.Apps[0].StopAsync(Ct);

        var second = new FakeProvider("p");
        var again = await StartAsync(second);
        using var http2 = Http(again, KeyA);
        var id = (await JsonAsync(await http2.GetAsync("v1/batches", Ct))).GetProperty("data")[0].GetProperty("id").GetString()!;
        var batch = await EndedAsync(http2, id);
        batch.GetProperty("status").GetString().Should().Be("completed");
        var ids = (await LinesAsync(http2, batch.GetProperty("output_file_id").GetString()!)).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("custom_id").GetString()).ToList();
        ids.Should().OnlyHaveUniqueItems().And.BeEquivalentTo(Enumerable.Range(0, 40).Select(i => $"t{i}"));
        second.Calls.Should().BeInRange(30, 34, "the lines answered before the stop are not run again");
        batch.GetProperty("request_counts").GetProperty("completed").GetInt64().Should().Be(40);
    }

    /// <summary>
    /// A batch not ended 24 hours after it was created stops taking lines and ends <c>expired</c>, keeping the results it
    /// has; its requests in flight end as the pipeline ends them (here their own deadline, past on the same clock).
    /// </summary>
    [Fact]
    public async Task A_batch_past_its_24_hour_window_expires_with_what_it_has()
    {
        var clock = TestGateway.Clock();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate);
        var root = await StartAsync(provider, clock: clock);
        using var http = Http(root, KeyA);
        var fileId = (await UploadAsync(http, string.Join('\n', Enumerable.Range(0, 30).Select(i => Line($"t{i}"))))).GetProperty("id").GetString()!;
        var created = await JsonAsync(await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct));
        created.GetProperty("expires_at").GetInt64().Should().Be(created.GetProperty("created_at").GetInt64() + (24 * 3600));
        var id = created.GetProperty("id").GetString()!;
        await Wait.Until(() => provider.Calls == 4, "the batch's four requests are in flight");

        clock.Advance(TimeSpan.FromHours(24) + TimeSpan.FromSeconds(1));
        gate.SetResult(); // the window closed as the clock passed it (its timer ran in Advance): the requests in flight finish and are kept
        var batch = await EndedAsync(http, id);
        batch.GetProperty("status").GetString().Should().Be("expired");
        batch.GetProperty("expired_at").GetInt64().Should().Be(created.GetProperty("expires_at").GetInt64() + 1);
        provider.Calls.Should().Be(4, "no line was sent after the window closed");
        var counts = batch.GetProperty("request_counts");
        (counts.GetProperty("total").GetInt64(), counts.GetProperty("completed").GetInt64(), counts.GetProperty("failed").GetInt64()).Should().Be((30, 4, 0));
        (await LinesAsync(http, batch.GetProperty("output_file_id").GetString()!)).Should().HaveCount(4);
    }

    /// <summary>
    /// A gateway stopped while a batch's results were becoming files (its record says <c>finalizing</c>) finishes it at
    /// the next start as it was ending — its results kept as its output file — and runs none of its lines again.
    /// </summary>
    [Fact]
    public async Task A_batch_stopped_while_finalizing_ends_at_the_next_start_without_running_a_line_again()
    {
        var store = new BatchStore(new ServerOptions { BatchDirectory = Path.Combine(_gateways.Dir, "batches") }, Microsoft.Extensions.Logging.Abstractions.NullLogger<BatchStore>.Instance);
        store.TryOpen().Should().BeTrue();
        var input = new BatchFile { Id = BatchStore.NewFileId(), Bytes = 10, CreatedAt = 1, Filename = "in.jsonl", Purpose = "batch" };
        var upload = store.UploadPath("a");
        await File.WriteAllTextAsync(upload, Line("t0") + "\n" + Line("t1"), Ct);
        store.AddFile("a", input, upload);
        var id = BatchStore.NewBatchId();
        var results = store.UploadPath("a");
        await File.WriteAllTextAsync(results, """
            {"id":"batch_req_1","custom_id":"t0","response":{"status_code":200,"request_id":"r0","body":{}},"error":null}
            {"id":"batch_req_2","custom_id":"t1","response":{"status_code":200,"request_id":"r1","body":{}},"error":null}

            """, Ct);

        // Stopped just after its results became a file, before its record said so: no working file is left to resume from.
        var output = new BatchFile { Id = BatchStore.NewFileId(), Bytes = new FileInfo(results).Length, CreatedAt = 1, Filename = $"{id}_output.jsonl", Purpose = "batch_output" };
        store.AddFile("a", output, results);
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        store.SaveBatch(new StoredBatch
        {
            Owner = "a",
            Ending = "completed",
            Batch = new PipelineGateway.Server.Batches.BatchJob
            {
                Id = id,
                Endpoint = "/v1/chat/completions",
                InputFileId = input.Id,
                Status = "finalizing",
                CreatedAt = now,
                ExpiresAt = now + 86_400,
                InProgressAt = now,
                FinalizingAt = now,
                RequestCounts = new BatchCounts { Total = 2, Completed = 2 },
            },
        });
        store.Dispose();

        var provider = new FakeProvider("p");
        using var http = Http(await StartAsync(provider), KeyA);
        var batch = await EndedAsync(http, id);
        batch.GetProperty("status").GetString().Should().Be("completed");
        batch.GetProperty("output_file_id").GetString().Should().Be(output.Id, "the file its results became");
        (await LinesAsync(http, output.Id)).Should().HaveCount(2);
        batch.GetProperty("request_counts").GetProperty("completed").GetInt64().Should().Be(2);
        provider.Calls.Should().Be(0, "no line runs again");
    }

    /// <summary>
    /// Azure OpenAI's Batch API routes (<c>/openai/files</c> — the Azure OpenAI .NET SDK's file client uploads there —
    /// and <c>/openai/batches</c>) run a batch with Azure's line URLs (<c>/chat/completions</c>, no <c>/v1</c>).
    /// </summary>
    [Fact]
    public async Task The_Azure_OpenAI_SDK_runs_a_batch_through_Azures_routes()
    {
        var root = await StartAsync(new FakeProvider("p"));
        var azure = new Azure.AI.OpenAI.AzureOpenAIClient(root, new ApiKeyCredential(KeyA), new Azure.AI.OpenAI.AzureOpenAIClientOptions { RetryPolicy = new ClientRetryPolicy(0) });
        var lines = string.Join('\n', Enumerable.Range(0, 3).Select(i => Line($"az{i}", url: "/chat/completions")));
        var input = (await azure.GetOpenAIFileClient().UploadFileAsync(BinaryData.FromString(lines), "azure.jsonl", FileUploadPurpose.Batch)).Value;
        // The SDK's batch client (2.9.0-beta.1) is built on an older OpenAI library than the one these tests use (its
        // constructor is gone): its calls, as Azure's REST reference has them, by hand — the api-key header, api-version.
        using var azureHttp = new HttpClient { BaseAddress = root };
        azureHttp.DefaultRequestHeaders.Add("api-key", KeyA);
        var created = await azureHttp.PostAsync("openai/batches?api-version=2025-04-01-preview", Json($$"""{"input_file_id":"{{input.Id}}","endpoint":"/chat/completions","completion_window":"24h"}"""), Ct);
        created.StatusCode.Should().Be(HttpStatusCode.OK);
        var id = (await JsonAsync(created)).GetProperty("id").GetString()!;
        using var http = Http(root, KeyA);
        var batch = await EndedAsync(http, id);
        (await JsonAsync(await azureHttp.GetAsync($"openai/batches/{id}?api-version=2025-04-01-preview", Ct))).GetProperty("status").GetString().Should().Be("completed");
        batch.GetProperty("status").GetString().Should().Be("completed");
        batch.GetProperty("endpoint").GetString().Should().Be("/chat/completions");
        (await LinesAsync(http, batch.GetProperty("output_file_id").GetString()!)).Should().HaveCount(3);
    }

    [Theory]
    [InlineData("""{"endpoint":"/v1/chat/completions","completion_window":"24h"}""", "input_file_id")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/images/generations","completion_window":"24h"}""", "endpoint")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"48h"}""", "completion_window")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"a":1}}""", "metadata")]
    [InlineData("""{"input_file_id":7,"endpoint":"/v1/chat/completions","completion_window":"24h"}""", "input_file_id")]
    [InlineData("""{"input_file_id":"../../etc/passwd","endpoint":"/v1/chat/completions","completion_window":"24h"}""", "input_file_id")]
    [InlineData("""{"input_file_id":"FILE",""", null)]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"anchor":"created_at","seconds":60}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"anchor":"created_at","seconds":2592001}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"anchor":"created_at","seconds":3600.5}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"anchor":"created_at","seconds":"3600"}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"anchor":"last_active_at","seconds":3600}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"seconds":3600}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{}}""", "output_expires_after")]
    [InlineData("""{"input_file_id":"FILE","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":"1h"}""", "output_expires_after")]
    public async Task A_bad_batch_request_is_a_4xx_naming_its_field_and_starts_nothing(string body, string? param)
    {
        var provider = new FakeProvider("p");
        var root = await StartAsync(provider);
        using var http = Http(root, KeyA);
        var fileId = (await UploadAsync(http, Line("x"))).GetProperty("id").GetString()!;
        var response = await http.PostAsync("v1/batches", Json(body.Replace("FILE", fileId, StringComparison.Ordinal)), Ct);
        ((int)response.StatusCode).Should().BeInRange(400, 499);
        var error = (await JsonAsync(response)).GetProperty("error");
        (error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString()).Should().Be(param);
        (await JsonAsync(await http.GetAsync("v1/batches", Ct))).GetProperty("data").GetArrayLength().Should().Be(0);
        provider.Calls.Should().Be(0);
    }

    /// <summary>
    /// Any mutation of a create request (values replaced by random JSON, members removed or added, keys doubled, bytes
    /// inserted, the text cut — the front-door fuzz's mutations, fixed seed) is answered in the API's shape: a batch, or a
    /// 4xx whose error says why. Never a 5xx.
    /// </summary>
    [Fact]
    public async Task Any_mutation_of_a_create_request_is_a_batch_or_a_4xx_in_the_APIs_shape()
    {
        var root = await StartAsync(FakeProvider.NeverAnswers("p"));
        using var http = Http(root, KeyA);
        var fileId = (await UploadAsync(http, Line("x"))).GetProperty("id").GetString()!;
        var template = $$$"""{"input_file_id":"{{{fileId}}}","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"team":"a"},"output_expires_after":{"anchor":"created_at","seconds":3600}}""";
        var statuses = new HashSet<int>();
        foreach (var body in FrontDoorFuzzTests.Cases(Fuzz.Body(template), 300 * Fuzz.Scale, Fuzz.Seed + 21))
        {
            using var content = new ByteArrayContent(body.Bytes);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var response = await http.PostAsync("v1/batches", content, Ct);
            var status = (int)response.StatusCode;
            statuses.Add(status);
            var answer = await JsonAsync(response);
            if (status == 200)
            {
                answer.GetProperty("object").GetString().Should().Be("batch", body.How);
                continue;
            }

            status.Should().BeInRange(400, 499, body.How);
            answer.GetProperty("error").GetProperty("message").GetString().Should().NotBeNullOrEmpty(body.How);
        }

        statuses.Should().Contain([200, 400]);
    }

    /// <summary>
    /// A key's files — uploads and results — hold at most <c>Server:BatchBytesPerKey</c>: an upload past it is a 413
    /// until files are deleted; uploads at once cannot pass it together; another key has its own room.
    /// </summary>
    [Fact]
    public async Task A_keys_files_hold_at_most_its_bound_and_deleting_makes_room()
    {
        var root = await StartAsync(new FakeProvider("p"), bytesPerKey: 3000);
        using var a = Http(root, KeyA);
        using var b = Http(root, KeyB);
        async Task<HttpResponseMessage> Post(HttpClient http, int bytes)
        {
            using var form = new MultipartFormDataContent { { new StringContent("batch"), "purpose" }, { new ByteArrayContent(new byte[bytes]), "file", "in.jsonl" } };
            return await http.PostAsync("v1/files", form, Ct);
        }

        var first = await JsonAsync(await Post(a, 2000));
        var refused = await Post(a, 1500);
        refused.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
        (await JsonAsync(refused)).GetProperty("error").GetProperty("code").GetString().Should().Be("storage_limit_reached");
        (await Post(b, 2500)).StatusCode.Should().Be(HttpStatusCode.OK, "another key has its own room");
        (await a.DeleteAsync($"v1/files/{first.GetProperty("id").GetString()}", Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
        var together = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Post(a, 1400)));
        together.Count(r => r.StatusCode == HttpStatusCode.OK).Should().Be(2, "two of 1,400 bytes fit in 3,000, whatever their timing");
    }

    /// <summary>
    /// A key may keep at most <c>Server:MaxBatchFilesPerKey</c> files (an upload past it is a 413; a batch needs room for
    /// its two result files) and have at most <c>Server:MaxLiveBatchesPerKey</c> batches not ended (a 429 past it, until
    /// one ends): each live batch holds a task and a timer, every upload reads the key's file records — neither may grow
    /// without bound.
    /// </summary>
    [Fact]
    public async Task A_key_keeps_a_bounded_number_of_files_and_of_batches_not_ended()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var root = await StartAsync(FakeProvider.Gated("p", gate), more: new() { ["Gateway:Server:MaxBatchFilesPerKey"] = "9", ["Gateway:Server:MaxLiveBatchesPerKey"] = "2" });
        using var http = Http(root, KeyA);
        var files = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            files.Add((await UploadAsync(http, Line($"t{i}"))).GetProperty("id").GetString()!);
        }

        async Task<HttpResponseMessage> Create(string fileId) =>
            await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct);
        var first = (await JsonAsync(await Create(files[0]))).GetProperty("id").GetString()!;
        var second = (await JsonAsync(await Create(files[1]))).GetProperty("id").GetString()!;
        var third = await Create(files[2]);
        third.StatusCode.Should().Be(HttpStatusCode.TooManyRequests);
        (await JsonAsync(third)).GetProperty("error").GetProperty("code").GetString().Should().Be("too_many_batches");
        gate.SetResult();
        await EndedAsync(http, first);
        await EndedAsync(http, second);
        await Wait.Until(() => Create(files[2]).GetAwaiter().GetResult().StatusCode == HttpStatusCode.OK, "ended batches make room for another");

        // Three uploads and two (then three) results: room for three more uploads, then none, and no room for a batch's results.
        var listed = 0;
        await Wait.Until(() => (listed = JsonAsync(http.GetAsync("v1/files", Ct).GetAwaiter().GetResult()).GetAwaiter().GetResult().GetProperty("data").GetArrayLength()) == 6, "the third batch's result is a file");
        for (var i = listed; i < 9; i++)
        {
            await UploadAsync(http, Line("more"));
        }

        using (var form = new MultipartFormDataContent { { new StringContent("batch"), "purpose" }, { new ByteArrayContent("{}"u8.ToArray()), "file", "x.jsonl" } })
        {
            var tenth = await http.PostAsync("v1/files", form, Ct);
            tenth.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
            (await JsonAsync(tenth)).GetProperty("error").GetProperty("code").GetString().Should().Be("storage_limit_reached");
        }

        var noRoom = await Create(files[0]);
        noRoom.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge, "no room for the batch's result files");
        (await JsonAsync(noRoom)).GetProperty("error").GetProperty("param").GetString().Should().Be("input_file_id");
    }

    /// <summary>A key keeps its newest batches (as many as its files may be): older ended ones are forgotten, their files kept.</summary>
    [Fact]
    public async Task A_key_keeps_its_newest_batches_and_forgets_older_ended_ones()
    {
        var root = await StartAsync(new FakeProvider("p"), more: new() { ["Gateway:Server:MaxBatchFilesPerKey"] = "4" });
        using var http = Http(root, KeyA);
        var input = (await UploadAsync(http, Line("t"))).GetProperty("id").GetString()!;
        var ids = new List<string>();
        for (var i = 0; i < 6; i++)
        {
            var id = (await JsonAsync(await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{input}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct))).GetProperty("id").GetString()!;
            ids.Add(id);
            var output = (await EndedAsync(http, id)).GetProperty("output_file_id").GetString()!;
            (await http.DeleteAsync($"v1/files/{output}", Ct)).StatusCode.Should().Be(HttpStatusCode.OK); // room for the next one's results
        }

        var list = await JsonAsync(await http.GetAsync("v1/batches", Ct));
        list.GetProperty("data").EnumerateArray().Select(b => b.GetProperty("id").GetString()).Should().BeEquivalentTo(ids.Skip(2), "the newest four");
        (await http.GetAsync($"v1/batches/{ids[0]}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
    }

    [Fact]
    public async Task A_bad_upload_is_a_4xx_and_keeps_nothing()
    {
        var root = await StartAsync(new FakeProvider("p"), maxFileBytes: 2048);
        using var http = Http(root, KeyA);
        async Task<(HttpStatusCode, string?)> Post(Action<MultipartFormDataContent> fill)
        {
            using var form = new MultipartFormDataContent();
            fill(form);
            var response = await http.PostAsync("v1/files", form, Ct);
            var error = (await JsonAsync(response)).GetProperty("error");
            return (response.StatusCode, error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString());
        }

        (await Post(f => f.Add(new StringContent("fine-tune"), "purpose"))).Should().Be((HttpStatusCode.BadRequest, "purpose"));
        (await Post(f => f.Add(new StringContent("batch"), "purpose"))).Should().Be((HttpStatusCode.BadRequest, "file"));
        (await Post(f => { f.Add(new StringContent("batch"), "purpose"); f.Add(new ByteArrayContent([]), "file", "empty.jsonl"); })).Should().Be((HttpStatusCode.BadRequest, "file"));
        (await Post(f => { f.Add(new StringContent("batch"), "purpose"); f.Add(new ByteArrayContent("{}"u8.ToArray()), "document", "a.jsonl"); })).Should().Be((HttpStatusCode.BadRequest, "file"));
        (await Post(f => { f.Add(new StringContent("batch"), "purpose"); f.Add(new ByteArrayContent(new byte[3000]), "file", "big.jsonl"); })).Should().Be((HttpStatusCode.RequestEntityTooLarge, "file"));
        using (var unsized = new MultipartFormDataContent { { new StringContent("batch"), "purpose" }, { new UnsizedContent(new byte[100_000]), "file", "big.jsonl" } })
        {
            (await http.PostAsync("v1/files", unsized, Ct)).StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge, "past the bound with no length announced");
        }

        void Good(MultipartFormDataContent f)
        {
            f.Add(new StringContent("batch"), "purpose");
            f.Add(new ByteArrayContent("{}"u8.ToArray()), "file", "a.jsonl");
        }

        (await Post(f => { Good(f); f.Add(new StringContent("created_at"), "expires_after[anchor]"); f.Add(new StringContent("60"), "expires_after[seconds]"); })).Should().Be((HttpStatusCode.BadRequest, "expires_after"));
        (await Post(f => { Good(f); f.Add(new StringContent("created_at"), "expires_after[anchor]"); f.Add(new StringContent("1e4"), "expires_after[seconds]"); })).Should().Be((HttpStatusCode.BadRequest, "expires_after"));
        (await Post(f => { Good(f); f.Add(new StringContent("updated_at"), "expires_after[anchor]"); f.Add(new StringContent("3600"), "expires_after[seconds]"); })).Should().Be((HttpStatusCode.BadRequest, "expires_after"));
        (await Post(f => { Good(f); f.Add(new StringContent("3600"), "expires_after[seconds]"); })).Should().Be((HttpStatusCode.BadRequest, "expires_after"));
        (await Post(f => { Good(f); f.Add(new StringContent("""{"anchor":"created_at","seconds":3600}"""), "expires_after"); })).Should().Be((HttpStatusCode.BadRequest, "expires_after"));
        (await Post(f => { Good(f); f.Add(new StringContent("created_at"), "expires_after[anchor]"); f.Add(new StringContent("created_at"), "expires_after[anchor]"); f.Add(new StringContent("3600"), "expires_after[seconds]"); })).Should().Be((HttpStatusCode.BadRequest, "expires_after[anchor]"));
        var json = await http.PostAsync("v1/files", Json("{}"), Ct);
        json.StatusCode.Should().Be(HttpStatusCode.UnsupportedMediaType);
        (await http.GetAsync("v1/files/file-../../x", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await JsonAsync(await http.GetAsync("v1/files", Ct))).GetProperty("data").GetArrayLength().Should().Be(0);
        Directory.EnumerateFiles(Path.Combine(_gateways.Dir, "batches"), "*", SearchOption.AllDirectories).Where(f => !f.EndsWith(".lock", StringComparison.Ordinal)).Should().BeEmpty("no upload left anything behind");
    }

    /// <summary>
    /// Files expire as their policy says — an upload's <c>expires_after</c> (the form fields the SDKs send), a batch's
    /// <c>output_expires_after</c> for its results, else <c>Server:BatchFileLifetime</c> (30 days, OpenAI's default for
    /// batch files): from that second on the API has no such file (404, not listed, no batch made from it), and its bytes
    /// leave the disk at the hourly sweep or, for the key's own files, at its next upload. The input of a batch still
    /// running stays on disk until the batch ended, and the batch answers every line.
    /// </summary>
    [Fact]
    public async Task Files_expire_as_their_policy_says_and_then_leave_the_disk()
    {
        var clock = TestGateway.Clock();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate);
        var root = await StartAsync(provider, clock: clock);
        using var a = Http(root, KeyA);
        using var b = Http(root, KeyB);
        async Task<JsonElement> Upload(HttpClient http, string content, long? seconds)
        {
            using var form = new MultipartFormDataContent
            {
                { new StringContent("batch"), "purpose" },
                { new ByteArrayContent(Encoding.UTF8.GetBytes(content)), "file", "input.jsonl" },
            };
            if (seconds is { } s)
            {
                form.Add(new StringContent("created_at"), "expires_after[anchor]");
                form.Add(new StringContent(s.ToString(System.Globalization.CultureInfo.InvariantCulture)), "expires_after[seconds]");
            }

            var response = await http.PostAsync("v1/files", form, Ct);
            response.StatusCode.Should().Be(HttpStatusCode.OK);
            return await JsonAsync(response);
        }

        bool OnDisk(string id) => Directory.EnumerateFiles(Path.Combine(_gateways.Dir, "batches"), id + ".*", SearchOption.AllDirectories).Any();
        async Task<HttpStatusCode> Status(HttpClient http, string path) => (await http.GetAsync(path, Ct)).StatusCode;

        clock.Advance(TimeSpan.FromMinutes(30)); // the hourly sweep is due 60 min from the start
        var input = await Upload(a, string.Join('\n', Enumerable.Range(0, 6).Select(i => Line($"t{i}"))), 3600);
        var short1 = await Upload(a, Line("x"), 3600);
        var other = await Upload(b, Line("y"), 3600);
        var kept = await Upload(a, Line("z"), null);
        input.GetProperty("expires_at").GetInt64().Should().Be(input.GetProperty("created_at").GetInt64() + 3600);
        kept.GetProperty("expires_at").GetInt64().Should().Be(kept.GetProperty("created_at").GetInt64() + (30 * 24 * 3600), "OpenAI's default for batch files");
        var inputId = input.GetProperty("id").GetString()!;
        var short1Id = short1.GetProperty("id").GetString()!;
        var otherId = other.GetProperty("id").GetString()!;
        var created = await JsonAsync(await a.PostAsync("v1/batches", Json($$$"""{"input_file_id":"{{{inputId}}}","endpoint":"/v1/chat/completions","completion_window":"24h","output_expires_after":{"anchor":"created_at","seconds":7200}}"""), Ct));
        var batchId = created.GetProperty("id").GetString()!;
        await Wait.Until(() => provider.Calls == 4, "the batch's first four requests are in flight");

        // 60 min from the start the sweep finds nothing expired; at 90 min three files expire — gone for the API at once.
        // (Two steps: a timer due within one Advance runs at its end, where the clock already stands.)
        clock.Advance(TimeSpan.FromMinutes(30));
        clock.Advance(TimeSpan.FromMinutes(30));
        foreach (var (http, id) in new[] { (a, inputId), (a, short1Id), (b, otherId) })
        {
            (await Status(http, $"v1/files/{id}")).Should().Be(HttpStatusCode.NotFound);
            (await Status(http, $"v1/files/{id}/content")).Should().Be(HttpStatusCode.NotFound);
            OnDisk(id).Should().BeTrue("no sweep has run since it expired");
        }

        (await JsonAsync(await a.GetAsync("v1/files", Ct))).GetProperty("data").EnumerateArray().Select(f => f.GetProperty("id").GetString()).Should().Equal(kept.GetProperty("id").GetString());
        var again = await a.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{short1Id}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct);
        again.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await JsonAsync(again)).GetProperty("error").GetProperty("param").GetString().Should().Be("input_file_id");

        // Key A's next upload sweeps A's expired files but the input its running batch still reads; B's wait for the hour.
        await Upload(a, Line("w"), null);
        OnDisk(short1Id).Should().BeFalse("swept at its key's upload");
        OnDisk(inputId).Should().BeTrue("a running batch reads it");
        OnDisk(otherId).Should().BeTrue("another key's files wait for the hourly sweep");
        clock.Advance(TimeSpan.FromMinutes(30)); // the sweep at 120 min
        await Wait.Until(() => !OnDisk(otherId), "the hourly sweep deletes another key's expired file");
        OnDisk(inputId).Should().BeTrue("the batch still runs");

        // The batch ends with every line answered; its input leaves the disk then, its results carry their own policy.
        gate.SetResult();
        var batch = await EndedAsync(a, batchId);
        batch.GetProperty("status").GetString().Should().Be("completed");
        batch.GetProperty("request_counts").GetProperty("completed").GetInt64().Should().Be(6);
        await Wait.Until(() => !OnDisk(inputId), "a finished batch's expired input is swept");
        var outputId = batch.GetProperty("output_file_id").GetString()!;
        var output = await JsonAsync(await a.GetAsync($"v1/files/{outputId}", Ct));
        output.GetProperty("expires_at").GetInt64().Should().Be(output.GetProperty("created_at").GetInt64() + 7200);
        (await LinesAsync(a, outputId)).Should().HaveCount(6);
        clock.Advance(TimeSpan.FromSeconds(7200));
        (await Status(a, $"v1/files/{outputId}")).Should().Be(HttpStatusCode.NotFound);
    }

    /// <summary>
    /// An upload kept as a file gives its hold back in the same step (<see cref="BatchStore.Keep"/>): it never counts twice
    /// — as a file and as an upload being written — so an upload beside it is not refused room the key has. The upload
    /// route held it until its answer was written: four 1,400-byte uploads at once under a 3,000-byte bound were
    /// sometimes one kept, not two (the last check of <c>A_keys_files_hold_at_most_its_bound_and_deleting_makes_room</c>).
    /// </summary>
    [Fact]
    public void An_upload_kept_as_a_file_counts_once()
    {
        using var store = new BatchStore(new ServerOptions { BatchDirectory = Path.Combine(_gateways.Dir, "batches") }, Microsoft.Extensions.Logging.Abstractions.NullLogger<BatchStore>.Instance);
        store.TryHold("a", 1400, 3000, 10, 0).Should().BeTrue();
        var temporary = store.UploadPath("a");
        File.WriteAllBytes(temporary, new byte[1400]);

        store.Keep("a", new BatchFile { Id = BatchStore.NewFileId(), Bytes = 1400, CreatedAt = 1, Filename = "in.jsonl", Purpose = "batch" }, temporary);

        store.TryHold("a", 1400, 3000, 10, 0).Should().BeTrue("1,400 kept and 1,400 more fit in 3,000");
        store.TryHold("a", 1400, 3000, 10, 0).Should().BeFalse("a third would not");
    }

    /// <summary>
    /// The sweep also deletes what a crash left in a key's directory — bytes no record names (after an hour: a kept
    /// upload's record follows its bytes) and temporary files (after a day) — and leaves younger ones and kept files be.
    /// </summary>
    [Fact]
    public void The_sweep_deletes_what_a_crash_left_once_it_is_old()
    {
        using var store = new BatchStore(new ServerOptions { BatchDirectory = Path.Combine(_gateways.Dir, "batches") }, Microsoft.Extensions.Logging.Abstractions.NullLogger<BatchStore>.Instance);
        var dir = store.OwnerDirectory("a");
        Directory.CreateDirectory(dir);
        string Make(string name, TimeSpan age)
        {
            var path = Path.Combine(dir, name);
            File.WriteAllText(path, "x");
            File.SetLastWriteTimeUtc(path, DateTime.UtcNow - age);
            return path;
        }

        var elsewhere = Make(BatchStore.NewFileId() + ".data", TimeSpan.FromDays(2));
        store.SweepExpired((_, _) => false).Should().Be(0);
        File.Exists(elsewhere).Should().BeTrue("a directory this process does not hold is left alone");
        store.TryOpen().Should().BeTrue();

        var kept = BatchStore.NewFileId();
        var upload = Make("batch_0123456789abcdef01234567.output.jsonl", TimeSpan.FromDays(2)); // results last written long ago
        store.AddFile("a", new BatchFile { Id = kept, Filename = "in.jsonl", Purpose = "batch", CreatedAt = store.Now }, upload);
        (DateTime.UtcNow - File.GetLastWriteTimeUtc(store.DataPath("a", kept))).Should().BeLessThan(TimeSpan.FromMinutes(1), "kept bytes are young until their record is written");
        File.SetLastWriteTimeUtc(store.DataPath("a", kept), DateTime.UtcNow - TimeSpan.FromDays(3));
        var orphanOld = Make(BatchStore.NewFileId() + ".data", TimeSpan.FromHours(2));
        var orphanYoung = Make(BatchStore.NewFileId() + ".data", TimeSpan.FromMinutes(10));
        var uploadOld = Make("upload-0123456789abcdef.tmp", TimeSpan.FromDays(2));
        var recordOld = Make(BatchStore.NewBatchId() + ".json.0a1b2c3d.tmp", TimeSpan.FromDays(2));
        var uploadYoung = Make("upload-fedcba9876543210.tmp", TimeSpan.FromHours(3));

        store.SweepExpired((_, _) => false).Should().Be(0, "no file had expired");
        (File.Exists(orphanOld), File.Exists(uploadOld), File.Exists(recordOld), File.Exists(elsewhere)).Should().Be((false, false, false, false));
        (File.Exists(orphanYoung), File.Exists(uploadYoung), File.Exists(store.DataPath("a", kept))).Should().Be((true, true, true));
        store.GetFile("a", kept).Should().NotBeNull();
    }

    /// <summary>
    /// A <c>/v1/responses</c> batch (OpenAI's Batch API takes them): each line's body read as <c>POST /v1/responses</c>
    /// reads it, each result's body a response object the OpenAI SDK reads — not stored, so <c>store</c> is false — and
    /// the lines the route would refuse (a reference to a stored response, a stream, an unknown parameter, another
    /// endpoint's url) are bad lines naming why.
    /// </summary>
    [Fact]
    public async Task A_responses_batch_answers_each_line_as_the_responses_route_would()
    {
        var provider = new FakeProvider("p");
        var root = await StartAsync(provider);
        using var http = Http(root, KeyA);
        static string Responses(string id, string body, string url = "/v1/responses") =>
            $$$"""{"custom_id":"{{{id}}}","method":"POST","url":"{{{url}}}","body":{{{body}}}}""";
        var lines = string.Join('\n',
            Responses("text", """{"model":"m","input":"Tell me about gateways.","instructions":"Be brief.","max_output_tokens":32}"""),
            Responses("items", """{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"hello"}]}],"store":true}"""),
            Responses("previous", """{"model":"m","input":"and then?","previous_response_id":"resp_0123"}"""),
            Responses("reference", """{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"""),
            Responses("stream", """{"model":"m","input":"hi","stream":true}"""),
            Responses("unknown", """{"model":"m","input":"hi","frobnicate":1}"""),
            Responses("doubled", """{"model":"m","input":"hi","input":"again"}"""),
            Responses("background", """{"model":"m","input":"hi","background":true}"""),
            Responses("conversation", """{"model":"m","input":"hi","conversation":"conv_0123"}"""),
            Responses("chat", """{"model":"m","messages":[{"role":"user","content":"hi"}]}""", "/v1/chat/completions"));
        var fileId = (await UploadAsync(http, lines)).GetProperty("id").GetString()!;
        var created = await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/responses","completion_window":"24h"}"""), Ct);
        created.StatusCode.Should().Be(HttpStatusCode.OK);
        var batch = await EndedAsync(http, (await JsonAsync(created)).GetProperty("id").GetString()!);
        batch.GetProperty("status").GetString().Should().Be("completed");
        batch.GetProperty("endpoint").GetString().Should().Be("/v1/responses");
        provider.Calls.Should().Be(2);

        var output = (await LinesAsync(http, batch.GetProperty("output_file_id").GetString()!)).Select(l => JsonDocument.Parse(l).RootElement).ToDictionary(l => l.GetProperty("custom_id").GetString()!);
        output.Keys.Should().BeEquivalentTo(["text", "items"]);
        foreach (var line in output.Values)
        {
            var body = line.GetProperty("response").GetProperty("body");
            body.GetProperty("store").GetBoolean().Should().BeFalse("a batch's responses are not stored");
            var response = System.ClientModel.Primitives.ModelReaderWriter.Read<OpenAI.Responses.ResponseResult>(BinaryData.FromString(body.GetRawText()))!;
            response.Id.Should().StartWith("resp_");
            response.Status.Should().Be(OpenAI.Responses.ResponseStatus.Completed);
            response.GetOutputText().Should().Be("ok");
            response.Usage.InputTokenCount.Should().BePositive();
            line.GetProperty("response").GetProperty("request_id").GetString().Should().NotBeNullOrEmpty();
        }

        var errors = (await LinesAsync(http, batch.GetProperty("error_file_id").GetString()!)).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("error")).ToList();
        errors.Select(e => e.GetProperty("code").GetString()).Should().Equal("invalid_body", "invalid_body", "invalid_body", "invalid_body", "invalid_body", "invalid_body", "invalid_body", "unsupported_url");
        errors[0].GetProperty("message").GetString().Should().Contain("previous_response_id").And.Contain("stored responses");
        errors[1].GetProperty("message").GetString().Should().Contain("stored responses");
        errors[2].GetProperty("message").GetString().Should().Contain("stream");
        errors[3].GetProperty("message").GetString().Should().Contain("frobnicate");
        errors[5].GetProperty("message").GetString().Should().Contain("background response");
        errors[6].GetProperty("message").GetString().Should().Contain("conversation");
    }

    /// <summary>
    /// Each batch not ended holds room for its two result files among the key's <c>Server:MaxBatchFilesPerKey</c>: a batch
    /// or an upload that would leave its live batches' results without room is a 413, so the bound holds when they end.
    /// </summary>
    [Fact]
    public async Task Live_batches_hold_room_for_their_results_among_the_keys_files()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var root = await StartAsync(FakeProvider.Gated("p", gate), more: new() { ["Gateway:Server:MaxBatchFilesPerKey"] = "6" });
        using var http = Http(root, KeyA);
        var one = (await UploadAsync(http, Line("t1") + "\nnot json")).GetProperty("id").GetString()!; // an output and an error file each
        var two = (await UploadAsync(http, Line("t2") + "\nnot json")).GetProperty("id").GetString()!;
        async Task<HttpResponseMessage> Create(string fileId) =>
            await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct);
        var first = (await JsonAsync(await Create(one))).GetProperty("id").GetString()!;
        var second = (await JsonAsync(await Create(two))).GetProperty("id").GetString()!; // 2 files + 2 × 2 held = 6
        var third = await Create(one);
        third.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
        (await JsonAsync(third)).GetProperty("error").GetProperty("code").GetString().Should().Be("storage_limit_reached");
        using (var form = new MultipartFormDataContent { { new StringContent("batch"), "purpose" }, { new ByteArrayContent("{}"u8.ToArray()), "file", "x.jsonl" } })
        {
            (await http.PostAsync("v1/files", form, Ct)).StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge, "the live batches' results hold the room left");
        }

        gate.SetResult();
        (await EndedAsync(http, first)).GetProperty("error_file_id").GetString().Should().NotBeNull();
        (await EndedAsync(http, second)).GetProperty("error_file_id").GetString().Should().NotBeNull();
        (await JsonAsync(await http.GetAsync("v1/files", Ct))).GetProperty("data").GetArrayLength().Should().Be(6, "the bound held when the results came");
    }

    /// <summary>
    /// Anthropic's Message Batches API through the official Anthropic .NET SDK: a batch created with its requests inline
    /// runs on the Batch API's machinery, is retrieved and listed as a <c>message_batch</c>, and its results are one line per
    /// request — <c>succeeded</c> with Claude's message shape, <c>errored</c> with Anthropic's error type for an invalid
    /// request (named by its place in the batch) and an unknown model — then it is deleted, files and all. A batch of
    /// the OpenAI Batch API is not one of its message batches. The route answered 404 before.
    /// </summary>
    [Fact]
    public async Task The_Anthropic_SDK_creates_a_message_batch_reads_its_results_and_deletes_it()
    {
        var root = await StartAsync(new FakeProvider("p"));
        using var client = new Anthropic.AnthropicClient { ApiKey = KeyA, BaseUrl = root.ToString().TrimEnd('/'), MaxRetries = 0 };
        static Anthropic.Models.Messages.Batches.Request Ask(string id, string model, long maxTokens = 16) => new()
        {
            CustomID = id,
            Params = new Anthropic.Models.Messages.Batches.Params { Model = model, MaxTokens = maxTokens, Messages = [new Anthropic.Models.Messages.UserMessageParam { Content = "hello" }] },
        };

        var created = await client.Messages.Batches.Create(new Anthropic.Models.Messages.Batches.BatchCreateParams { Requests = [Ask("one", "m"), Ask("two", "m"), Ask("bad", "m", maxTokens: 0), Ask("gone", "nope")] }, Ct);

        created.ID.Should().StartWith("batch_");
        Anthropic.Models.Messages.Batches.MessageBatch batch = created;
        await Wait.Until(() => (batch = client.Messages.Batches.Retrieve(created.ID, cancellationToken: Ct).GetAwaiter().GetResult()).ProcessingStatus.Raw() == "ended", "the message batch ends");
        (batch.RequestCounts.Succeeded, batch.RequestCounts.Errored, batch.RequestCounts.Processing, batch.RequestCounts.Canceled).Should().Be((2L, 2L, 0L, 0L));
        batch.ResultsUrl.Should().EndWith($"/v1/messages/batches/{created.ID}/results");
        batch.EndedAt.Should().NotBeNull();

        var results = new Dictionary<string, Anthropic.Models.Messages.Batches.MessageBatchResult>();
        await foreach (var line in client.Messages.Batches.ResultsStreaming(created.ID, cancellationToken: Ct))
        {
            results.Add(line.CustomID, line.Result);
        }

        results.Keys.Should().BeEquivalentTo(["one", "two", "bad", "gone"], "every request once");
        results["one"].TryPickSucceeded(out var one).Should().BeTrue();
        one!.Message.Content[0].TryPickText(out var text).Should().BeTrue();
        text!.Text.Should().NotBeEmpty();
        one.Message.Usage.OutputTokens.Should().BePositive();
        results["bad"].TryPickErrored(out var bad).Should().BeTrue();
        bad!.Error.Error.TryPickInvalidRequestError(out var invalid).Should().BeTrue();
        invalid!.Message.Should().StartWith("requests.2.params: max_tokens", "named by its place in the batch, as the create's own errors are");
        results["gone"].TryPickErrored(out var gone).Should().BeTrue();
        gone!.Error.Error.TryPickNotFoundError(out _).Should().BeTrue();

        using var http = Http(root, KeyA);
        var fileId = (await UploadAsync(http, Line("x"))).GetProperty("id").GetString()!;
        var openAI = (await JsonAsync(await http.PostAsync("v1/batches", Json($$"""{"input_file_id":"{{fileId}}","endpoint":"/v1/chat/completions","completion_window":"24h"}"""), Ct))).GetProperty("id").GetString()!;
        var listed = await client.Messages.Batches.List(cancellationToken: Ct);
        listed.Items.Select(b => b.ID).Should().Equal([created.ID], "an OpenAI batch is not a message batch");
        (await http.GetAsync($"v1/messages/batches/{openAI}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);

        var deleted = await client.Messages.Batches.Delete(created.ID, cancellationToken: Ct);
        deleted.ID.Should().Be(created.ID);
        using var after = await http.GetAsync($"v1/messages/batches/{created.ID}", Ct);
        after.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await JsonAsync(after)).GetProperty("type").GetString().Should().Be("error", "Anthropic's error shape");
    }

    /// <summary>
    /// A message batch cancelled with requests in flight ends once they end: those have their results, every request never
    /// sent is <c>canceled</c> (in the counts and the results); its results are refused until it has ended.
    /// </summary>
    [Fact]
    public async Task A_cancelled_message_batch_answers_what_ran_and_says_the_rest_was_canceled()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = FakeProvider.Gated("p", gate);
        var root = await StartAsync(provider);
        using var http = Http(root, KeyA);
        var requests = string.Join(',', Enumerable.Range(0, 10).Select(i => $$$"""{"custom_id":"r{{{i}}}","params":{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}}"""));
        var id = (await JsonAsync(await http.PostAsync("v1/messages/batches", Json($$"""{"requests":[{{requests}}]}"""), Ct))).GetProperty("id").GetString()!;
        await Wait.Until(() => provider.Calls == 4, "four requests in flight (BatchConcurrency)");

        var cancelling = await JsonAsync(await http.PostAsync($"v1/messages/batches/{id}/cancel", null, Ct));
        cancelling.GetProperty("processing_status").GetString().Should().Be("canceling");
        using (var early = await http.GetAsync($"v1/messages/batches/{id}/results", Ct))
        {
            early.StatusCode.Should().Be(HttpStatusCode.BadRequest, "not ended yet");
        }

        gate.SetResult();
        JsonElement batch = default;
        await Wait.Until(() => (batch = JsonAsync(http.GetAsync($"v1/messages/batches/{id}", Ct).GetAwaiter().GetResult()).GetAwaiter().GetResult()).GetProperty("processing_status").GetString() == "ended", "the batch ends");
        var counts = batch.GetProperty("request_counts");
        (counts.GetProperty("succeeded").GetInt64(), counts.GetProperty("canceled").GetInt64(), counts.GetProperty("processing").GetInt64()).Should().Be((4L, 6L, 0L));
        batch.GetProperty("cancel_initiated_at").GetString().Should().NotBeNull();
        var lines = (await http.GetStringAsync($"v1/messages/batches/{id}/results", Ct)).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        lines.Select(l => l.GetProperty("custom_id").GetString()).Should().BeEquivalentTo(Enumerable.Range(0, 10).Select(i => $"r{i}"));
        lines.GroupBy(l => l.GetProperty("result").GetProperty("type").GetString()).ToDictionary(g => g.Key!, g => g.Count()).Should().BeEquivalentTo(new Dictionary<string, int> { ["succeeded"] = 4, ["canceled"] = 6 });
        provider.Calls.Should().Be(4);
    }

    [Theory]
    [InlineData("""{"requests":[]}""", "requests: a batch holds 1 to 100000")]
    [InlineData("""{"requests":{}}""", "requests: Input should be a valid list")]
    [InlineData("""{"requests":[{"custom_id":"a","params":{}}],"requests":[]}""", "requests: given more than once")]
    [InlineData("""[{"custom_id":"a","params":{}}]""", "must be a JSON object")]
    [InlineData("""{"requests":[{"custom_id":"a","params":{}}]} {}""", "not valid JSON")]
    [InlineData("""{"requests":[{"custom_id":"a","params":{}},""", "not valid JSON")]
    [InlineData("""{}""", "requests: Field required")]
    [InlineData("""{"requests":[{"custom_id":"a b","params":{}}]}""", "requests.0.custom_id")]
    [InlineData("""{"requests":[{"custom_id":"a","params":{}},{"custom_id":"a","params":{}}]}""", "requests.1.custom_id: 'a' is given more than once")]
    [InlineData("""{"requests":[{"custom_id":"a"}]}""", "requests.0.params")]
    [InlineData("""{"requests":[5]}""", "requests.0: must be an object")]
    [InlineData("""{"requests":""", "not valid JSON")]
    public async Task A_bad_message_batch_is_a_400_in_Anthropics_shape_and_starts_nothing(string body, string says)
    {
        var provider = new FakeProvider("p");
        var root = await StartAsync(provider);
        using var http = Http(root, KeyA);

        using var response = await http.PostAsync("v1/messages/batches", Json(body), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var error = await JsonAsync(response);
        error.GetProperty("type").GetString().Should().Be("error");
        error.GetProperty("error").GetProperty("type").GetString().Should().Be("invalid_request_error");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain(says);
        (await JsonAsync(await http.GetAsync("v1/messages/batches", Ct))).GetProperty("data").GetArrayLength().Should().Be(0);
        (await JsonAsync(await http.GetAsync("v1/files", Ct))).GetProperty("data").GetArrayLength().Should().Be(0, "no input file kept");
    }

    [Fact]
    public async Task A_message_batch_is_bound_as_a_batch_file_not_as_one_request_and_read_a_request_at_a_time()
    {
        // One request's bound is 64 KiB here, a batch's 256 KiB: a 160 KiB batch sent with its Content-Length (as the
        // SDKs send it) is taken whole — it was refused at the one-request bound — and one past 256 KiB is a 413.
        var provider = new FakeProvider("p");
        var root = await StartAsync(provider, maxFileBytes: 256 * 1024, more: new Dictionary<string, string?> { ["Gateway:Server:MaxRequestBodyBytes"] = "65536" });
        using var http = Http(root, KeyA);
        static string Request(int i) => "{\"custom_id\":\"r" + i + "\",\"params\":{\"model\":\"m\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":\"" + new string('x', 450) + "\"}]}}";
        static string Batch(int count) => "{\"requests\":[" + string.Join(",", Enumerable.Range(0, count).Select(Request)) + "]}";

        var body = Batch(300);
        body.Length.Should().BeInRange(150_000, 200_000);
        using (var created = await http.PostAsync("v1/messages/batches", Json(body), Ct))
        {
            created.StatusCode.Should().Be(HttpStatusCode.OK, await created.Content.ReadAsStringAsync(Ct));
            var batch = await JsonAsync(created);
            batch.GetProperty("request_counts").EnumerateObject().Sum(static c => c.Value.GetInt32()).Should().Be(300, batch.GetRawText());
        }

        using var tooLarge = await http.PostAsync("v1/messages/batches", Json(Batch(600)), Ct);
        tooLarge.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
        var error = await JsonAsync(tooLarge);
        error.GetProperty("type").GetString().Should().Be("error");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("MaxBatchFileBytes");
    }

    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    private static async Task<JsonElement> UploadAsync(HttpClient http, string content)
    {
        using var form = new MultipartFormDataContent
        {
            { new StringContent("batch"), "purpose" },
            { new ByteArrayContent(Encoding.UTF8.GetBytes(content)), "file", "input.jsonl" },
        };
        var response = await http.PostAsync("v1/files", form, Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        return await JsonAsync(response);
    }
}
