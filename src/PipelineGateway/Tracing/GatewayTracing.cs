using System.Diagnostics;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Tracing;

/// <summary>
/// Trace spans after the OpenTelemetry GenAI semantic conventions: a span per request (<c>chat {model}</c>, from
/// submission to its answer) and a client span per upstream attempt, its child, current while the provider is called so
/// the HTTP client passes its W3C <c>traceparent</c> to the upstream. Gateway attributes: <c>pgw.request_id</c>,
/// <c>pgw.cache_hit</c>, <c>pgw.coalesced</c>, <c>pgw.attempts</c>, <c>pgw.attempt</c>, <c>pgw.fallback</c>,
/// <c>pgw.hedge</c>. With nobody listening to the source, <see cref="ActivitySource.StartActivity(string, ActivityKind)"/>
/// returns null and each call costs a branch.
/// </summary>
internal sealed class GatewayTracing(IOptions<GatewayOptions> options) : ICompletionListener
{
    internal static readonly ActivitySource Source = new(GatewayTelemetry.ActivitySourceName, typeof(GatewayTracing).Assembly.GetName().Version?.ToString());

    private readonly IReadOnlyDictionary<string, string> _systems = Systems(options.Value);

    /// <summary>The GenAI provider name (<c>gen_ai.provider.name</c>) of each configured provider.</summary>
    internal static Dictionary<string, string> Systems(GatewayOptions options) => options.Providers.ToDictionary(
        p => p.Name,
        p => p.Type.ToUpperInvariant() switch { "OPENAI" or "OPENAICOMPATIBLE" => "openai", "AZUREOPENAI" => "azure.ai.openai", "ANTHROPIC" => "anthropic", _ => p.Name },
        StringComparer.Ordinal);

    /// <summary>Starts the request's span under the caller's current activity (the HTTP request's, or the caller's own).</summary>
    public static void StartRequest(WorkItem item)
    {
        if (!Source.HasListeners())
        {
            return;
        }

        // The span outlives this call (it ends when the request does, on another thread): it must not stay current here.
        var previous = Activity.Current;
        var operation = Providers.Operations.OperationName(item.Request);
        var span = Source.StartActivity(operation + " " + item.Request.Model, ActivityKind.Internal);
        Activity.Current = previous;
        if (span is null)
        {
            return;
        }

        span.SetTag("gen_ai.operation.name", operation);
        span.SetTag("gen_ai.request.model", item.Request.Model);
        if (item.Request.Temperature is { } t)
        {
            span.SetTag("gen_ai.request.temperature", t);
        }

        if (item.Request.RequestedCompletionTokens is { } max)
        {
            span.SetTag("gen_ai.request.max_tokens", max);
        }

        span.SetTag("pgw.request_id", item.RequestId);
        span.SetTag("pgw.stream", item.IsStream);
        item.Span = span;
    }

    /// <summary>
    /// Starts an attempt's client span (a child of the request's) and makes it current for the provider call that
    /// follows, on this async flow only (the caller is an async method: its caller never sees it current).
    /// </summary>
    public Activity? StartAttempt(WorkItem item, string provider, Deployment deployment, bool hedge)
    {
        if (item.Span is not { } parent)
        {
            return null;
        }

        var operation = Providers.Operations.OperationName(item.Request);
        var span = Source.StartActivity(operation + " " + deployment.Model, ActivityKind.Client, parent.Context);
        if (span is null)
        {
            return null;
        }

        span.SetTag("gen_ai.operation.name", operation);
        span.SetTag("gen_ai.provider.name", _systems.GetValueOrDefault(provider, provider));
        span.SetTag("gen_ai.request.model", deployment.Model);
        span.SetTag("pgw.provider", provider);
        span.SetTag("pgw.attempt", item.AttemptCount + 1);
        span.SetTag("pgw.fallback", item.AttemptCount > 0 && !item.HasTried(deployment));
        span.SetTag("pgw.hedge", hedge);
        return span;
    }

    /// <summary>Ends an attempt's span with what came back.</summary>
    public static void EndAttempt(Activity? span, ChatCompletionResponse? response, Exception? error)
    {
        if (span is null)
        {
            return;
        }

        if (response is not null)
        {
            span.SetTag("gen_ai.response.model", response.Model);
            span.SetTag("gen_ai.response.id", response.Id);
            if (response.Usage is { } u)
            {
                span.SetTag("gen_ai.usage.input_tokens", u.PromptTokens);
                span.SetTag("gen_ai.usage.output_tokens", u.CompletionTokens);
            }
        }

        if (error is not null)
        {
            span.SetTag("error.type", ErrorType(error));
            span.SetStatus(ActivityStatusCode.Error, Providers.SecretRedactor.RedactAndTrim(error.Message, 200));
        }

        span.Dispose();
    }

    /// <summary>The request ended: its span gets the answer's model, usage and gateway attributes, or the error, and ends.</summary>
    public void OnCompleted(in Completion completion)
    {
        var item = completion.Item;
        if (item.Span is not { } span)
        {
            return;
        }

        item.Span = null;
        if (completion.Response?.Gateway is { } info)
        {
            span.SetTag("gen_ai.provider.name", _systems.GetValueOrDefault(info.Provider, info.Provider));
            span.SetTag("gen_ai.response.model", info.ProviderModel);
            span.SetTag("pgw.provider", info.Provider);
            span.SetTag("pgw.cache_hit", info.Cached);
            span.SetTag("pgw.coalesced", info.Coalesced);
            span.SetTag("pgw.cost_usd", (double)info.Cost);
        }
        else if (completion.Consumed is { } consumed)
        {
            // A stream cut after its content went out: billed at the deployment that streamed it.
            span.SetTag("gen_ai.provider.name", _systems.GetValueOrDefault(consumed.Deployment.ProviderName, consumed.Deployment.ProviderName));
            span.SetTag("gen_ai.response.model", consumed.Deployment.Model);
            span.SetTag("pgw.provider", consumed.Deployment.ProviderName);
            span.SetTag("pgw.cost_usd", (double)consumed.Cost);
        }

        if ((completion.Response?.Usage ?? completion.Consumed?.Usage ?? item.StreamUsage) is { } usage)
        {
            span.SetTag("gen_ai.usage.input_tokens", usage.PromptTokens);
            span.SetTag("gen_ai.usage.output_tokens", usage.CompletionTokens);
        }

        span.SetTag("pgw.attempts", item.AttemptCount);
        if (completion.Error is { } error)
        {
            span.SetTag("error.type", ErrorType(error));
            span.SetStatus(ActivityStatusCode.Error, Providers.SecretRedactor.RedactAndTrim(error.Message, 200));
        }

        span.Dispose();
    }

    /// <summary><c>error.type</c>: the status the caller got (or the upstream answered), else the exception's type.</summary>
    private static string ErrorType(Exception error) => error switch
    {
        Providers.ProviderException { StatusCode: { } status } => status.ToString(System.Globalization.CultureInfo.InvariantCulture),
        GatewayException => OpenAIErrorMapping.Map(error).Error.Code ?? error.GetType().FullName!,
        OperationCanceledException => "cancelled",
        _ => error.GetType().FullName!,
    };
}
