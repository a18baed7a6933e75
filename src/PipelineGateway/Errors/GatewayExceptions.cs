namespace PipelineGateway;

/// <summary>
/// The base of every failure the gateway reports to a caller. <see cref="Code"/> is stable and
/// machine-readable; the HTTP front door maps each type to a status code and an error body.
/// </summary>
public abstract class GatewayException : Exception
{
    protected GatewayException(string code, string message, Exception? inner = null)
        : base(message, inner) => Code = code;

    /// <summary>A stable, machine-readable error code (for example <c>rate_limited</c>).</summary>
    public string Code { get; }
}

/// <summary>The request is malformed; <see cref="Param"/> names the offending field.</summary>
public sealed class InvalidRequestException(string? param, string message)
    : GatewayException("invalid_request", message)
{
    public string? Param { get; } = param;
}

/// <summary>The requested model is not a configured model group or alias.</summary>
public sealed class ModelNotFoundException : GatewayException
{
    public ModelNotFoundException(string model)
        : this(model, $"The model '{Providers.ProviderException.Quoted(model)}' does not exist on this gateway.")
    {
    }

    /// <summary>A model the gateway cannot serve, with why (a wildcard with no room left, say).</summary>
    public ModelNotFoundException(string model, string message)
        : base("model_not_found", message)
    {
        Model = model;
    }

    public string Model { get; }
}

/// <summary>A gateway-side rate limit refused the request; retry after <see cref="RetryAfter"/>.</summary>
public sealed class RateLimitedException(string limit, TimeSpan retryAfter, string? message = null, IReadOnlyList<GatewayAttempt>? attempts = null)
    : GatewayException("rate_limited", message ?? $"Rate limit '{limit}' exceeded; retry after {retryAfter.TotalSeconds:F3} s.")
{
    /// <summary>The name of the limit that refused the request (a gateway rule, or the providers' own limits).</summary>
    public string Limit { get; } = limit;

    public TimeSpan RetryAfter { get; } = retryAfter;

    /// <summary>The attempts made before every deployment turned out rate-limited (none for a gateway limit).</summary>
    public IReadOnlyList<GatewayAttempt> Attempts { get; } = attempts ?? [];
}

/// <summary>
/// The upstream rejected the caller's own request — a 400, 413 or 422 (an invalid parameter, a content filter), or a
/// prompt too long for every model the group can fall back to. It was neither retried nor sent elsewhere: another
/// deployment would reject it too. <see cref="StatusCode"/>, <see cref="ErrorType"/>, <see cref="GatewayException.Code"/>
/// and <see cref="Param"/> are the upstream's, so a client can act on them (trim history on
/// <c>context_length_exceeded</c>, fix the named field).
/// </summary>
public sealed class UpstreamRejectedException(string model, int statusCode, string? errorType, string? errorCode, string? param, string message, IReadOnlyList<GatewayAttempt> attempts)
    : GatewayException(errorCode ?? "invalid_request", message)
{
    public string Model { get; } = model;

    /// <summary>The upstream's status (400, 413, 422…).</summary>
    public int StatusCode { get; } = statusCode;

    /// <summary>The upstream's error type (<c>invalid_request_error</c>…), if it said.</summary>
    public string? ErrorType { get; } = errorType;

    /// <summary>The request field the upstream named, if it did.</summary>
    public string? Param { get; } = param;

    public IReadOnlyList<GatewayAttempt> Attempts { get; } = attempts;
}

/// <summary>The gateway's queue is full and the caller asked not to wait (load shedding).</summary>
public sealed class QueueFullException(TimeSpan retryAfter, string? message = null)
    : GatewayException("queue_full", message ?? $"The gateway queue is full; retry after {retryAfter.TotalSeconds:F3} s.")
{
    public TimeSpan RetryAfter { get; } = retryAfter;
}

/// <summary>
/// Every deployment that could serve the request is overloaded: its expected queue wait is longer than the request may
/// wait (<c>Pipeline:MaxQueueWait</c> for fail-fast callers, the remaining deadline for all). Refused at once, before
/// waiting; <see cref="RetryAfter"/> is when the queue is expected to have room.
/// </summary>
public sealed class ProviderOverloadedException(string model, TimeSpan retryAfter, TimeSpan expectedWait, IReadOnlyList<GatewayAttempt> attempts, string? message = null)
    : GatewayException("provider_overloaded", message ?? $"Every deployment of model '{model}' is overloaded: the expected wait ({expectedWait.TotalSeconds:F1} s) is longer than the request may wait; retry after {retryAfter.TotalSeconds:F1} s{AttemptText.Describe(attempts)}")
{
    public string Model { get; } = model;

    public TimeSpan RetryAfter { get; } = retryAfter;

    /// <summary>The shortest expected queue wait among the deployments that were considered.</summary>
    public TimeSpan ExpectedWait { get; } = expectedWait;

    public IReadOnlyList<GatewayAttempt> Attempts { get; } = attempts;
}

/// <summary>The request's deadline passed before an answer arrived.</summary>
public sealed class DeadlineExceededException(TimeSpan timeout, IReadOnlyList<GatewayAttempt> attempts, string? message = null)
    : GatewayException("deadline_exceeded", message ?? $"The request did not complete within its deadline of {timeout.TotalMilliseconds:F0} ms{AttemptText.Describe(attempts)}")
{
    public TimeSpan Timeout { get; } = timeout;

    public IReadOnlyList<GatewayAttempt> Attempts { get; } = attempts;
}

/// <summary>A spending budget would be exceeded by this request.</summary>
public sealed class BudgetExceededException(string budget, decimal limit, decimal spent, string? message = null)
    : GatewayException("budget_exceeded", message ?? $"Budget '{budget}' of ${limit} is exhausted (${spent} spent or reserved).")
{
    public string Budget { get; } = budget;

    public decimal Limit { get; } = limit;

    public decimal Spent { get; } = spent;
}

/// <summary>
/// Every attempt failed on the providers' side (5xx, overload, timeouts, network, or every deployment's key or model
/// rejected); <see cref="Attempts"/> lists each one in order with its real outcome. <see cref="StatusCode"/> is what
/// the HTTP front door answers: 504 when the attempts timed out, 503 when the providers said they were overloaded,
/// 502 otherwise.
/// </summary>
public sealed class AllProvidersFailedException(string model, IReadOnlyList<GatewayAttempt> attempts, string? reason = null, string? code = null)
    : GatewayException(code ?? CodeOf(attempts), $"All providers failed for model '{model}'{(reason is null ? string.Empty : $" ({reason})")}{AttemptText.Describe(attempts)}")
{
    public string Model { get; } = model;

    public IReadOnlyList<GatewayAttempt> Attempts { get; } = attempts;

    /// <summary>The status code of the last attempt that reached a provider, if any.</summary>
    public int? LastStatusCode => Attempts.LastOrDefault(a => a.StatusCode is not null)?.StatusCode;

    /// <summary>502 (upstream errors, rejected deployments), 503 (providers overloaded) or 504 (attempts timed out).</summary>
    public int StatusCode => Code switch
    {
        "upstream_timeout" => 504,
        "upstream_overloaded" => 503,
        _ => 502,
    };

    /// <summary>When the providers said to come back (the last attempt's Retry-After), if they did.</summary>
    public TimeSpan? RetryAfter => Last(Attempts)?.RetryAfter;

    private static GatewayAttempt? Last(IReadOnlyList<GatewayAttempt> attempts) =>
        attempts.LastOrDefault(a => a.Outcome is not (AttemptOutcome.Cancelled or AttemptOutcome.Success));

    private static string CodeOf(IReadOnlyList<GatewayAttempt> attempts)
    {
        if (attempts.Count > 0 && attempts.All(a => a.Outcome is AttemptOutcome.DeploymentUnavailable or AttemptOutcome.Cancelled))
        {
            return "deployment_unavailable";
        }

        return Last(attempts) switch
        {
            { Outcome: AttemptOutcome.Timeout } => "upstream_timeout",
            { StatusCode: 503 or 529 } or { ErrorType: "overloaded_error" } => "upstream_overloaded",
            _ => "all_providers_failed",
        };
    }
}

/// <summary>The gateway is shutting down and can no longer serve the request.</summary>
public sealed class GatewayUnavailableException(string message) : GatewayException("unavailable", message);

/// <summary>
/// The caller cancelled the request. It derives from <see cref="OperationCanceledException"/> so the
/// usual <c>catch (OperationCanceledException)</c> works, and lists any attempts made before it.
/// </summary>
public sealed class RequestCancelledException(IReadOnlyList<GatewayAttempt> attempts, CancellationToken token)
    : OperationCanceledException("The request was cancelled by the caller.", token)
{
    public string Code => "cancelled";

    public IReadOnlyList<GatewayAttempt> Attempts { get; } = attempts;
}

internal static class AttemptText
{
    public static string Describe(IReadOnlyList<GatewayAttempt> attempts)
    {
        if (attempts.Count == 0)
        {
            return ".";
        }

        var text = ": " + string.Join("; ", attempts.Select((a, i) => $"#{i + 1} {a}"));
        return text.EndsWith('.') || text.EndsWith('…') ? text : text + ".";
    }
}
