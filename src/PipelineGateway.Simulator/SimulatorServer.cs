using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Simulator;

/// <summary>
/// An upstream that speaks the OpenAI Chat Completions and Anthropic Messages wire formats (whole and SSE),
/// with deterministic answers and scriptable faults. Runs on Kestrel; bind it to 127.0.0.1.
/// </summary>
public sealed partial class SimulatorServer : IAsyncDisposable
{
    private static readonly string[] Models = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-3-5-haiku-latest"];
    private readonly WebApplication _app;
    private readonly SimulatorOptions _options;
    private readonly Random _random;
    private long _requests;
    private long _aborted;
    private long _inFlight;

    private SimulatorServer(WebApplication app, SimulatorOptions options)
    {
        _app = app;
        _options = options;
        _random = new Random(options.Seed);
    }

    /// <summary>The address the server listens on (with the OS-chosen port when started on port 0).</summary>
    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>Requests received.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Requests whose client went away before the answer was complete.</summary>
    public long Aborted => Interlocked.Read(ref _aborted);

    public long InFlight => Interlocked.Read(ref _inFlight);

    public static async Task<SimulatorServer> StartAsync(SimulatorOptions options, string urls = "http://127.0.0.1:0", Action<ILoggingBuilder>? logging = null, CancellationToken cancellationToken = default)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = ["--hostBuilder:reloadConfigOnChange=false"] }); // no appsettings.json watcher: one that cannot start (inotify used up) ended the process
        builder.Logging.ClearProviders();
        logging?.Invoke(builder.Logging);
        builder.WebHost.UseUrls(urls);
        builder.WebHost.ConfigureKestrel(k => k.AddServerHeader = false);
        var app = builder.Build();
        var server = new SimulatorServer(app, options);
        server.Map(app);
        await app.StartAsync(cancellationToken).ConfigureAwait(false);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.BaseAddress = new Uri(address.EndsWith('/') ? address : address + "/");
        return server;
    }

    public Task WaitForShutdownAsync(CancellationToken cancellationToken) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    private void Map(WebApplication app)
    {
        app.MapPost("/v1/chat/completions", OpenAIChatAsync);
        app.MapGet("/v1/models", (HttpContext ctx) => Results.Json(
            new { @object = "list", data = Models.Select(id => new { id, @object = "model", created = 1_700_000_000, owned_by = "pipelinegateway-simulator" }) }));
        app.MapPost("/v1/messages", AnthropicMessagesAsync);
        app.MapPost("/v1/messages/count_tokens", AnthropicCountTokensAsync);

        // Azure OpenAI's deployment-scoped route, same behaviour.
        app.MapPost("/openai/deployments/{deployment}/chat/completions", OpenAIChatAsync);
        app.MapPost("/v1/embeddings", OpenAIEmbeddingsAsync);
        app.MapPost("/v1/moderations", OpenAIModerationsAsync);
        app.MapPost("/openai/deployments/{deployment}/embeddings", OpenAIEmbeddingsAsync);
        app.MapPost("/v1/completions", OpenAICompletionsAsync);
        app.MapPost("/v1/images/generations", OpenAIImagesAsync);
        app.MapPost("/v1/audio/speech", OpenAISpeechAsync);
        app.MapPost("/v1/rerank", OpenAIRerankAsync);
        app.MapPost("/v2/rerank", OpenAIRerankAsync);
        app.MapPost("/v1/audio/transcriptions", ctx => OpenAIFormAsync(ctx, PipelineGateway.Providers.OperationKind.Transcription));
        app.MapPost("/v1/audio/translations", ctx => OpenAIFormAsync(ctx, PipelineGateway.Providers.OperationKind.Translation));
        app.MapPost("/openai/deployments/{deployment}/audio/transcriptions", ctx => OpenAIFormAsync(ctx, PipelineGateway.Providers.OperationKind.Transcription));
        app.MapPost("/openai/deployments/{deployment}/audio/translations", ctx => OpenAIFormAsync(ctx, PipelineGateway.Providers.OperationKind.Translation));
        app.MapPost("/v1/images/edits", ctx => OpenAIFormAsync(ctx, PipelineGateway.Providers.OperationKind.ImageEdit));
        app.MapPost("/openai/deployments/{deployment}/images/edits", ctx => OpenAIFormAsync(ctx, PipelineGateway.Providers.OperationKind.ImageEdit));
        app.MapPost("/openai/deployments/{deployment}/audio/speech", OpenAISpeechAsync);
        app.MapPost("/openai/deployments/{deployment}/images/generations", OpenAIImagesAsync);
        app.MapPost("/openai/deployments/{deployment}/completions", OpenAICompletionsAsync);
        app.MapGet("/sim/stats", () => Results.Json(new { requests = Requests, aborted = Aborted, in_flight = InFlight }));

        // Any other path is answered as the real services answer it — an error body in their shape, not an empty 404 — so
        // a gateway pointed at a wrong path is tested against what it would read (any path: MapFallback's default
        // pattern leaves out paths whose last segment has a dot).
        app.MapFallback("{*path}", ctx => ctx.Request.Path.StartsWithSegments("/v1/messages", StringComparison.Ordinal)
            ? AnthropicError(ctx, 404, "not_found_error", "Not Found")
            : OpenAIError(ctx, 404, "invalid_request_error", null, $"Invalid URL ({ctx.Request.Method} {ctx.Request.Path})"));
    }

    private FaultPlan Plan(HttpContext ctx)
    {
        lock (_random)
        {
            return FaultPlan.Draw(_options, _random, ctx.Request.Headers["x-sim-fault"]);
        }
    }

    // ---------------------------------------------------------------- OpenAI

    /// <summary>Applies latency and the planned fault before any answer; false when the fault answered.</summary>
    private async Task<bool> PrepareAsync(HttpContext ctx, FaultPlan plan, ChatCompletionRequest request, bool anthropic)
    {
        if (plan.Hang)
        {
            await Task.Delay(Timeout.Infinite, ctx.RequestAborted).ConfigureAwait(false);
        }

        if (plan.LatencyMs > 0)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(plan.LatencyMs), ctx.RequestAborted).ConfigureAwait(false);
        }

        if (plan.ContextLength || SimulatedText.PromptTokens(request) > _options.ContextWindow)
        {
            if (anthropic)
            {
                await AnthropicError(ctx, 400, "invalid_request_error", $"prompt is too long: {SimulatedText.PromptTokens(request)} tokens > {_options.ContextWindow} maximum").ConfigureAwait(false);
            }
            else
            {
                await OpenAIError(ctx, 400, "invalid_request_error", "context_length_exceeded", $"This model's maximum context length is {_options.ContextWindow} tokens. However, your messages resulted in {SimulatedText.PromptTokens(request)} tokens.", "messages").ConfigureAwait(false);
            }

            return false;
        }

        if (plan.Status is { } status)
        {
            if (plan.RetryAfterSeconds is { } ra)
            {
                ctx.Response.Headers.RetryAfter = Math.Ceiling(ra).ToString(System.Globalization.CultureInfo.InvariantCulture);
                if (!anthropic)
                {
                    ctx.Response.Headers["retry-after-ms"] = (ra * 1000).ToString(System.Globalization.CultureInfo.InvariantCulture);
                }
            }

            if (anthropic)
            {
                var type = plan.Type ?? status switch { 429 => "rate_limit_error", 529 => "overloaded_error", 401 => "authentication_error", 403 => "permission_error", 404 => "not_found_error", 413 => "request_too_large", >= 500 => "api_error", _ => "invalid_request_error" };
                await AnthropicError(ctx, status, type, plan.Message ?? $"Simulated {status}.").ConfigureAwait(false);
            }
            else
            {
                var type = plan.Type ?? status switch { 429 => "rate_limit_exceeded", >= 500 => "server_error", _ => "invalid_request_error" };
                await OpenAIError(ctx, status, type, plan.Code ?? (status == 429 ? "rate_limit_exceeded" : null), plan.Message ?? $"Simulated {status}.", plan.Param).ConfigureAwait(false);
            }

            return false;
        }

        return true;
    }

    /// <summary>Breaks or truncates a stream at the planned event; true when the stream must end now.</summary>
    private async Task<bool> FaultMidStreamAsync(HttpContext ctx, FaultPlan plan, int index)
    {
        if (plan.BreakAfter == index)
        {
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
            ctx.Abort(); // the connection is reset mid-stream
            return true;
        }

        if (plan.TruncateAfter == index)
        {
            return true; // ends cleanly but without the terminating event
        }

        if (index > 0 && _options.TokenDelayMs > 0)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(_options.TokenDelayMs), ctx.RequestAborted).ConfigureAwait(false);
        }

        return false;
    }

    private static void StartSse(HttpContext ctx)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        SetRateLimitHeaders(ctx);
    }

    private static void SetRateLimitHeaders(HttpContext ctx)
    {
        if (ctx.Request.Path.StartsWithSegments("/v1/messages", StringComparison.Ordinal))
        {
            var reset = DateTimeOffset.UtcNow.AddSeconds(1).ToString("yyyy-MM-ddTHH:mm:ssZ", System.Globalization.CultureInfo.InvariantCulture);
            ctx.Response.Headers["anthropic-ratelimit-requests-limit"] = "4000";
            ctx.Response.Headers["anthropic-ratelimit-requests-remaining"] = "3999";
            ctx.Response.Headers["anthropic-ratelimit-requests-reset"] = reset;
            ctx.Response.Headers["anthropic-ratelimit-tokens-limit"] = "400000";
            ctx.Response.Headers["anthropic-ratelimit-tokens-remaining"] = "399000";
            ctx.Response.Headers["anthropic-ratelimit-tokens-reset"] = reset;
            return;
        }

        ctx.Response.Headers["x-ratelimit-limit-requests"] = "10000";
        ctx.Response.Headers["x-ratelimit-remaining-requests"] = "9999";
        ctx.Response.Headers["x-ratelimit-reset-requests"] = "6ms";
        ctx.Response.Headers["x-ratelimit-limit-tokens"] = "2000000";
        ctx.Response.Headers["x-ratelimit-remaining-tokens"] = "1999000";
        ctx.Response.Headers["x-ratelimit-reset-tokens"] = "30ms";
    }

    private static async Task WriteSseAsync(HttpContext ctx, string? eventName, byte[] data)
    {
        var body = ctx.Response.Body;
        if (eventName is not null)
        {
            await body.WriteAsync(Encoding.UTF8.GetBytes($"event: {eventName}\n"), ctx.RequestAborted).ConfigureAwait(false);
        }

        await body.WriteAsync("data: "u8.ToArray(), ctx.RequestAborted).ConfigureAwait(false);
        await body.WriteAsync(data, ctx.RequestAborted).ConfigureAwait(false);
        await body.WriteAsync("\n\n"u8.ToArray(), ctx.RequestAborted).ConfigureAwait(false);
        await body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, int>))]
internal sealed partial class SimJson : System.Text.Json.Serialization.JsonSerializerContext;
