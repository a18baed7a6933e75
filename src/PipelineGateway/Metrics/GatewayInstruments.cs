using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace PipelineGateway.Metrics;

/// <summary>
/// System.Diagnostics.Metrics instruments, named after the OpenTelemetry GenAI semantic conventions where they
/// exist, gateway-specific (<c>pgw.*</c>) otherwise. Names, units and bucket bounds live here only. Export them
/// with OpenTelemetry (<c>AddMeter(GatewayTelemetry.MeterName)</c>) or read them with a <see cref="MeterListener"/>.
/// </summary>
internal sealed class GatewayInstruments : IDisposable
{
    public const string MeterName = GatewayTelemetry.MeterName;

    public const string OperationDuration = "gen_ai.client.operation.duration";
    public const string TokenUsage = "gen_ai.client.token.usage";
    public const string Requests = "pgw.requests";
    public const string CacheHits = "pgw.cache.hits";
    public const string CostUsd = "pgw.cost";
    public const string Attempts = "pgw.attempts";
    public const string QueueDepth = "pgw.queue.depth";
    public const string DeploymentHealth = "pgw.deployment.health";

    // Bucket bounds advised by the GenAI semantic conventions.
    private static readonly double[] DurationBuckets = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
    private static readonly long[] TokenBuckets = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864];

    private readonly Meter _meter;

    /// <param name="latestConventions">
    /// The latest GenAI conventions: the provider as <c>gen_ai.provider.name</c> (Azure's <c>azure.ai.openai</c>), as the
    /// trace spans have it. Off, the conventions these instruments were first built on (v1.36 and before):
    /// <c>gen_ai.system</c> (Azure's <c>az.ai.openai</c>) — what the conventions' transition plan asks an existing
    /// instrumentation to keep by default, with <c>OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental</c> for the
    /// latest (<see cref="LatestConventionsAsked"/>).
    /// </param>
    public GatewayInstruments(IMeterFactory? factory = null, bool latestConventions = false)
    {
        LatestConventions = latestConventions;
        ProviderAttribute = latestConventions ? "gen_ai.provider.name" : "gen_ai.system";
        _meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        Duration = _meter.CreateHistogram(OperationDuration, "s", "Duration of gateway chat operations, admission to answer.", advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets });
        Tokens = _meter.CreateHistogram(TokenUsage, "{token}", "Tokens used per answered request, by gen_ai.token.type.", advice: new InstrumentAdvice<long> { HistogramBucketBoundaries = TokenBuckets });
        Totals = new InstrumentTotals(ProviderAttribute);
        RequestCount = _meter.CreateObservableCounter(Requests, Totals.Requests, "{request}", "Requests ended, by outcome.");
        CacheHitCount = _meter.CreateObservableCounter(CacheHits, Totals.CacheHits, "{request}", "Requests answered from the response cache.");
        Cost = _meter.CreateObservableCounter(CostUsd, Totals.Cost, "USD", "Spend priced from usage, by provider and model.");
        AttemptCount = _meter.CreateObservableCounter(Attempts, Totals.Attempts, "{attempt}", "Upstream attempts, by provider, deployment and outcome.");
    }

    /// <summary>What the counting instruments report when a listener collects (see <see cref="InstrumentTotals"/> for why they are observed).</summary>
    internal InstrumentTotals Totals { get; }

    /// <summary>Whether a listener reads any of the counting instruments (nothing is kept for them otherwise).</summary>
    internal bool CountersEnabled => RequestCount.Enabled || CacheHitCount.Enabled || Cost.Enabled;

    internal Histogram<double> Duration { get; }

    /// <summary>Whether the instruments follow the latest GenAI conventions (see the constructor).</summary>
    internal bool LatestConventions { get; }

    /// <summary>The attribute naming the provider: <c>gen_ai.provider.name</c>, or <c>gen_ai.system</c> by default.</summary>
    internal string ProviderAttribute { get; }

    /// <summary>Whether <c>OTEL_SEMCONV_STABILITY_OPT_IN</c> (a comma-separated list) holds <c>gen_ai_latest_experimental</c>.</summary>
    internal static bool LatestConventionsAsked(string? optIn) =>
        optIn?.Split(',', StringSplitOptions.TrimEntries).Contains("gen_ai_latest_experimental", StringComparer.Ordinal) == true;

    /// <summary>A provider's name (<c>gen_ai.provider.name</c>'s value) as these instruments label it: the older <c>gen_ai.system</c> value unless the latest conventions are followed.</summary>
    internal string ProviderValue(string providerName) => !LatestConventions && providerName == "azure.ai.openai" ? "az.ai.openai" : providerName;

    internal Histogram<long> Tokens { get; }

    internal ObservableCounter<long> RequestCount { get; }

    internal ObservableCounter<long> CacheHitCount { get; }

    internal ObservableCounter<double> Cost { get; }

    /// <summary>
    /// Every attempt sent upstream, under its own provider: a request that failed over several providers is one
    /// <c>pgw.requests</c> failure (the gateway's), and this is where each provider's part in it shows.
    /// </summary>
    internal ObservableCounter<long> AttemptCount { get; }

    /// <summary>An attempt's outcome as the <c>pgw.outcome</c> label of <see cref="AttemptCount"/> (bounded: one value per outcome).</summary>
    internal static string OutcomeLabel(AttemptOutcome outcome) => outcome switch
    {
        AttemptOutcome.Success => "success",
        AttemptOutcome.RetryableError => "retryable_error",
        AttemptOutcome.RateLimited => "rate_limited",
        AttemptOutcome.Timeout => "timeout",
        AttemptOutcome.NonRetryableError => "rejected",
        AttemptOutcome.ContextLengthExceeded => "context_length_exceeded",
        AttemptOutcome.Cancelled => "cancelled",
        AttemptOutcome.DeploymentUnavailable => "deployment_unavailable",
        _ => "other",
    };

    /// <summary>Registers the observable gauges (queue depth per stage, circuit state per deployment).</summary>
    internal void Observe(Func<IEnumerable<Measurement<int>>> depths, Func<IEnumerable<Measurement<int>>> health)
    {
        _meter.CreateObservableGauge(QueueDepth, depths, "{request}", "Requests waiting in each stage's channel.");
        _meter.CreateObservableGauge(DeploymentHealth, health, "{state}", "Circuit state per deployment: 0 closed, 1 half-open, 2 open.");
    }

    /// <summary>The standard attributes of one finished operation.</summary>
    internal TagList Tags(string operation, string system, string requestModel, string? responseModel, string? errorType)
    {
        var tags = new TagList
        {
            { "gen_ai.operation.name", operation },
            { ProviderAttribute, system },
            { "gen_ai.request.model", requestModel },
        };
        if (responseModel is not null)
        {
            tags.Add("gen_ai.response.model", responseModel);
        }

        if (errorType is not null)
        {
            tags.Add("error.type", errorType);
        }

        return tags;
    }

    public void Dispose() => _meter.Dispose();
}

/// <summary>Names to give OpenTelemetry: <c>.WithMetrics(m => m.AddMeter(GatewayTelemetry.MeterName))</c>.</summary>
public static class GatewayTelemetry
{
    /// <summary>The meter every gateway instrument is on (docs/metrics.md lists them).</summary>
    public const string MeterName = "PipelineGateway";

    /// <summary>
    /// The ActivitySource of the gateway's trace spans: one per request, a child per upstream attempt (GenAI semantic
    /// conventions; docs/observability.md). <c>.WithTracing(t => t.AddSource(GatewayTelemetry.ActivitySourceName))</c>.
    /// </summary>
    public const string ActivitySourceName = "PipelineGateway";
}
