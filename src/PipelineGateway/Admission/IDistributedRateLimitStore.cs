namespace PipelineGateway.Admission;

/// <summary>
/// Where the admission limits live when several gateway instances must share them (for example Redis, in
/// PipelineGateway.Redis). The store evaluates every rule of a partition at once: all admit and are charged
/// together, or none is charged. Without a store the limits are this process's own.
/// </summary>
internal interface IDistributedRateLimitStore
{
    /// <summary>What admission does when the store cannot be reached: true uses this instance's local limits.</summary>
    bool FailOpen { get; }

    /// <summary>Checks every rule for <paramref name="partition"/> and charges them all if all admit.</summary>
    /// <param name="partition">The tenant the limits apply to (key, user, model… as configured).</param>
    /// <param name="rules">The configured rules, in order.</param>
    /// <param name="tokens">The request's estimated tokens (what token rules are charged).</param>
    /// <param name="requestId">A unique id for the charge, so it can be corrected later.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    ValueTask<DistributedLimitDecision> TryAcquireAsync(string partition, IReadOnlyList<RateLimitRule> rules, long tokens, string requestId, CancellationToken cancellationToken);

    /// <summary>Corrects a token charge by <paramref name="delta"/> (actual minus estimated usage).</summary>
    ValueTask AdjustAsync(DistributedLimitCharge charge, long delta, CancellationToken cancellationToken);
}

/// <summary>The store's answer: admitted (with the charge), wait this long, never fits, or unreachable.</summary>
internal readonly record struct DistributedLimitDecision
{
    public DistributedLimitOutcome Outcome { get; init; }

    /// <summary>For <see cref="DistributedLimitOutcome.Wait"/>: how long until every rule admits.</summary>
    public TimeSpan RetryAfter { get; init; }

    /// <summary>For waits and refusals: the index of the rule that blocks.</summary>
    public int BlockingRule { get; init; }

    /// <summary>For <see cref="DistributedLimitOutcome.Admitted"/>: what was charged.</summary>
    public DistributedLimitCharge? Charge { get; init; }

    /// <summary>For <see cref="DistributedLimitOutcome.Unavailable"/>: why.</summary>
    public string? Error { get; init; }
}

internal enum DistributedLimitOutcome
{
    Admitted,
    Wait,
    TooLarge,
    Unavailable,
}

/// <summary>A charge taken in a store, kept by the request so the store can correct it to actual usage.</summary>
internal sealed record DistributedLimitCharge(string Partition, IReadOnlyList<RateLimitRule> Rules, long Tokens, string RequestId, long ChargedAtMs);
