using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Sqlite;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>GET /v1/gateway/logs and /v1/gateway/spend on a real Kestrel (127.0.0.1, port 0) over a real SQLite log.</summary>
public sealed class RequestLogEndpointTests : IAsyncLifetime
{
    private const string Key = "sk-gw-team-a-0123456789";
    private const string AdminKey = "sk-gw-admin-0123456789";
    private readonly BatchFiles _files = new();
    private WebApplication _app = null!;
    private HttpClient _http = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        var config = TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Server:Keys:0:Id"] = "team-a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:1:Id"] = "ops",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(AdminKey),
            ["Gateway:Server:Keys:1:Admin"] = "true",
            ["Gateway:RequestLog:Path"] = Path.Combine(_files.Dir, "gateway.db"),
            ["Gateway:Providers:1:Name"] = "down",
            ["Gateway:Providers:1:Type"] = "Simulated",
            ["Gateway:Providers:1:Simulated:LatencyMs"] = "0",
            ["Gateway:Providers:1:Simulated:FailureRate"] = "1", // every call a 503
            ["Gateway:Models:1:Name"] = "broken",
            ["Gateway:Models:1:Deployments:0:Provider"] = "down",
            ["Gateway:Providers:2:Name"] = "stall",
            ["Gateway:Providers:2:Type"] = "Simulated",
            ["Gateway:Providers:2:Simulated:LatencyMs"] = "0",
            ["Gateway:Providers:2:Simulated:PerTokenDelayMs"] = "60000", // the first word at once, the next a minute later
            ["Gateway:Models:2:Name"] = "stalls",
            ["Gateway:Models:2:Deployments:0:Provider"] = "stall",
            ["Gateway:Models:2:Deployments:0:Model"] = "gpt-4o-mini",
        });
        _app = GatewayServer.Build(config, "http://127.0.0.1:0", l => { }, s => s.AddPipelineGateway().AddSqliteRequestLog());
        _http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(_app, Ct) };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.DisposeAsync();
        SqliteConnection.ClearAllPools();
        _files.Dispose();
    }

    private async Task<HttpResponseMessage> Send(HttpMethod method, string path, string key, string? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        if (body is not null)
        {
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        }

        return await _http.SendAsync(request, Ct);
    }

    private Task<HttpResponseMessage> Chat(string model, string text) =>
        Send(HttpMethod.Post, "v1/chat/completions", Key, $$"""{"model":"{{model}}","messages":[{"role":"user","content":"{{text}}"}]}""");

    private async Task<JsonElement> Admin(string path)
    {
        await _app.Services.GetRequiredService<PipelineGateway.RequestLog.RequestLogWriter>().FlushAsync(Ct);
        var response = await Send(HttpMethod.Get, path, AdminKey);
        response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync(Ct));
        return await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
    }

    [Fact]
    public async Task Logs_are_filtered_and_paged_newest_first_and_spend_is_grouped()
    {
        for (var i = 0; i < 5; i++)
        {
            (await Chat("gpt-4o-mini", $"hello {i}")).StatusCode.Should().Be(HttpStatusCode.OK);
        }

        var firstPage = await Admin("v1/gateway/logs?limit=3&key=team-a");
        var rows = firstPage.GetProperty("data").EnumerateArray().ToList();
        rows.Should().HaveCount(3);
        rows.Select(r => r.GetProperty("id").GetInt64()).Should().BeInDescendingOrder();
        rows.Should().OnlyContain(r => r.GetProperty("key_id").GetString() == "team-a" && r.GetProperty("status").GetInt32() == 200 && r.GetProperty("provider").GetString() == "sim" && !r.GetProperty("usage_estimated").GetBoolean());
        rows[0].GetProperty("attempts")[0].GetProperty("outcome").GetString().Should().Be("Success");
        var cursor = firstPage.GetProperty("next_cursor").GetInt64();

        var second = await Admin($"v1/gateway/logs?limit=3&cursor={cursor}");
        second.GetProperty("data").GetArrayLength().Should().Be(2);
        second.GetProperty("next_cursor").ValueKind.Should().Be(JsonValueKind.Null);

        (await Admin("v1/gateway/logs?model=other")).GetProperty("data").GetArrayLength().Should().Be(0);
        (await Admin("v1/gateway/logs?status=200&since=1h")).GetProperty("data").GetArrayLength().Should().Be(5);

        var spend = await Admin("v1/gateway/spend?group_by=key&since=1d");
        var team = spend.GetProperty("data").EnumerateArray().Single();
        team.GetProperty("group").GetString().Should().Be("team-a");
        team.GetProperty("requests").GetInt64().Should().Be(5);
        team.GetProperty("cost_usd").GetDecimal().Should().BePositive();
        spend.GetProperty("total_cost_usd").GetDecimal().Should().Be(team.GetProperty("cost_usd").GetDecimal());
    }

    /// <summary>
    /// Spend per end user: the user each front door names — chat's <c>user</c> and <c>safety_identifier</c>, the Responses
    /// API's <c>safety_identifier</c>, Anthropic's <c>metadata.user_id</c> — is the row's <c>user</c>, grouped by
    /// <c>group_by=user</c> and filtered by <c>user=</c>; a key pasted into it is not kept, a long one is cut.
    /// </summary>
    [Fact]
    public async Task Spend_is_grouped_by_the_end_user_each_front_door_names_and_the_log_filtered_by_it()
    {
        const string Pasted = "sk-proj-AbCdEfGhIjKlMnOpQrSt1234";
        (await Send(HttpMethod.Post, "v1/chat/completions", Key, """{"model":"gpt-4o-mini","user":"alice","messages":[{"role":"user","content":"one"}]}""")).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Send(HttpMethod.Post, "v1/chat/completions", Key, """{"model":"gpt-4o-mini","safety_identifier":"alice","messages":[{"role":"user","content":"two"}]}""")).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Send(HttpMethod.Post, "v1/responses", Key, """{"model":"gpt-4o-mini","input":"three","safety_identifier":"bob"}""")).StatusCode.Should().Be(HttpStatusCode.OK);
        using (var messages = new HttpRequestMessage(HttpMethod.Post, "v1/messages") { Content = new StringContent("""{"model":"gpt-4o-mini","max_tokens":16,"metadata":{"user_id":"carol"},"messages":[{"role":"user","content":"four"}]}""", Encoding.UTF8, "application/json") })
        {
            messages.Headers.Add("x-api-key", Key);
            messages.Headers.Add("anthropic-version", "2023-06-01");
            (await _http.SendAsync(messages, Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
        }

        (await Chat("gpt-4o-mini", "five")).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Send(HttpMethod.Post, "v1/chat/completions", Key, $$"""{"model":"gpt-4o-mini","user":"dan {{Pasted}}","messages":[{"role":"user","content":"six"}]}""")).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Send(HttpMethod.Post, "v1/chat/completions", Key, $$"""{"model":"gpt-4o-mini","user":"{{new string('e', 300)}}","messages":[{"role":"user","content":"seven"}]}""")).StatusCode.Should().Be(HttpStatusCode.OK);

        var spend = (await Admin("v1/gateway/spend?group_by=user&since=1d")).GetProperty("data").EnumerateArray()
            .ToDictionary(r => r.GetProperty("group").GetString()!, r => r.GetProperty("requests").GetInt64());
        spend.Should().BeEquivalentTo(new Dictionary<string, long>
        {
            ["alice"] = 2, ["bob"] = 1, ["carol"] = 1, [""] = 1, ["dan [redacted]"] = 1, [new string('e', PipelineGateway.RequestLog.RequestRecord.MaxUserChars)] = 1,
        });

        var alices = (await Admin("v1/gateway/logs?user=alice")).GetProperty("data").EnumerateArray().ToList();
        alices.Should().HaveCount(2).And.OnlyContain(r => r.GetProperty("user").GetString() == "alice");
        (await Admin("v1/gateway/logs?user=carol")).GetProperty("data").EnumerateArray().Single().GetProperty("user").GetString().Should().Be("carol");
        (await Admin("v1/gateway/logs?limit=1000")).ToString().Should().NotContain(Pasted[8..], "a key pasted into the user is not kept");
    }

    [Fact]
    public async Task A_model_asked_for_in_any_case_is_logged_and_grouped_as_configured()
    {
        (await Chat("GPT-4O-MINI", "one")).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Chat("gpt-4o-MINI", "two")).StatusCode.Should().Be(HttpStatusCode.OK);

        var rows = (await Admin("v1/gateway/logs")).GetProperty("data").EnumerateArray().ToList();
        rows.Should().HaveCount(2).And.OnlyContain(r => r.GetProperty("model").GetString() == "gpt-4o-mini");
        var spend = (await Admin("v1/gateway/spend?group_by=model&since=1d")).GetProperty("data").EnumerateArray().Single();
        (spend.GetProperty("group").GetString(), spend.GetProperty("requests").GetInt64()).Should().Be(("gpt-4o-mini", 2L));
    }

    [Fact]
    public async Task A_client_that_reads_a_streams_content_and_disconnects_is_billed_what_it_consumed_in_the_log_and_the_spend()
    {
        using (var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions"))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Key);
            request.Content = new StringContent("""{"model":"stalls","stream":true,"messages":[{"role":"user","content":"tell me everything"}]}""", Encoding.UTF8, "application/json");
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
            response.StatusCode.Should().Be(HttpStatusCode.OK);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
            string? line;
            while ((line = await reader.ReadLineAsync(Ct)) is not null && !line.Contains("\"content\":\"", StringComparison.Ordinal))
            {
            }

            line.Should().NotBeNull("the first word came");
        } // the client goes away with the upstream's next word a minute off

        var metrics = _app.Services.GetRequiredService<PipelineGateway.Metrics.IGatewayMetrics>();
        await Wait.Until(() => metrics.GetSnapshot().CancelledRequests == 1, "the gateway ends the request when its client leaves");
        // Its row is queued by a listener after the metrics' (a CI run read the log between the two and found no row):
        // once the pipeline has retired the request, it is queued, and Admin's flush writes it.
        var pipeline = _app.Services.GetRequiredService<PipelineGateway.Pipeline.GatewayPipeline>();
        await Wait.Until(() => pipeline.Outstanding == 0, "the request retired");

        var row = (await Admin("v1/gateway/logs?model=stalls")).GetProperty("data").EnumerateArray().Single();
        row.GetProperty("status").GetInt32().Should().Be(499);
        row.GetProperty("provider").GetString().Should().Be("stall", "billed at the deployment that streamed it");
        row.GetProperty("provider_model").GetString().Should().Be("gpt-4o-mini");
        row.GetProperty("prompt_tokens").GetInt32().Should().BePositive();
        row.GetProperty("completion_tokens").GetInt32().Should().Be(1, "one content event went out");
        row.GetProperty("usage_estimated").GetBoolean().Should().BeTrue("the upstream never reported its usage");
        var attempt = row.GetProperty("attempts").EnumerateArray().Should().ContainSingle("the streaming attempt is listed, though the caller was answered before its worker recorded it").Subject;
        (attempt.GetProperty("provider").GetString(), attempt.GetProperty("outcome").GetString(), attempt.GetProperty("error").GetString()).Should().Be(("stall", "Cancelled", "caller"));
        var cost = row.GetProperty("cost_usd").GetDecimal();
        cost.Should().BePositive();
        metrics.GetSnapshot().TotalCost.Should().Be(cost, "the metrics bill what the log does");
        var spend = await Admin("v1/gateway/spend?group_by=model&since=1d");
        spend.GetProperty("total_cost_usd").GetDecimal().Should().Be(cost, "and so does the spend the budgets are restored from");
    }

    [Theory]
    [InlineData("v1/gateway/logs?limit=0", "limit")]
    [InlineData("v1/gateway/logs?limit=abc", "limit")]
    [InlineData("v1/gateway/logs?status=1000", "status")]
    [InlineData("v1/gateway/logs?since=yesterday", "since")]
    [InlineData("v1/gateway/logs?until=99999999999d", "until")]
    [InlineData("v1/gateway/logs?cursor=-5", "cursor")]
    [InlineData("v1/gateway/spend?group_by=tenant", "group_by")]
    [InlineData("v1/gateway/spend?group_by=1", "group_by")]
    [InlineData("v1/gateway/spend?since=%00", "since")]
    public async Task A_bad_parameter_is_a_400_naming_it(string path, string param)
    {
        var response = await Send(HttpMethod.Get, path, AdminKey);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var error = (await response.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("error");
        error.GetProperty("param").GetString().Should().Be(param);
        error.GetProperty("code").GetString().Should().Be("invalid_parameter");
    }

    [Fact]
    public async Task Only_an_admin_key_reads_the_log()
    {
        (await Send(HttpMethod.Get, "v1/gateway/logs", Key)).StatusCode.Should().Be(HttpStatusCode.Forbidden);
        (await Send(HttpMethod.Get, "v1/gateway/spend", Key)).StatusCode.Should().Be(HttpStatusCode.Forbidden);
        (await _http.GetAsync("v1/gateway/logs", Ct)).StatusCode.Should().Be(HttpStatusCode.Unauthorized);
    }

    [Fact]
    public async Task The_dashboards_data_needs_an_admin_key_and_its_page_holds_none()
    {
        var page = await _http.GetAsync("dashboard", Ct);
        page.StatusCode.Should().Be(HttpStatusCode.OK, "the page is a shell that asks for the key");
        page.Content.Headers.ContentType!.MediaType.Should().Be("text/html");
        page.Headers.GetValues("Content-Security-Policy").Single().Should().Contain("default-src 'none'");
        var html = await page.Content.ReadAsStringAsync(Ct);
        html.Should().NotContain("src=").And.NotContain("href=").And.NotContain("@import").And.NotContain("url(", "nothing is fetched from anywhere: script and style are inline");

        (await _http.GetAsync("dashboard/events", Ct)).StatusCode.Should().Be(HttpStatusCode.Unauthorized);
        (await Send(HttpMethod.Get, "dashboard/events", Key)).StatusCode.Should().Be(HttpStatusCode.Forbidden);

        using var request = new HttpRequestMessage(HttpMethod.Get, "dashboard/events");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
        using var events = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        events.StatusCode.Should().Be(HttpStatusCode.OK);
        events.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        using var reader = new StreamReader(await events.Content.ReadAsStreamAsync(Ct));
        var first = await reader.ReadLineAsync(Ct);
        first.Should().StartWith("data: ");
        using var doc = JsonDocument.Parse(first!["data: ".Length..]);
        doc.RootElement.GetProperty("metrics").TryGetProperty("total_requests", out _).Should().BeTrue();
    }

    /// <summary>
    /// One id per request (docs/server.md, response headers): the route's own request-id header (<c>x-request-id</c>,
    /// which the OpenAI SDKs expose as the response's request id; <c>request-id</c> on <c>/v1/messages</c>) and
    /// <c>x-gateway-request-id</c> carry the request log's <c>request_id</c> — on an answer and on a failure alike, so a
    /// failed call can be looked up by the id its client saw.
    /// </summary>
    [Theory]
    [InlineData("v1/chat/completions", "x-request-id", false)]
    [InlineData("v1/chat/completions", "x-request-id", true)]
    [InlineData("v1/messages", "request-id", false)]
    [InlineData("v1/messages", "request-id", true)]
    public async Task Every_answer_and_every_failure_carries_its_log_rows_id_in_both_headers(string path, string header, bool stream)
    {
        using var ok = await SendChat(path, "gpt-4o-mini", stream);
        ok.StatusCode.Should().Be(HttpStatusCode.OK);
        var id = IdOf(ok, header);
        await ok.Content.ReadAsStringAsync(Ct); // a stream's row is written when it ends

        using var failed = await SendChat(path, "broken", stream);
        ((int)failed.StatusCode).Should().BeGreaterThanOrEqualTo(500, "the only deployment answers 503");
        var failedId = IdOf(failed, header);
        failedId.Should().NotBe(id);
        await failed.Content.ReadAsStringAsync(Ct);

        // Both ended: their rows are queued once the pipeline retired them, then written.
        var pipeline = _app.Services.GetRequiredService<PipelineGateway.Pipeline.GatewayPipeline>();
        await Wait.Until(() => pipeline.Outstanding == 0, "both requests retired");

        var rows = (await Admin("v1/gateway/logs?limit=50")).GetProperty("data").EnumerateArray().ToList();
        rows.Should().ContainSingle(r => r.GetProperty("request_id").GetString() == id)
            .Which.GetProperty("status").GetInt32().Should().Be(200);
        rows.Should().ContainSingle(r => r.GetProperty("request_id").GetString() == failedId)
            .Which.GetProperty("status").GetInt32().Should().BeGreaterThanOrEqualTo(500, "the failure's row is the one its client's id names");
    }

    private static string IdOf(HttpResponseMessage response, string header)
    {
        var id = response.Headers.GetValues(header).Should().ContainSingle().Subject;
        id.Should().StartWith("req_");
        response.Headers.GetValues("x-gateway-request-id").Should().Equal([id], "the route's header and the gateway's are one id");
        return id;
    }

    private async Task<HttpResponseMessage> SendChat(string path, string model, bool stream)
    {
        var streamed = stream ? "true" : "false";
        var body = path == "v1/messages"
            ? $$"""{"model":"{{model}}","max_tokens":16,"stream":{{streamed}},"messages":[{"role":"user","content":"hello"}]}"""
            : $$"""{"model":"{{model}}","stream":{{streamed}},"messages":[{"role":"user","content":"hello"}]}""";
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Key);
        return await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
    }
}
