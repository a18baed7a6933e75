namespace PipelineGateway.Providers;

/// <summary>
/// A failed provider call with its failure class. Thrown by <see cref="ILlmProvider"/> implementations;
/// never shown to gateway callers (they see the attempt list of a <see cref="GatewayException"/>).
/// </summary>
public sealed class ProviderException : Exception
{
    public ProviderException(AttemptOutcome outcome, string message, int? statusCode = null, TimeSpan? retryAfter = null, Exception? inner = null)
        : base(message, inner)
    {
        if (outcome is AttemptOutcome.Success)
        {
            throw new ArgumentOutOfRangeException(nameof(outcome), "A provider failure cannot have the outcome Success.");
        }

        Outcome = outcome;
        StatusCode = statusCode;
        RetryAfter = retryAfter;
    }

    public AttemptOutcome Outcome { get; }

    public int? StatusCode { get; }

    /// <summary>How long the provider asked us to wait (Retry-After), if it said.</summary>
    public TimeSpan? RetryAfter { get; }

    /// <summary>The upstream's error type (OpenAI <c>invalid_request_error</c>, Anthropic <c>overloaded_error</c>…), if it said.</summary>
    public string? ErrorType { get; init; }

    /// <summary>The upstream's error code (OpenAI <c>context_length_exceeded</c>…), if it said.</summary>
    public string? ErrorCode { get; init; }

    /// <summary>The request field the upstream named as wrong, if it did.</summary>
    public string? Param { get; init; }

    /// <summary>
    /// The upstream's own message, reduced to its text and with secrets redacted: what a caller is shown when the
    /// upstream rejected the caller's request (a 400 passed through), instead of the gateway's attempt description.
    /// </summary>
    public string? UpstreamMessage { get; init; }

    /// <summary>
    /// The request never left the gateway: this provider has no form for part of it (<see cref="Param"/> names the part
    /// — a content type it does not take, tool arguments that are not a JSON object where it needs one). Nothing is
    /// dropped to make it fit. The gateway tries the group's other deployments and its fallbacks, which may take the
    /// request as it is; when none can, the caller gets this 400. The deployment's health is not affected.
    /// </summary>
    public bool NotSent { get; init; }

    /// <summary>
    /// A request this provider cannot carry as it is (<see cref="NotSent"/>): the caller's 400 <c>unsupported_value</c>
    /// naming <paramref name="param"/> when no deployment can take it. No status of its own: nothing answered.
    /// </summary>
    public static ProviderException Unsupported(string param, string message) =>
        new(AttemptOutcome.NonRetryableError, message)
        {
            ErrorType = "invalid_request_error",
            ErrorCode = "unsupported_value",
            Param = param,
            UpstreamMessage = message,
            NotSent = true,
        };

    /// <summary>A caller's value named in an <see cref="Unsupported"/> message: at most 40 characters of it (a part's type can be any length).</summary>
    internal static string Quoted(string? value) => value is null ? "null" : value.Length <= 40 ? value : value[..40] + "…";

    /// <summary>The failure class of an HTTP status code: the one table every adapter uses.</summary>
    public static AttemptOutcome Classify(int statusCode) => statusCode switch
    {
        429 => AttemptOutcome.RateLimited,
        408 => AttemptOutcome.Timeout,
        401 or 403 or 404 or (>= 300 and < 400) => AttemptOutcome.DeploymentUnavailable, // a 3xx: redirects are not followed
        >= 500 => AttemptOutcome.RetryableError,
        >= 400 => AttemptOutcome.NonRetryableError,
        _ => AttemptOutcome.RetryableError,
    };
}
