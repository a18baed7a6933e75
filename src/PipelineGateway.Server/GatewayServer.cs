using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

using PipelineGateway.Redis;
using PipelineGateway.RequestLog;

namespace PipelineGateway.Server;

/// <summary>
/// The HTTP front door: an OpenAI-compatible server in front of the same pipeline the library uses.
/// Bound to loopback it may run without gateway keys (with a warning); bound to anything else without keys it
/// refuses to start.
/// </summary>
public static partial class GatewayServer
{
    /// <summary>Builds the server (not started) from a configuration holding the <c>Gateway</c> section.</summary>
    public static WebApplication Build(IConfiguration configuration, string urls, Action<ILoggingBuilder>? logging = null, Action<IServiceCollection>? services = null)
    {
        // The host's own appsettings.json is not watched: its watcher (inotify) failing to start — the per-user instances
        // used up, as on a machine running many .NET processes — ended the process before it served anything. The
        // gateway's own configuration is the caller's, watched or not (pgw serve: its file, GatewayConfiguration).
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = ["--hostBuilder:reloadConfigOnChange=false"] });
        builder.Configuration.AddConfiguration(configuration);
        builder.Logging.ClearProviders();
        if (logging is null)
        {
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Information);

            // A start-up failure (the port is taken) is reported once, in one line, by whoever starts the server; the
            // host's own error log of it is a 30-line stack trace.
            builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.Critical);
        }
        else
        {
            logging(builder.Logging);
        }

        builder.WebHost.UseUrls(urls);
        var serverSection = builder.Configuration.GetSection(ServerOptions.SectionName);
        var server = serverSection.Get<ServerOptions>() ?? new ServerOptions();
        var unreadable = new List<string>();
        ServerOptions.BindKeys(serverSection.GetSection("Keys"), unreadable);
        if (server.Validate().Concat(unreadable).Concat(Hosting.UnknownSettings.InSection(serverSection, typeof(ServerOptions))).ToList() is { Count: > 0 } problems)
        {
            throw new OptionsValidationException(ServerOptions.SectionName, typeof(ServerOptions), problems);
        }

        // Off unless asked for (Gateway:Server:InlineScheduling): a throughput-for-streaming trade, measured (ServerOptions).
        builder.WebHost.UseSockets(o => o.UnsafePreferInlineScheduling = server.InlineScheduling);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = server.MaxRequestBodyBytes;

            // Any byte in a header value is read (as Latin-1) instead of Kestrel answering an empty 400 before the
            // gateway sees the request: a key with odd bytes in it is then just a wrong key, answered 401 in the route's shape.
            k.RequestHeaderEncodingSelector = static _ => System.Text.Encoding.Latin1;
        });
        builder.Services.AddSingleton(server);
        builder.Services.AddSingleton<GatewayKeys>();
        builder.Services.AddSingleton<AuthThrottle>();
        builder.Services.AddSingleton<LargeBodies>();
        builder.Services.AddSingleton<GatewayResponseHeaders>();
        builder.Services.AddSingleton<ChatCompletionsEndpoint>();
        builder.Services.AddSingleton<OperationsEndpoint>();
        builder.Services.AddSingleton<CompletionsEndpoint>();
        builder.Services.AddSingleton<TranscriptionsEndpoint>();
        builder.Services.AddSingleton<AnthropicMessagesEndpoint>();
        builder.Services.AddSingleton<Responses.ResponsesEndpoint>();
        builder.Services.AddSingleton<Responses.ResponsesStore>();
        builder.Services.AddSingleton<Responses.BackgroundResponses>();
        builder.Services.AddSingleton<Responses.Conversations>();
        builder.Services.AddSingleton<Batches.BatchStore>();
        builder.Services.AddSingleton<Batches.BatchJobs>();
        builder.Services.AddSingleton<Batches.BatchApi>();
        builder.Services.AddSingleton<Batches.MessageBatchesApi>();
        builder.Services.AddSingleton<Batches.BatchForwarder>();
        services?.Invoke(builder.Services);
        builder.Services.AddPipelineGateway(builder.Configuration);
        builder.Services.AddPipelineGatewayRedis(builder.Configuration);
        builder.Services.AddHostedService<DrainOnStopping>();
        builder.Services.AddHostedService(static sp => sp.GetRequiredService<Batches.BatchJobs>()); // after the pipeline: stopped before it drains
        builder.Services.AddHostedService(static sp => sp.GetRequiredService<Responses.BackgroundResponses>()); // the same
        if (server.GcGen1GuardMiB > 0)
        {
            builder.Services.AddGatewayGcGen1Guard(server.GcGen1GuardMiB);
        }

        // The gateway's instruments (GenAI conventions + pgw.*) exported for Prometheus at GET /metrics.
        var telemetry = builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddMeter(GatewayInstruments.MeterName).AddPrometheusExporter());

        // Traces over OTLP, off unless an endpoint is configured (Gateway:Telemetry:OtlpEndpoint, or the standard
        // OTEL_EXPORTER_OTLP_ENDPOINT): a span per request and per upstream attempt (docs/observability.md).
        var otlp = builder.Configuration["Gateway:Telemetry:OtlpEndpoint"] ?? Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_ENDPOINT");
        if (!string.IsNullOrWhiteSpace(otlp))
        {
            if (!Uri.TryCreate(otlp, UriKind.Absolute, out var endpoint) || (endpoint.Scheme != Uri.UriSchemeHttp && endpoint.Scheme != Uri.UriSchemeHttps))
            {
                throw new OptionsValidationException("Gateway:Telemetry", typeof(ServerOptions), (string[])[$"Gateway:Telemetry:OtlpEndpoint must be an http(s) URL such as http://127.0.0.1:4317; got '{otlp}'."]);
            }

            var protocol = string.Equals(builder.Configuration["Gateway:Telemetry:OtlpProtocol"], "http", StringComparison.OrdinalIgnoreCase)
                ? OpenTelemetry.Exporter.OtlpExportProtocol.HttpProtobuf
                : OpenTelemetry.Exporter.OtlpExportProtocol.Grpc;
            if (protocol == OpenTelemetry.Exporter.OtlpExportProtocol.HttpProtobuf && endpoint.AbsolutePath == "/")
            {
                // Set in code, the HTTP exporter posts to the endpoint as given: add the traces path the environment
                // variable would have added.
                endpoint = new Uri(endpoint, "v1/traces");
            }

            telemetry.WithTracing(t => t.AddSource(GatewayTelemetry.ActivitySourceName).AddOtlpExporter(o =>
            {
                o.Endpoint = endpoint;
                o.Protocol = protocol;
            }));
        }
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(30));
        builder.Services.AddSingleton<IPostConfigureOptions<LoggerFilterOptions>, HostingRequestLogging>();
        RedactingLoggerProvider.WrapAll(builder.Services);

        var app = builder.Build();
        Map(app);
        WatchKeys(app, configuration);
        return app;
    }

    /// <summary>
    /// The keys follow the configuration: when it is reloaded (<c>pgw serve</c>'s file changed, or SIGHUP) the keys it
    /// now has replace the running ones (<see cref="GatewayKeys.TryReload"/>) — nothing else is read again; every other
    /// setting is read at start. A reload that cannot be read as keys is logged and changes nothing.
    /// </summary>
    private static void WatchKeys(WebApplication app, IConfiguration configuration)
    {
        var keys = app.Services.GetRequiredService<GatewayKeys>();
        var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger<GatewayKeys>();
        var watch = Microsoft.Extensions.Primitives.ChangeToken.OnChange(configuration.GetReloadToken, () =>
        {
            var unreadable = new List<string>();
            var reloaded = ServerOptions.BindKeys(configuration.GetSection(ServerOptions.SectionName + ":Keys"), unreadable);
            if (unreadable.Count > 0)
            {
                LogKeysUnreadable(logger, string.Join(" ", unreadable));
                return;
            }

            keys.TryReload(reloaded);
        });
        app.Lifetime.ApplicationStopped.Register(watch.Dispose);
    }

    /// <summary>Starts the server and checks it is safe: keys are required off loopback. Returns the bound address.</summary>
    public static async Task<Uri> StartAsync(WebApplication app, CancellationToken cancellationToken = default)
    {
        await app.StartAsync(cancellationToken);
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        var keys = app.Services.GetRequiredService<GatewayKeys>();
        var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("PipelineGateway.Server");
        var exposed = addresses.Where(a => !IsLoopback(a)).ToList();
        if (!keys.Required)
        {
            if (exposed.Count > 0)
            {
                await app.StopAsync(CancellationToken.None);
                throw new InvalidOperationException($"Refusing to serve on {string.Join(", ", exposed)} without gateway keys: configure Gateway:Server:Keys (SHA-256 hashes), or bind to 127.0.0.1.");
            }

            LogNoKeys(logger);
        }

        var first = addresses.First();
        return new Uri(first.EndsWith('/') ? first : first + "/");
    }

    private static bool IsLoopback(string address)
    {
        var uri = new Uri(address.Replace("*", "0.0.0.0", StringComparison.Ordinal).Replace("+", "0.0.0.0", StringComparison.Ordinal));
        return uri.IsLoopback || (IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));
    }

    /// <summary>A path nothing serves is a 404; a served path asked with another method, a 405 naming the methods (<c>Allow</c>).</summary>
    private static Task Unrouted(HttpContext ctx, RouteMethods routeMethods)
    {
        // The caller's path and method are echoed capped and redacted (a key pasted into a URL is not written back).
        var path = Providers.SecretRedactor.RedactAndTrim(ctx.Request.Path.Value, 200);
        var method = Providers.SecretRedactor.RedactAndTrim(ctx.Request.Method, 20);
        var allowed = routeMethods.At(ctx.Request.Path);
        if (allowed.Count == 0)
        {
            return RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "unknown_route", $"No route for {method} {path}.");
        }

        var methods = string.Join(", ", allowed);
        ctx.Response.Headers.Allow = methods;
        return RouteErrors.WriteAsync(ctx, 405, "invalid_request_error", "method_not_allowed", $"{method} is not served at {path}; use {methods}.");
    }

    private static string RouteId(HttpContext ctx, string name = "id") => ctx.Request.RouteValues[name] as string ?? string.Empty;

    private static void Map(WebApplication app)
    {
        // One pipeline in front of every route: keys, the admin surface, failed-key throttling, content type, size, headers.
        app.UseMiddleware<TraceContext>();
        app.UseMiddleware<FrontDoor>();
        // A request no route takes — no endpoint, or routing's own 405 (an endpoint that is not a route) — is answered
        // here, in the OpenAI error shape. Not MapFallback: its pattern ("{*path:nonfile}") is a candidate with a route
        // value in every state of the routing DFA, so every request allocated its value array (~90 B, 1.6% of a chat
        // request's sampled bytes; docs/benchmarks.md), and a path with a dot in its last segment (/v1/foo.json) was a
        // bare 404 with no body.
        var routeMethods = new RouteMethods(app.Services.GetRequiredService<Microsoft.AspNetCore.Routing.EndpointDataSource>());
        app.Use(next => ctx => ctx.GetEndpoint() is Microsoft.AspNetCore.Routing.RouteEndpoint ? next(ctx) : Unrouted(ctx, routeMethods));
        var chat = app.Services.GetRequiredService<ChatCompletionsEndpoint>();
        app.MapPost("/v1/chat/completions", chat.HandleAsync);
        app.MapPost("/v1/messages", app.Services.GetRequiredService<AnthropicMessagesEndpoint>().HandleAsync);
        var operations = app.Services.GetRequiredService<OperationsEndpoint>();
        app.MapPost("/v1/embeddings", operations.EmbeddingsAsync);
        app.MapPost("/v1/moderations", operations.ModerationsAsync);
        app.MapPost("/v1/images/generations", operations.ImagesAsync);
        app.MapPost("/v1/audio/speech", operations.SpeechAsync);
        app.MapPost("/v1/rerank", operations.RerankAsync);
        app.MapPost("/v2/rerank", operations.RerankAsync); // Cohere's v2 SDKs' path
        var transcriptions = app.Services.GetRequiredService<TranscriptionsEndpoint>();
        app.MapPost("/v1/audio/transcriptions", transcriptions.TranscriptionsAsync);
        app.MapPost("/v1/audio/translations", transcriptions.TranslationsAsync);
        app.MapPost("/openai/deployments/{deployment}/audio/transcriptions", transcriptions.AzureTranscriptionsAsync);
        app.MapPost("/openai/deployments/{deployment}/audio/translations", transcriptions.AzureTranslationsAsync);
        app.MapPost("/v1/images/edits", transcriptions.ImageEditsAsync);
        app.MapPost("/openai/deployments/{deployment}/images/edits", transcriptions.AzureImageEditsAsync);
        app.MapPost("/openai/deployments/{deployment}/audio/speech", operations.AzureSpeechAsync);
        app.MapPost("/openai/deployments/{deployment}/images/generations", operations.AzureImagesAsync);
        var completions = app.Services.GetRequiredService<CompletionsEndpoint>();
        app.MapPost("/v1/completions", completions.HandleAsync);
        app.MapPost("/openai/deployments/{deployment}/completions", completions.HandleAzureAsync);
        // Azure OpenAI's routes, what the Azure OpenAI SDKs call (the deployment in the path is the model; api-version ignored).
        app.MapPost("/openai/deployments/{deployment}/chat/completions", chat.HandleAzureAsync);
        app.MapPost("/openai/deployments/{deployment}/embeddings", operations.AzureEmbeddingsAsync);
        var responses = app.Services.GetRequiredService<Responses.ResponsesEndpoint>();
        app.MapPost("/v1/responses", responses.HandleAsync);
        app.MapPost("/v1/responses/input_tokens", responses.InputTokensAsync);
        // Request delegates reading the id from the route values: a handler with a bound parameter compiles an expression tree.
        app.MapGet("/v1/responses/{id}", (HttpContext ctx) => responses.GetAsync(ctx, RouteId(ctx)));
        app.MapGet("/v1/responses/{id}/input_items", (HttpContext ctx) => responses.InputItemsAsync(ctx, RouteId(ctx)));
        app.MapDelete("/v1/responses/{id}", (HttpContext ctx) => responses.DeleteAsync(ctx, RouteId(ctx)));
        app.MapPost("/v1/responses/{id}/cancel", (HttpContext ctx) => responses.CancelAsync(ctx, RouteId(ctx)));
        var conversations = app.Services.GetRequiredService<Responses.Conversations>();
        app.MapPost("/v1/conversations", conversations.CreateAsync);
        app.MapGet("/v1/conversations/{id}", (HttpContext ctx) => conversations.GetAsync(ctx, RouteId(ctx)));
        app.MapPost("/v1/conversations/{id}", (HttpContext ctx) => conversations.UpdateAsync(ctx, RouteId(ctx)));
        app.MapDelete("/v1/conversations/{id}", (HttpContext ctx) => conversations.DeleteAsync(ctx, RouteId(ctx)));
        app.MapPost("/v1/conversations/{id}/items", (HttpContext ctx) => conversations.AddItemsAsync(ctx, RouteId(ctx)));
        app.MapGet("/v1/conversations/{id}/items", (HttpContext ctx) => conversations.ListItemsAsync(ctx, RouteId(ctx)));
        app.MapGet("/v1/conversations/{id}/items/{item}", (HttpContext ctx) => conversations.GetItemAsync(ctx, RouteId(ctx), RouteId(ctx, "item")));
        app.MapDelete("/v1/conversations/{id}/items/{item}", (HttpContext ctx) => conversations.DeleteItemAsync(ctx, RouteId(ctx), RouteId(ctx, "item")));
        var batches = app.Services.GetRequiredService<Batches.BatchApi>();
        var batchInstance = app.Services.GetRequiredService<Batches.BatchForwarder>();

        // In a fleet every Batch API request is the holding instance's (Gateway:Server:BatchInstanceUrl): passed to it here.
        RequestDelegate Held(RequestDelegate serve) => ctx => batchInstance.Passes(ctx) ? batchInstance.PassAsync(ctx) : serve(ctx);
        foreach (var root in (string[])["/v1", "/openai"]) // OpenAI's, and Azure OpenAI's (its SDK's file and batch clients)
        {
            app.MapPost($"{root}/files", Held(batches.UploadAsync));
            app.MapGet($"{root}/files", Held(batches.ListFilesAsync));
            app.MapGet($"{root}/files/{{id}}", Held((HttpContext ctx) => batches.GetFileAsync(ctx, RouteId(ctx))));
            app.MapGet($"{root}/files/{{id}}/content", Held((HttpContext ctx) => batches.ContentAsync(ctx, RouteId(ctx))));
            app.MapDelete($"{root}/files/{{id}}", Held((HttpContext ctx) => batches.DeleteFileAsync(ctx, RouteId(ctx))));
            app.MapPost($"{root}/batches", Held(batches.CreateAsync));
            app.MapGet($"{root}/batches", Held(batches.ListAsync));
            app.MapGet($"{root}/batches/{{id}}", Held((HttpContext ctx) => batches.GetAsync(ctx, RouteId(ctx))));
            app.MapPost($"{root}/batches/{{id}}/cancel", Held((HttpContext ctx) => batches.CancelAsync(ctx, RouteId(ctx))));
        }
        app.MapPost("/v1/messages/count_tokens", app.Services.GetRequiredService<AnthropicMessagesEndpoint>().HandleCountAsync);
        var messageBatches = app.Services.GetRequiredService<Batches.MessageBatchesApi>(); // Anthropic's, on the Batch API's machinery
        app.MapPost("/v1/messages/batches", Held(messageBatches.CreateAsync));
        app.MapGet("/v1/messages/batches", Held(messageBatches.ListAsync));
        app.MapGet("/v1/messages/batches/{id}", Held((HttpContext ctx) => messageBatches.GetAsync(ctx, RouteId(ctx))));
        app.MapPost("/v1/messages/batches/{id}/cancel", Held((HttpContext ctx) => messageBatches.CancelAsync(ctx, RouteId(ctx))));
        app.MapGet("/v1/messages/batches/{id}/results", Held((HttpContext ctx) => messageBatches.ResultsAsync(ctx, RouteId(ctx))));
        app.MapDelete("/v1/messages/batches/{id}", Held((HttpContext ctx) => messageBatches.DeleteAsync(ctx, RouteId(ctx))));
        var catalog = app.Services.GetRequiredService<ModelCatalog>();
        var gatewayKeys = app.Services.GetRequiredService<GatewayKeys>();
        var upstreamModels = app.Services.GetRequiredService<UpstreamModelList>();
        app.MapGet("/v1/models", (HttpContext ctx) => ModelsEndpoint.ListAsync(ctx, catalog, gatewayKeys, upstreamModels));
        app.MapGet("/v1/models/{**id}", (HttpContext ctx) => ModelsEndpoint.RetrieveAsync(ctx, catalog, gatewayKeys));
        app.MapGet("/v1/gateway/metrics", async (HttpContext ctx) =>
        {
            ctx.Response.ContentType = "application/json";
            await JsonSerializer.SerializeAsync(ctx.Response.Body, app.Services.GetRequiredService<IGatewayMetrics>().GetSnapshot(), GatewayJsonContext.Default.GatewayMetricsSnapshot);
        });
        var requestLog = app.Services.GetRequiredService<RequestLogWriter>();
        var time = app.Services.GetRequiredService<TimeProvider>();
        app.MapGet("/v1/gateway/logs", (HttpContext ctx) => RequestLogEndpoints.LogsAsync(ctx, requestLog, time));
        app.MapGet("/v1/gateway/spend", (HttpContext ctx) => RequestLogEndpoints.SpendAsync(ctx, requestLog, time));
        var budgetTracker = app.Services.GetRequiredService<PipelineGateway.Cost.BudgetTracker>();
        app.MapGet("/v1/gateway/budgets", (HttpContext ctx) => BudgetsEndpoint.GetAsync(ctx, budgetTracker));
        app.MapGet("/dashboard", DashboardEndpoints.PageAsync);
        app.MapGet("/dashboard/events", (HttpContext ctx) => DashboardEndpoints.EventsAsync(ctx,
            app.Services.GetRequiredService<IGatewayMetrics>(), app.Services.GetRequiredService<PipelineGateway.Metrics.GatewayMetrics>(),
            app.Services.GetRequiredService<PipelineGateway.Cost.BudgetTracker>(), time));
        app.MapPrometheusScrapingEndpoint("/metrics");
        // Every route is a RequestDelegate (HttpContext in, Task out): a lambda of any other shape goes through
        // RequestDelegateFactory, which builds and compiles an expression tree per route at startup — loading
        // System.Linq.Expressions and its compiled code for the process's lifetime (measured: ~2.3 MiB of mapped DLL and
        // more JIT-compiled code resident, for two probes; docs/benchmarks.md).
        app.MapGet("/healthz", ctx => Results.Text("ok").ExecuteAsync(ctx));
        app.MapGet("/readyz", ctx => (app.Services.GetRequiredService<GatewayPipeline>().IsAccepting
            ? Results.Text("ready")
            : Results.Text("not ready: the pipeline is starting or draining", statusCode: 503)).ExecuteAsync(ctx));
    }

    [LoggerMessage(EventId = 152, Level = LogLevel.Warning, Message = "Gateway keys not reloaded, the running keys kept: the configuration's keys could not be read ({Reason}).")]
    private static partial void LogKeysUnreadable(ILogger logger, string reason);

    [LoggerMessage(EventId = 100, Level = LogLevel.Warning, Message = "No gateway keys are configured: serving on loopback only, without authentication.")]
    private static partial void LogNoKeys(ILogger logger);
}
