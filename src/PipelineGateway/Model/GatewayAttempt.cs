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

    /// <summary>
    /// The provider refused this deployment itself — its key (401, 403), its model (404) or its address (a 3xx redirect,
    /// which the gateway does not follow) — not the request: the
    /// deployment is taken out of rotation for <c>Health:RejectedCooldown</c> and the request goes to another.
    /// </summary>
    DeploymentUnavailable,
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

    /// <summary>The upstream's error type (OpenAI <c>invalid_request_error</c>, Anthropic <c>overloaded_error</c>…), if it said.</summary>
    public string? ErrorType { get; init; }

    /// <summary>The upstream's error code (OpenAI <c>context_length_exceeded</c>, <c>invalid_value</c>…), if it said.</summary>
    public string? ErrorCode { get; init; }

    /// <summary>The request field the upstream named as wrong, if it did.</summary>
    public string? Param { get; init; }

    /// <summary>How long the upstream asked to wait (its Retry-After), if it said.</summary>
    public TimeSpan? RetryAfter { get; init; }

    /// <summary>
    /// The request never left the gateway: the deployment has no form for part of it (<c>ProviderException.NotSent</c>).
    /// Not counted as a request to the provider or in the deployment's success rate; no status (nothing answered).
    /// </summary>
    public bool NotSent { get; init; }

    public override string ToString() =>
        Outcome == AttemptOutcome.Success
            ? $"{Provider}/{ProviderModel}: success in {Latency.TotalMilliseconds:F1} ms"
            : $"{Provider}/{ProviderModel}: {(NotSent ? "not sent" : Outcome.ToString())}{(StatusCode is { } s ? $" ({s})" : string.Empty)} after {Latency.TotalMilliseconds:F1} ms{(Error is null ? string.Empty : $": {Error}")}";
}
