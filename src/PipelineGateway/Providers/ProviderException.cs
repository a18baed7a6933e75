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

    /// <summary>The failure class of an HTTP status code: the one table every adapter uses.</summary>
    public static AttemptOutcome Classify(int statusCode) => statusCode switch
    {
        429 => AttemptOutcome.RateLimited,
        408 => AttemptOutcome.Timeout,
        >= 500 => AttemptOutcome.RetryableError,
        >= 400 => AttemptOutcome.NonRetryableError,
        _ => AttemptOutcome.RetryableError,
    };
}
