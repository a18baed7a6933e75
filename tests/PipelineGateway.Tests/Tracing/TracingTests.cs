using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Text;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Metrics;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Tracing;

/// <summary>
/// Spans through the real HTTP path: a client's <c>traceparent</c> → the gateway (127.0.0.1, port 0) → an upstream that
/// is not our simulator (a plain Kestrel recording the headers it gets), with an ActivityListener standing in for the
/// OpenTelemetry SDK.
/// </summary>
public sealed class TracingTests : IAsyncLifetime
{
    private readonly ConcurrentQueue<Activity> _spans = new();
    private readonly ConcurrentQueue<string> _upstreamTraceparents = new();
    private ActivityListener _listener = null!;
    private WebApplication _upstream = null!;
    private WebApplication _gateway = null!;
    private HttpClient _http = null!;
    private volatile int _failWith;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == GatewayTelemetry.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => _spans.Enqueue(a),
        };
        ActivitySource.AddActivityListener(_listener);

        var upstream = WebApplication.CreateSlimBuilder();
        upstream.Logging.ClearProviders();
        upstream.WebHost.UseUrls("http://127.0.0.1:0");
        _upstream = upstream.Build();
        _upstream.MapPost("/v1/chat/completions", async (HttpContext ctx) =>
        {
            _upstreamTraceparents.Enqueue(ctx.Request.Headers.TraceParent.ToString());
            if (_failWith != 0)
            {
                ctx.Response.StatusCode = _failWith;
                await ctx.Response.WriteAsync("""{"error":{"message":"no","type":"server_error"}}""");
                return;
            }

            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync("""{"id":"up-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}""");
        });
        _upstream.MapPost("/v1/embeddings", async (HttpContext ctx) =>
        {
            _upstreamTraceparents.Enqueue(ctx.Request.Headers.TraceParent.ToString());
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync("""{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.6,0.8]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":3,"total_tokens":3}}""");
        });
        await _upstream.StartAsync(Ct);
        var upstreamAddress = _upstream.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "up",
            ["Gateway:Providers:0:Type"] = "OpenAICompatible",
            ["Gateway:Providers:0:BaseUrl"] = upstreamAddress.TrimEnd('/') + "/v1",
            ["Gateway:Models:0:Name"] = "gpt-4o-mini",
            ["Gateway:Models:0:Deployments:0:Provider"] = "up",
            ["Gateway:Pipeline:MaxAttempts"] = "1",
        }).Build();
        _gateway = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { });
        _http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(_gateway, Ct) };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _gateway.DisposeAsync();
        await _upstream.DisposeAsync();
        _listener.Dispose();
    }

    private async Task<HttpResponseMessage> Chat(string traceparent)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent("""{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"temperature":0.5}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.TryAddWithoutValidation("traceparent", traceparent);
        return await _http.SendAsync(request, Ct);
    }

    private List<Activity> SpansOf(ActivityTraceId trace) => [.. _spans.Where(s => s.TraceId == trace)];

    /// <summary>
    /// An embeddings request's spans say so, as OpenTelemetry's GenAI conventions name the operation
    /// (<c>gen_ai.operation.name</c> <c>embeddings</c>, the span named for it), with its usage, in the caller's trace.
    /// </summary>
    [Fact]
    public async Task An_embeddings_request_is_traced_as_embeddings()
    {
        var trace = ActivityTraceId.CreateRandom();
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/embeddings")
        {
            Content = new StringContent("""{"model":"gpt-4o-mini","input":"Hello"}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.TryAddWithoutValidation("traceparent", $"00-{trace}-{ActivitySpanId.CreateRandom()}-01");
        (await _http.SendAsync(request, Ct)).StatusCode.Should().Be(HttpStatusCode.OK);

        await Support.Wait.Until(() => SpansOf(trace).Count == 2, "the request's span and the attempt's span ended");
        var spans = SpansOf(trace);
        spans.Should().OnlyContain(s => (string?)s.GetTagItem("gen_ai.operation.name") == "embeddings");
        spans.Single(s => s.Kind == ActivityKind.Internal).DisplayName.Should().Be("embeddings gpt-4o-mini");
        spans.Single(s => s.Kind == ActivityKind.Internal).GetTagItem("gen_ai.usage.input_tokens").Should().Be(3);
        _upstreamTraceparents.Should().Contain(t => t.Contains(trace.ToString(), StringComparison.Ordinal), "the upstream call carries the trace");
    }

    [Fact]
    public async Task A_request_and_its_attempt_are_spans_in_the_callers_trace_and_the_upstream_gets_its_traceparent()
    {
        var trace = ActivityTraceId.CreateRandom();
        var callerSpan = ActivitySpanId.CreateRandom();
        (await Chat($"00-{trace}-{callerSpan}-01")).StatusCode.Should().Be(HttpStatusCode.OK);

        await Support.Wait.Until(() => SpansOf(trace).Count == 2, "the request's span and the attempt's span ended");
        var spans = SpansOf(trace);
        var request = spans.Single(s => s.Kind == ActivityKind.Internal);
        var attempt = spans.Single(s => s.Kind == ActivityKind.Client);

        // Under the caller's span: directly, or under the HTTP server's own span when ASP.NET Core makes one.
        (request.Parent is { } server ? server.ParentSpanId : request.ParentSpanId).Should().Be(callerSpan, "the request's span continues the caller's trace");
        request.DisplayName.Should().Be("chat gpt-4o-mini");
        request.GetTagItem("gen_ai.operation.name").Should().Be("chat");
        request.GetTagItem("gen_ai.request.model").Should().Be("gpt-4o-mini");
        request.GetTagItem("gen_ai.request.temperature").Should().Be(0.5);
        request.GetTagItem("gen_ai.response.model").Should().Be("gpt-4o-mini");
        request.GetTagItem("gen_ai.provider.name").Should().Be("openai");
        request.GetTagItem("gen_ai.usage.input_tokens").Should().Be(7);
        request.GetTagItem("gen_ai.usage.output_tokens").Should().Be(2);
        request.GetTagItem("pgw.cache_hit").Should().Be(false);
        request.GetTagItem("pgw.attempts").Should().Be(1);
        ((string)request.GetTagItem("pgw.request_id")!).Should().StartWith("req_");

        attempt.ParentSpanId.Should().Be(request.SpanId, "an attempt is a child of its request");
        attempt.GetTagItem("gen_ai.response.model").Should().Be("gpt-4o-mini-2024");
        attempt.GetTagItem("pgw.attempt").Should().Be(1);
        attempt.GetTagItem("pgw.hedge").Should().Be(false);

        var sent = _upstreamTraceparents.Single(t => t.Contains(trace.ToHexString(), StringComparison.Ordinal));
        sent.Should().NotContain(callerSpan.ToHexString(), "the upstream call is a child of the attempt, not the caller's span");
    }

    [Fact]
    public async Task A_failure_marks_both_spans_with_error_type()
    {
        _failWith = 500;
        var trace = ActivityTraceId.CreateRandom();
        (await Chat($"00-{trace}-{ActivitySpanId.CreateRandom()}-01")).StatusCode.Should().Be(HttpStatusCode.BadGateway);

        await Support.Wait.Until(() => SpansOf(trace).Count == 2, "both spans ended");
        var spans = SpansOf(trace);
        spans.Should().OnlyContain(s => s.Status == ActivityStatusCode.Error);
        spans.Single(s => s.Kind == ActivityKind.Client).GetTagItem("error.type").Should().Be("500");
        spans.Single(s => s.Kind == ActivityKind.Internal).GetTagItem("error.type").Should().NotBeNull();
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("00-00000000000000000000000000000000-0000000000000000-01")]
    [InlineData("")]
    public async Task A_malformed_traceparent_is_ignored_and_the_request_gets_its_own_trace(string traceparent)
    {
        var before = _spans.Count;
        (await Chat(traceparent)).StatusCode.Should().Be(HttpStatusCode.OK);
        await Support.Wait.Until(() => _spans.Count >= before + 2, "the spans ended");
    }
}

/// <summary>pgw serve's OTLP export, to a receiver that is a plain Kestrel (127.0.0.1, port 0) taking OTLP/HTTP posts.</summary>
public sealed class OtlpExportTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Spans_reach_an_otlp_http_receiver_and_nothing_is_exported_without_an_endpoint()
    {
        var posts = new ConcurrentQueue<(string Path, string ContentType, byte[] Body)>();
        var receiverBuilder = WebApplication.CreateSlimBuilder();
        receiverBuilder.Logging.ClearProviders();
        receiverBuilder.WebHost.UseUrls("http://127.0.0.1:0");
        await using var receiver = receiverBuilder.Build();
        receiver.MapPost("/{**path}", async (HttpContext ctx) =>
        {
            using var body = new MemoryStream();
            await ctx.Request.Body.CopyToAsync(body);
            posts.Enqueue((ctx.Request.Path.Value!, ctx.Request.ContentType ?? string.Empty, body.ToArray()));
            ctx.Response.ContentType = "application/x-protobuf";
        });
        await receiver.StartAsync(Ct);
        var receiverAddress = receiver.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

        var config = TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Telemetry:OtlpEndpoint"] = receiverAddress,
            ["Gateway:Telemetry:OtlpProtocol"] = "http",
        });
        await using (var gateway = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }))
        {
            using var http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(gateway, Ct) };
            using var body = new StringContent("""{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}""", Encoding.UTF8, "application/json");
            (await http.PostAsync("v1/chat/completions", body, Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
            await gateway.StopAsync(Ct); // the exporter flushes its batch at shutdown
        }

        var export = posts.Should().ContainSingle(p => p.Path == "/v1/traces").Which;
        export.ContentType.Should().Be("application/x-protobuf");
        var text = Encoding.UTF8.GetString(export.Body);
        text.Should().Contain("chat gpt-4o-mini").And.Contain("gen_ai.request.model").And.Contain("pgw.request_id");
    }

    [Fact]
    public void A_bad_endpoint_stops_the_start_naming_the_setting()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Telemetry:OtlpEndpoint"] = "not a url",
        }).Build();
        var act = () => GatewayServer.Build(config, "http://127.0.0.1:0", _ => { });
        act.Should().Throw<Microsoft.Extensions.Options.OptionsValidationException>().WithMessage("*Gateway:Telemetry:OtlpEndpoint*");
    }
}
