using System.Net;
using System.Net.Http.Headers;
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

/// <summary>
/// One id per request (docs/server.md, response headers): the route's own request-id header (<c>x-request-id</c>, which
/// the OpenAI SDKs expose as the response's request id; <c>request-id</c> on <c>/v1/messages</c>) and
/// <c>x-gateway-request-id</c> carry the request log's <c>request_id</c> — on an answer and on a failure alike, so a
/// failed call can be looked up by the id its client saw. Real Kestrel on 127.0.0.1, real SQLite log.
/// </summary>
public sealed class RequestIdTests : IAsyncLifetime
{
    private const string Key = "sk-gw-ids-team-a-0123456789";
    private const string AdminKey = "sk-gw-ids-admin-0123456789";
    private readonly BatchFiles _files = new();
    private WebApplication _app = null!;
    private HttpClient _http = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        var config = TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Providers:1:Name"] = "down",
            ["Gateway:Providers:1:Type"] = "Simulated",
            ["Gateway:Providers:1:Simulated:LatencyMs"] = "0",
            ["Gateway:Providers:1:Simulated:FailureRate"] = "1", // every call a 503
            ["Gateway:Models:1:Name"] = "broken",
            ["Gateway:Models:1:Deployments:0:Provider"] = "down",
            ["Gateway:Server:Keys:0:Id"] = "team-a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:1:Id"] = "ops",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(AdminKey),
            ["Gateway:Server:Keys:1:Admin"] = "true",
            ["Gateway:RequestLog:Path"] = Path.Combine(_files.Dir, "gateway.db"),
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

    [Theory]
    [InlineData("v1/chat/completions", "x-request-id", false)]
    [InlineData("v1/chat/completions", "x-request-id", true)]
    [InlineData("v1/messages", "request-id", false)]
    [InlineData("v1/messages", "request-id", true)]
    public async Task Every_answer_and_every_failure_carries_its_log_rows_id_in_both_headers(string path, string header, bool stream)
    {
        using var ok = await Send(path, "gpt-4o-mini", stream);
        ok.StatusCode.Should().Be(HttpStatusCode.OK);
        var id = IdOf(ok, header);
        await ok.Content.ReadAsStringAsync(Ct); // a stream's row is written when it ends

        using var failed = await Send(path, "broken", stream);
        ((int)failed.StatusCode).Should().BeGreaterThanOrEqualTo(500, "the only deployment answers 503");
        var failedId = IdOf(failed, header);
        failedId.Should().NotBe(id);
        await failed.Content.ReadAsStringAsync(Ct);

        // Both ended: their rows are queued once the pipeline retired them, then written.
        var pipeline = _app.Services.GetRequiredService<PipelineGateway.Pipeline.GatewayPipeline>();
        await Wait.Until(() => pipeline.Outstanding == 0, "both requests retired");
        await _app.Services.GetRequiredService<PipelineGateway.RequestLog.RequestLogWriter>().FlushAsync(Ct);

        using var admin = new HttpRequestMessage(HttpMethod.Get, "v1/gateway/logs?limit=50");
        admin.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
        using var logs = await _http.SendAsync(admin, Ct);
        var rows = JsonDocument.Parse(await logs.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("data").EnumerateArray().ToList();
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

    private async Task<HttpResponseMessage> Send(string path, string model, bool stream)
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
