using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
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
/// The Batch API in a fleet (<c>Gateway:Server:BatchInstanceUrl</c>), over real HTTP with three gateways: one holds the
/// files and batches, the two others pass every Batch API request to it. Driven by the official OpenAI and Anthropic
/// .NET SDKs through different instances for each step (a load balancer's doing): a file uploaded through one is there
/// for a batch created through another, results read through a third, lists whole on each; the passing instances keep
/// nothing. A bad key is refused before anything is passed; a holder that cannot be reached is a 503 in the route's
/// shape that does not show its address; a caller cannot make an instance keep files itself by sending the header.
/// </summary>
public sealed class BatchFleetTests : IAsyncDisposable
{
    private const string Key = "sk-gw-fleet-batch-0123456789";
    private const string OtherKey = "sk-gw-fleet-batch-other-0123";
    private readonly BatchGateways _gateways = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public ValueTask DisposeAsync() => _gateways.DisposeAsync();

    private string Directory(string name) => Path.Combine(_gateways.Dir, name);

    /// <summary>A gateway named <paramref name="name"/> (its Batch API directory its own), passing to <paramref name="holder"/> when given.</summary>
    private async Task<Uri> StartAsync(string name, Uri? holder = null, string listen = "http://127.0.0.1:0", Dictionary<string, string?>? more = null)
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Server:BatchDirectory"] = Directory(name),
            ["Gateway:Server:BatchInstanceUrl"] = holder?.ToString(),
            ["Gateway:Server:BatchConcurrency"] = "4",
            ["Gateway:Server:Keys:0:Id"] = "fleet",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:1:Id"] = "other",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(OtherKey),
            ["Gateway:Pipeline:MaxAttempts"] = "1",
        }.Concat(more ?? []).ToDictionary()).Build();
        var provider = new FakeProvider("p");
        var app = GatewayServer.Build(config, listen, _ => { }, s => s.AddPipelineGateway().AddProvider(provider).AddModel("m", m => m.Deploy(provider.Name)));
        _gateways.Add(app);
        return await GatewayServer.StartAsync(app, Ct);
    }

    /// <summary>A loopback port the OS chose and nothing listens on now.</summary>
    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    /// <summary>The files a gateway's Batch API directory holds (none when it never made the directory).</summary>
    private string[] Kept(string name) =>
        System.IO.Directory.Exists(Directory(name)) ? [.. System.IO.Directory.EnumerateFiles(Directory(name), "*", SearchOption.AllDirectories).Where(f => !f.EndsWith(".lock", StringComparison.Ordinal))] : [];

    private static HttpClient Http(Uri root, string key = Key) => BatchGateways.Client(root, key);

    private static string Line(string id) =>
        $$$"""{"custom_id":"{{{id}}}","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hello {{{id}}}"}]}}""";

    private static Task<JsonElement> JsonAsync(HttpResponseMessage response) => BatchGateways.JsonAsync(response, Ct);

    private static async Task<string[]> IdsAsync(HttpClient http, string path) =>
        [.. (await JsonAsync(await http.GetAsync(path, Ct))).GetProperty("data").EnumerateArray().Select(static e => e.GetProperty("id").GetString()!)];

    private static BatchClient Batches(Uri root) =>
        new(new ApiKeyCredential(Key), new BatchClientOptions { Endpoint = new Uri(root, "v1"), RetryPolicy = new ClientRetryPolicy(0) });

    private static OpenAIFileClient Files(Uri root) =>
        new(new ApiKeyCredential(Key), new OpenAIClientOptions { Endpoint = new Uri(root, "v1"), RetryPolicy = new ClientRetryPolicy(0) });

    [Fact]
    public async Task A_file_uploaded_through_one_instance_runs_as_a_batch_created_through_another_and_reads_through_a_third()
    {
        var holder = await StartAsync("holder");
        var b = await StartAsync("b", holder);
        var c = await StartAsync("c", holder);

        // 2,000 lines (~300 KB): the upload is streamed through B, not held.
        var lines = string.Join('\n', Enumerable.Range(0, 2_000).Select(i => Line($"task-{i}")));
        var input = (await Files(b).UploadFileAsync(BinaryData.FromString(lines), "prompts.jsonl", FileUploadPurpose.Batch)).Value;
        input.SizeInBytes.Should().Be(Encoding.UTF8.GetByteCount(lines));

        var operation = await Batches(c).CreateBatchAsync(BinaryContent.Create(BinaryData.FromString(
            $$$"""{"input_file_id":"{{{input.Id}}}","endpoint":"/v1/chat/completions","completion_window":"24h"}""")), waitUntilCompleted: false);
        using var throughB = Http(b);
        JsonElement batch = default;
        await Wait.Until(() => (batch = JsonAsync(throughB.GetAsync($"v1/batches/{operation.BatchId}", Ct).GetAwaiter().GetResult()).GetAwaiter().GetResult()).GetProperty("status").GetString() == "completed", "the batch completes, read through B");
        batch.GetProperty("request_counts").GetProperty("completed").GetInt64().Should().Be(2_000);

        var output = (await Files(c).DownloadFileAsync(batch.GetProperty("output_file_id").GetString(), Ct)).Value.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        output.Select(l => JsonDocument.Parse(l).RootElement.GetProperty("custom_id").GetString()).Should().BeEquivalentTo(Enumerable.Range(0, 2_000).Select(i => $"task-{i}"), "every line answered once, downloaded through C");

        // A cancel as the SDKs send it (a POST with no body and no type) reaches the holder's handler through C: a batch
        // that completed cannot be cancelled (409), not a 415 for the missing type.
        using var throughC = Http(c);
        using var cancel = await throughC.PostAsync($"v1/batches/{operation.BatchId}/cancel", null, Ct);
        cancel.StatusCode.Should().Be(HttpStatusCode.Conflict, await cancel.Content.ReadAsStringAsync(Ct));

        // Every instance lists the fleet's files and batches, whole; the two passing instances keep none.
        using var direct = Http(holder);
        foreach (var path in (string[])["v1/files", "v1/batches", "openai/files"])
        {
            var listed = await IdsAsync(direct, path);
            listed.Should().NotBeEmpty(path);
            (await IdsAsync(throughB, path)).Should().Equal(listed, path);
            (await IdsAsync(throughC, path)).Should().Equal(listed, path);
        }

        (Kept("b"), Kept("c")).Should().Be(([], []), "the passing instances keep nothing");
        Kept("holder").Should().NotBeEmpty();

        // Deleted through C: gone for every instance. Another key sees none of it through any.
        (await throughC.DeleteAsync($"v1/files/{input.Id}", Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
        (await direct.GetAsync($"v1/files/{input.Id}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
        using var other = Http(b, OtherKey);
        (await IdsAsync(other, "v1/batches")).Should().BeEmpty("another key's batches are not its own, whichever instance it asks");
        (await other.GetAsync($"v1/batches/{operation.BatchId}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
    }

    /// <summary>
    /// Anthropic's message batches through the Anthropic SDK: created through one instance, its results streamed through
    /// another; its <c>results_url</c> is the address the caller used (the caller's Host is passed on), not the holder's.
    /// </summary>
    [Fact]
    public async Task The_Anthropic_SDK_creates_a_message_batch_through_one_instance_and_reads_its_results_through_another()
    {
        var holder = await StartAsync("holder");
        var b = await StartAsync("b", holder);
        var c = await StartAsync("c", holder);
        using var throughB = new Anthropic.AnthropicClient { ApiKey = Key, BaseUrl = b.ToString().TrimEnd('/'), MaxRetries = 0 };
        using var throughC = new Anthropic.AnthropicClient { ApiKey = Key, BaseUrl = c.ToString().TrimEnd('/'), MaxRetries = 0 };
        static Anthropic.Models.Messages.Batches.Request Ask(string id) => new()
        {
            CustomID = id,
            Params = new Anthropic.Models.Messages.Batches.Params { Model = "m", MaxTokens = 16, Messages = [new Anthropic.Models.Messages.UserMessageParam { Content = "hello" }] },
        };

        var created = await throughB.Messages.Batches.Create(new Anthropic.Models.Messages.Batches.BatchCreateParams { Requests = [Ask("one"), Ask("two")] }, Ct);
        Anthropic.Models.Messages.Batches.MessageBatch batch = created;
        await Wait.Until(() => (batch = throughB.Messages.Batches.Retrieve(created.ID, cancellationToken: Ct).GetAwaiter().GetResult()).ProcessingStatus.Raw() == "ended", "the message batch ends");
        batch.ResultsUrl.Should().Be($"{b.ToString().TrimEnd('/')}/v1/messages/batches/{created.ID}/results", "the address the caller used");

        var results = new List<string>();
        await foreach (var line in throughC.Messages.Batches.ResultsStreaming(created.ID, cancellationToken: Ct))
        {
            results.Add(line.CustomID);
        }

        results.Should().BeEquivalentTo(["one", "two"]);
        (await throughC.Messages.Batches.List(cancellationToken: Ct)).Items.Select(x => x.ID).Should().Equal([created.ID]);
        (Kept("b"), Kept("c")).Should().Be(([], []));
    }

    /// <summary>
    /// What is refused where: a bad key by the instance it reached (nothing is passed: the holder here cannot even be
    /// reached, and the answer is still the 401); a holder that cannot be reached is a 503 <c>batch_instance_unavailable</c>
    /// in the route's shape with <c>Retry-After</c>, its address not shown.
    /// </summary>
    [Fact]
    public async Task A_bad_key_is_refused_before_anything_is_passed_and_an_unreachable_holder_is_a_503_that_hides_its_address()
    {
        var port = FreePort();
        var b = await StartAsync("b", new Uri($"http://127.0.0.1:{port}/"));

        using var bad = Http(b, "sk-gw-not-a-key-0123456789");
        (await bad.GetAsync("v1/files", Ct)).StatusCode.Should().Be(HttpStatusCode.Unauthorized);
        (await bad.GetAsync("v1/messages/batches", Ct)).StatusCode.Should().Be(HttpStatusCode.Unauthorized);

        using var http = Http(b);
        using var files = await http.GetAsync("v1/files", Ct);
        files.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable);
        files.Headers.RetryAfter.Should().NotBeNull();
        var text = await files.Content.ReadAsStringAsync(Ct);
        JsonDocument.Parse(text).RootElement.GetProperty("error").GetProperty("code").GetString().Should().Be("batch_instance_unavailable");
        text.Should().NotContain(port.ToString(System.Globalization.CultureInfo.InvariantCulture)).And.NotContain("127.0.0.1");

        using var messages = await http.PostAsync("v1/messages/batches", new StringContent("""{"requests":[]}""", Encoding.UTF8, "application/json"), Ct);
        messages.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable);
        var anthropic = await JsonAsync(messages);
        (anthropic.GetProperty("type").GetString(), anthropic.GetProperty("error").GetProperty("type").GetString()).Should().Be(("error", "overloaded_error"), "Anthropic's shape on its route");
        Kept("b").Should().BeEmpty();
    }

    /// <summary>
    /// A caller sending the header itself (any value but the fleet's) is passed on all the same — it cannot make an
    /// instance keep files where the fleet does not look; the holder serves what an instance passes with the fleet's value.
    /// </summary>
    [Fact]
    public async Task The_header_a_caller_sends_itself_does_not_make_an_instance_keep_its_files()
    {
        var holder = await StartAsync("holder");
        var b = await StartAsync("b", holder);
        using var http = Http(b);
        using var form = new MultipartFormDataContent
        {
            { new StringContent("batch"), "purpose" },
            { new ByteArrayContent(Encoding.UTF8.GetBytes(Line("x"))), "file", "input.jsonl" },
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/files") { Content = form };
        request.Headers.Add(BatchForwarder.Header, BatchForwarder.Marker([])); // a value made as the fleet makes it, from another key configuration
        using var response = await http.SendAsync(request, Ct);

        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var id = (await JsonAsync(response)).GetProperty("id").GetString()!;
        Kept("b").Should().BeEmpty();
        using var direct = Http(holder);
        (await IdsAsync(direct, "v1/files")).Should().Equal([id], "the file is the holder's");
    }

    /// <summary>
    /// Every instance given the same setting, the holder included: a request the holder is given directly takes one hop to
    /// itself (passed with the fleet's value, which it serves) and never loops.
    /// </summary>
    [Fact]
    public async Task A_holder_whose_setting_names_itself_serves_what_it_passes_to_itself()
    {
        var self = new Uri($"http://127.0.0.1:{FreePort()}/");
        var holder = await StartAsync("holder", self, self.ToString().TrimEnd('/'));
        var b = await StartAsync("b", self);

        using var direct = Http(holder);
        var input = await Files(holder).UploadFileAsync(BinaryData.FromString(Line("x")), "input.jsonl", FileUploadPurpose.Batch);
        using var throughB = Http(b);
        (await IdsAsync(throughB, "v1/files")).Should().Equal([input.Value.Id]);
        (await IdsAsync(direct, "v1/files")).Should().Equal([input.Value.Id]);
        Kept("holder").Should().NotBeEmpty();
        Kept("b").Should().BeEmpty();
    }

    /// <summary>
    /// Against a holder that is not a gateway (a plain Kestrel app): what is passed — the caller's key and Host, the
    /// fleet's header, the caller's address in X-Forwarded-For, the body streamed whole — and what comes back: an answer
    /// cut after it started aborts the caller's connection (a download is never taken as whole when it is not), and a
    /// caller's body past the route's bound is the caller's 413, not a 503; within the route's bound (a batch file's,
    /// larger than other requests') it is passed whole.
    /// </summary>
    [Fact]
    public async Task What_is_passed_to_the_holder_and_a_cut_answer_and_an_oversized_body_as_the_caller_sees_them()
    {
        var seen = new List<(string Path, string? Key, string? Host, string? Marker, string? ForwardedFor, long Bytes)>();
        var holder = LoopbackApp.Build();
        holder.MapPost("/v1/files", async (Microsoft.AspNetCore.Http.HttpContext ctx) =>
        {
            var bytes = 0L;
            var buffer = new byte[8192];
            int read;
            while ((read = await ctx.Request.Body.ReadAsync(buffer, ctx.RequestAborted)) > 0)
            {
                bytes += read;
            }

            var h = ctx.Request.Headers;
            lock (seen)
            {
                seen.Add(("/v1/files", h.Authorization, ctx.Request.Host.Value, h[BatchForwarder.Header], h["X-Forwarded-For"], bytes));
            }

            ctx.Response.ContentType = "application/json";
            await ctx.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { id = "file-from-holder", bytes })), ctx.RequestAborted);
        });
        var address = await LoopbackApp.StartAsync(holder, Ct);
        try
        {
            // A file's bound is its own (1 KiB here, plus 64 KiB for the form), not MaxRequestBodyBytes (1 KiB): passed on,
            // an upload was held to Kestrel's default for every route.
            var b = await StartAsync("b", address, more: new() { ["Gateway:Server:MaxBatchFileBytes"] = "1024", ["Gateway:Server:MaxRequestBodyBytes"] = "1024" });
            using var http = Http(b);

            using var form = new MultipartFormDataContent
            {
                { new StringContent("batch"), "purpose" },
                { new ByteArrayContent(new byte[40_000]), "file", "input.jsonl" },
            };
            using var uploaded = await http.PostAsync("v1/files", form, Ct);
            uploaded.StatusCode.Should().Be(HttpStatusCode.OK);
            var sent = seen.Should().ContainSingle().Subject;
            (sent.Key, sent.Host, sent.Marker).Should().Be(($"Bearer {Key}", b.Authority, BatchForwarder.Marker([new GatewayKeyOptions { Id = "fleet", Sha256 = GatewayKeys.Hash(Key) }, new GatewayKeyOptions { Id = "other", Sha256 = GatewayKeys.Hash(OtherKey) }])));
            sent.ForwardedFor.Should().Be("127.0.0.1");
            sent.Bytes.Should().Be(form.Headers.ContentLength!.Value, "the body whole");

            // Cut mid-answer by a holder written byte by byte (a chunked answer, no length, closed after its first chunk): the
            // caller's transfer breaks too — a passing instance that ended its own answer normally would hand on a short
            // body as whole.
            using var raw = new TcpListener(IPAddress.Loopback, 0);
            raw.Start();
            var cutting = AnswerOnceAsync(raw, Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + new string('x', 1_000) + "\r\n"));
            var cutter = await StartAsync("cut", new Uri($"http://127.0.0.1:{((IPEndPoint)raw.LocalEndpoint).Port}/"));
            using var throughCutter = Http(cutter);
            // The reset reaches the caller while it reads the body, or — the answer's head still buffered in the instance
            // when the holder cut (a full run saw it) — before the head; a cut the instance saw before writing anything is
            // a 502 (the next test). Never a 200 read whole.
            HttpStatusCode? status = null;
            HttpRequestException? broken = null;
            try
            {
                using var content = await throughCutter.GetAsync("v1/files/file-x/content", HttpCompletionOption.ResponseHeadersRead, Ct);
                status = content.StatusCode;
                await content.Content.ReadAsByteArrayAsync(Ct);
            }
            catch (HttpRequestException ex)
            {
                broken = ex;
            }

            (broken is not null || status == HttpStatusCode.BadGateway).Should().BeTrue($"a cut answer is a broken transfer or a 502, never {status} read whole");
            await cutting;

            // A chunked body (no length announced) past the route's bound (1 KiB + the form's 64 KiB): this instance's
            // 413 in the route's shape, the holder given nothing whole.
            using var big = new StreamContent(new MemoryStream(new byte[200_000]));
            big.Headers.ContentType = new MediaTypeHeaderValue("multipart/form-data") { Parameters = { new NameValueHeaderValue("boundary", "x") } };
            using var chunked = new HttpRequestMessage(HttpMethod.Post, "v1/files") { Content = big };
            chunked.Headers.TransferEncodingChunked = true;
            using var refused = await http.SendAsync(chunked, Ct);
            refused.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge, await refused.Content.ReadAsStringAsync(Ct));
            (await JsonAsync(refused)).GetProperty("error").GetProperty("code").GetString().Should().Be("file_too_large");
            seen.Should().HaveCount(1, "the holder answered no cut body");
        }
        finally
        {
            await holder.StopAsync(CancellationToken.None);
            await holder.DisposeAsync();
        }
    }

    /// <summary>A holder written byte by byte: takes one request's head, sends <paramref name="answer"/> as it is, and closes.</summary>
    private static Task AnswerOnceAsync(TcpListener raw, byte[] answer) => Task.Run(async () =>
    {
        using var socket = await raw.AcceptTcpClientAsync(Ct);
        var stream = socket.GetStream();
        var head = new List<byte>();
        var one = new byte[1];
        while (!(head.Count >= 4 && head[^4] == '\r' && head[^3] == '\n' && head[^2] == '\r' && head[^1] == '\n') && await stream.ReadAsync(one, Ct) == 1)
        {
            head.Add(one[0]);
        }

        await stream.WriteAsync(answer, Ct);
        await stream.FlushAsync(Ct);
    }, Ct);

    /// <summary>
    /// A holder whose answer breaks before its first byte (its head sent, the body promised, the connection closed): the
    /// passing instance has written nothing to the caller, so it answers a 502 in the API's shape — retried by the SDKs —
    /// instead of resetting the caller's connection as it must once part of an answer went out.
    /// </summary>
    [Fact]
    public async Task A_holders_answer_cut_before_its_first_byte_is_a_502_to_the_caller()
    {
        using var raw = new TcpListener(IPAddress.Loopback, 0);
        raw.Start();
        var cutting = AnswerOnceAsync(raw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"u8.ToArray());
        var cutter = await StartAsync("cut", new Uri($"http://127.0.0.1:{((IPEndPoint)raw.LocalEndpoint).Port}/"));
        using var http = Http(cutter);

        using var answer = await http.GetAsync("v1/files/file-x/content", Ct);
        await cutting;

        answer.StatusCode.Should().Be(HttpStatusCode.BadGateway);
        answer.Headers.RetryAfter.Should().NotBeNull();
        (await JsonAsync(answer)).GetProperty("error").GetProperty("code").GetString().Should().Be("batch_instance_unavailable");
    }

    [Theory]
    [InlineData("ftp://pgw-0:8080")]
    [InlineData("http://admin:hunter2@pgw-0:8080")]
    [InlineData("pgw-0:8080/path?x=1")]
    [InlineData("http://pgw-0:8080/?x=1")]
    public void A_batch_instance_url_that_is_no_http_base_url_stops_start_up_without_echoing_it(string url)
    {
        var problems = new ServerOptions { BatchInstanceUrl = url }.Validate().ToList();

        problems.Should().ContainSingle().Which.Should().Contain("BatchInstanceUrl").And.NotContain("hunter2");
        new ServerOptions { BatchInstanceUrl = "http://pgw-0.pgw:8080" }.Validate().Should().BeEmpty();
    }
}
