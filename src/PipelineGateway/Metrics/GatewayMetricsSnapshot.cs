namespace PipelineGateway;

/// <summary>A point-in-time view of the gateway's counters (JSON field names in snake_case).</summary>
public sealed class GatewayMetricsSnapshot
{
    /// <summary>Requests that ended (answered, failed, rejected or cancelled).</summary>
    public long TotalRequests { get; init; }

    public long SuccessfulRequests { get; init; }

    /// <summary>Requests answered from the cache.</summary>
    public long CachedRequests { get; init; }

    /// <summary>Requests that ended without an answer (any typed failure, cancellation included).</summary>
    public long FailedRequests { get; init; }

    public long CancelledRequests { get; init; }

    /// <summary>Requests refused by a gateway rate limit.</summary>
    public long RateLimitedRequests { get; init; }

    /// <summary>Requests that waited for a rate-limit permit (and were then admitted or refused).</summary>
    public long RateLimitWaits { get; init; }

    /// <summary>Requests refused at once because admission's waiting room (or the tenant's share of it) was full (load shedding).</summary>
    public long ShedRequests { get; init; }

    /// <summary>Requests refused at once because every deployment's expected queue wait was longer than they could wait (503 provider_overloaded).</summary>
    public long OverloadedRequests { get; init; }

    /// <summary>Times a waiting caller's request was parked for room in a full provider queue (it gave its in-flight slot back meanwhile).</summary>
    public long ParkedRequests { get; init; }

    public long DeadlineExceededRequests { get; init; }

    /// <summary>Requests that looked the cache up (hits and misses).</summary>
    public long CacheLookups { get; init; }

    public long CacheMisses { get; init; }

    /// <summary>Requests that joined an identical request in flight instead of calling upstream.</summary>
    public long CoalescedRequests { get; init; }

    public long CacheEntries { get; init; }

    /// <summary>Approximate bytes the cache holds.</summary>
    public long CacheBytes { get; init; }

    /// <summary>Entries removed to make room (least recently used first).</summary>
    public long CacheEvictions { get; init; }

    /// <summary>What cache hits and coalesced requests would have cost upstream: the cost of the calls their answers came from.</summary>
    /// <summary>The request log's writer: rows written, dropped (queue full), lost (store failing), queued.</summary>
    public RequestLog.RequestLogStats RequestLog { get; init; } = new();

    public decimal CostSaved { get; init; }

    /// <summary>Requests answered from the cache over all requests that ended (<see cref="CachedRequests"/> / <see cref="TotalRequests"/>).</summary>
    public double CacheHitRate { get; init; }

    /// <summary>Cache hits over cache lookups (requests that could use the cache and looked it up).</summary>
    public double CacheLookupHitRate { get; init; }

    /// <summary>Mean latency of requests that produced an answer (cache hits included).</summary>
    public double AvgLatencyMs { get; init; }

    public double P50LatencyMs { get; init; }

    public double P95LatencyMs { get; init; }

    public double P99LatencyMs { get; init; }

    /// <summary>Time to first token of streamed requests, admission to first chunk.</summary>
    public double P50TimeToFirstTokenMs { get; init; }

    public double P95TimeToFirstTokenMs { get; init; }

    public double P99TimeToFirstTokenMs { get; init; }

    /// <summary>Requests refused because a budget would be exceeded.</summary>
    public long BudgetExceededRequests { get; init; }

    /// <summary>Attempts beyond the first.</summary>
    public long Retries { get; init; }

    /// <summary>Retries that went to a different deployment.</summary>
    public long Fallbacks { get; init; }

    /// <summary>Moves to another model group along a fallback chain (or to a larger-context group).</summary>
    public long GroupFallbacks { get; init; }

    /// <summary>Hedged second attempts sent.</summary>
    public long Hedges { get; init; }

    /// <summary>What requests were charged: the sum over providers, over models, over keys, and of the costs reported to callers.</summary>
    public decimal TotalCost { get; init; }

    /// <summary>Prompt tokens used upstream (a cache hit or a coalesced request used none).</summary>
    public long PromptTokens { get; init; }

    /// <summary>Completion tokens used upstream.</summary>
    public long CompletionTokens { get; init; }

    public long InFlight { get; init; }

    public long Submitted { get; init; }

    public required Dictionary<string, int> QueueDepths { get; init; }

    public required Dictionary<string, ProviderMetricsSnapshot> Providers { get; init; }

    /// <summary>Per gateway key: requests, failures, tokens, cost.</summary>
    public Dictionary<string, ModelMetricsSnapshot> Keys { get; init; } = [];

    /// <summary>Per requested model group: requests, failures, tokens, cost.</summary>
    public Dictionary<string, ModelMetricsSnapshot> Models { get; init; } = [];

    /// <summary>Per deployment ("group/provider/model"): circuit, failures in a row, latency, load.</summary>
    public Dictionary<string, DeploymentHealthSnapshot> Deployments { get; init; } = [];
}

public sealed class DeploymentHealthSnapshot
{
    /// <summary>closed, open or half_open (the circuit), or rejected (its provider refuses its key or model: out of rotation for Health:RejectedCooldown).</summary>
    public required string HealthState { get; init; }

    /// <summary>For a rejected deployment: the provider's answer (status and message, secrets redacted).</summary>
    public string? RejectedBecause { get; init; }

    public int ConsecutiveFailures { get; init; }

    /// <summary>Milliseconds until the deployment may be used again (open circuit or 429 cooldown); 0 when usable.</summary>
    public double CooldownRemainingMs { get; init; }

    /// <summary>Exponentially weighted latency; null before the first sample.</summary>
    public double? LatencyMs { get; init; }

    /// <summary>Attempts made at this deployment (cancelled hedge legs not counted).</summary>
    public long Requests { get; init; }

    /// <summary>Share of those attempts that succeeded (1 when none was made).</summary>
    public double SuccessRate { get; init; }

    /// <summary>What the answers from this deployment cost.</summary>
    public decimal TotalCost { get; init; }

    public int InFlight { get; init; }
}

public sealed record ProviderMetricsSnapshot
{
    /// <summary>Attempts sent to this provider.</summary>
    public long Requests { get; init; }

    public long Successes { get; init; }

    public long Failures { get; init; }

    /// <summary>Successes over attempts (1 when there were none).</summary>
    public double SuccessRate { get; init; }

    /// <summary>Mean latency of successful attempts.</summary>
    public double AvgLatencyMs { get; init; }

    public double P95LatencyMs { get; init; }

    public decimal TotalCost { get; init; }

    public long InFlight { get; init; }

    public int QueueDepth { get; init; }

    /// <summary>How long requests waited in this provider's queue before a worker took them: median, 99th percentile, longest.</summary>
    public double QueueWaitP50Ms { get; init; }

    public double QueueWaitP99Ms { get; init; }

    public double QueueWaitMaxMs { get; init; }

    /// <summary>Waiting callers' requests parked for room in this provider's full queue now (holding no in-flight slot).</summary>
    public int Parked { get; init; }

    /// <summary>How long a request arriving now would wait in this provider's queue, in milliseconds (0 when a worker is idle).</summary>
    public double ExpectedWaitMs { get; init; }

    /// <summary>The measured time a worker is occupied per request, in milliseconds (0 before the first one).</summary>
    public double ServiceTimeMs { get; init; }

    /// <summary>Milliseconds until the provider may be called again after it said 429 (0 when not paused).</summary>
    public double PausedMs { get; init; }

    /// <summary>The worst circuit state among the provider's deployments: closed, half_open or open.</summary>
    public string HealthState { get; init; } = "closed";

    /// <summary>The most failures in a row among the provider's deployments.</summary>
    public int ConsecutiveFailures { get; init; }
}

public sealed class ModelMetricsSnapshot
{
    public long Requests { get; init; }

    public long Failures { get; init; }

    public long PromptTokens { get; init; }

    public long CompletionTokens { get; init; }

    public decimal TotalCost { get; init; }
}
