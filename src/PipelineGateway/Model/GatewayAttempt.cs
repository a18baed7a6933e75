namespace PipelineGateway;

/// <summary>How one attempt at a provider ended.</summary>
public enum AttemptOutcome
{
    Success,

    /// <summary>A transient failure (5xx, network, overloaded): worth another attempt.</summary>
    RetryableError,

    /// <summary>The provider said 429: it goes into cooldown for its Retry-After.</summary>
    RateLimited,

    /// <summary>The attempt ran out of time.</summary>
    Timeout,

    /// <summary>The provider rejected the request itself (400, 401, 403, 404, 422): another attempt would fail too.</summary>
    NonRetryableError,

    /// <summary>The prompt is too long for the model; only a context-window fallback can help.</summary>
    ContextLengthExceeded,

    /// <summary>The caller cancelled, the deadline passed or the gateway shut down while the attempt ran.</summary>
    Cancelled,
}

/// <summary>One attempt at one provider deployment, as reported to the caller.</summary>
public sealed record GatewayAttempt(
    string Provider,
    string ProviderModel,
    AttemptOutcome Outcome,
    TimeSpan Latency,
    int? StatusCode = null,
    string? Error = null)
{
    /// <summary>The deployment attempted (gateway-internal: lets the router skip what was tried).</summary>
    internal Routing.Deployment? Deployment { get; set; }

    public override string ToString() =>
        Outcome == AttemptOutcome.Success
            ? $"{Provider}/{ProviderModel}: success in {Latency.TotalMilliseconds:F1} ms"
            : $"{Provider}/{ProviderModel}: {Outcome}{(StatusCode is { } s ? $" ({s})" : string.Empty)} after {Latency.TotalMilliseconds:F1} ms{(Error is null ? string.Empty : $": {Error}")}";
}
