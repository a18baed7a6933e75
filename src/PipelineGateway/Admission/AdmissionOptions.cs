using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Admission;

/// <summary>Gateway-side limits applied at admission (section <c>Gateway:Admission</c>).</summary>
public sealed class AdmissionOptions
{
    /// <summary>Limits chained together: a request passes only if every one admits it.</summary>
    public List<RateLimitRule> RateLimits { get; set; } = [];

    /// <summary>What separates one tenant's limits from another's; combine with commas ("Key, Model").</summary>
    public RateLimitPartition PartitionBy { get; set; } = RateLimitPartition.Key;

    /// <summary>
    /// How long a waiting caller (<see cref="SubmitMode.Wait"/>) may wait for a rate-limit permit before it is
    /// refused; fail-fast callers are refused at once. Waiters are admitted in arrival order as permits refill.
    /// </summary>
    public TimeSpan MaxWait { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Rate-limit partitions kept at once, at most. A partition whose limits are back at rest (a full bucket, an empty
    /// window) and that has no waiter is forgotten within a minute, losing nothing; past the bound, requests of a new
    /// partition are refused until room is made.
    /// </summary>
    [Range(1, 10_000_000)]
    public int MaxPartitions { get; set; } = 100_000;

    /// <summary>
    /// Completion tokens expected when a request sets no max_tokens and its model sets no
    /// <c>ExpectedCompletionTokens</c>: charged to token limits at admission (corrected after the answer), reserved by
    /// budgets, ranked by CostOptimized.
    /// </summary>
    [Range(0, 10_000_000)]
    public int ExpectedCompletionTokens { get; set; } = 256;
}

public enum RateLimitAlgorithm
{
    /// <summary>Refills continuously at Limit per Window, holding at most Burst.</summary>
    TokenBucket,

    /// <summary>At most Limit in any Window-long interval, exactly (no double burst at a window edge).</summary>
    SlidingWindow,
}

[Flags]
public enum RateLimitPartition
{
    /// <summary>One set of counters for everyone.</summary>
    None = 0,

    /// <summary>Per <see cref="GatewayRequestOptions.RateLimitKey"/> (the gateway key).</summary>
    Key = 1,

    /// <summary>Per the end user the request names (<c>user</c>, <c>safety_identifier</c>, Anthropic's <c>metadata.user_id</c>; its first 256 characters).</summary>
    User = 2,

    /// <summary>Per requested model.</summary>
    Model = 4,
}

public enum RateLimitUnit
{
    /// <summary>Each request costs 1.</summary>
    Requests,

    /// <summary>Each request costs its estimated tokens (prompt + max_tokens), corrected to actual usage after the answer.</summary>
    Tokens,
}

/// <summary>One limit: <see cref="Limit"/> requests per <see cref="Window"/>.</summary>
public sealed class RateLimitRule
{
    /// <summary>Shown in rate-limited errors; defaults to a description of the rule.</summary>
    public string? Name { get; set; }

    public RateLimitAlgorithm Algorithm { get; set; } = RateLimitAlgorithm.TokenBucket;

    public RateLimitUnit Unit { get; set; } = RateLimitUnit.Requests;

    [Range(1, long.MaxValue)]
    public long Limit { get; set; } = 60;

    /// <summary>The period the limit applies to, for example 00:01:00 for per-minute.</summary>
    public TimeSpan Window { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>Token bucket capacity (how many may go at once after idling); defaults to <see cref="Limit"/>.</summary>
    [Range(1, long.MaxValue)]
    public long? Burst { get; set; }

    public string DisplayName => Name ?? $"{Limit} {(Unit == RateLimitUnit.Tokens ? "tokens" : "requests")} per {Describe(Window)} ({Algorithm})";

    private static string Describe(TimeSpan window) => window switch
    {
        { TotalHours: 1 } => "hour",
        { TotalMinutes: 1 } => "minute",
        { TotalSeconds: 1 } => "second",
        { TotalDays: 1 } => "day",
        _ => window.ToString(),
    };
}
