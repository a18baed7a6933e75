using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Admission;

/// <summary>Gateway-side limits applied at admission (section <c>Gateway:Admission</c>).</summary>
public sealed class AdmissionOptions
{
    /// <summary>Limits chained together: a request passes only if every one admits it.</summary>
    public List<RateLimitRule> RateLimits { get; set; } = [];

    /// <summary>What separates one tenant's limits from another's.</summary>
    public RateLimitPartition PartitionBy { get; set; } = RateLimitPartition.Key;
}

public enum RateLimitAlgorithm
{
    /// <summary>Refills continuously at Limit per Window, holding at most Burst.</summary>
    TokenBucket,

    /// <summary>At most Limit in any Window-long interval, exactly (no double burst at a window edge).</summary>
    SlidingWindow,
}

public enum RateLimitPartition
{
    /// <summary>One set of counters for everyone.</summary>
    None,

    /// <summary>Per <see cref="GatewayRequestOptions.RateLimitKey"/> (the gateway key), falling back to the shared partition.</summary>
    Key,

    /// <summary>Per the request's <c>user</c> field.</summary>
    User,

    /// <summary>Per requested model.</summary>
    Model,
}

/// <summary>One limit: <see cref="Limit"/> requests per <see cref="Window"/>.</summary>
public sealed class RateLimitRule
{
    /// <summary>Shown in rate-limited errors; defaults to a description of the rule.</summary>
    public string? Name { get; set; }

    public RateLimitAlgorithm Algorithm { get; set; } = RateLimitAlgorithm.TokenBucket;

    [Range(1, long.MaxValue)]
    public long Limit { get; set; } = 60;

    /// <summary>The period the limit applies to, for example 00:01:00 for per-minute.</summary>
    public TimeSpan Window { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>Token bucket capacity (how many may go at once after idling); defaults to <see cref="Limit"/>.</summary>
    [Range(1, long.MaxValue)]
    public long? Burst { get; set; }

    public string DisplayName => Name ?? $"{Limit} requests per {Describe(Window)} ({Algorithm})";

    private static string Describe(TimeSpan window) => window switch
    {
        { TotalHours: 1 } => "hour",
        { TotalMinutes: 1 } => "minute",
        { TotalSeconds: 1 } => "second",
        { TotalDays: 1 } => "day",
        _ => window.ToString(),
    };
}
