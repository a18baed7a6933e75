using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Redis;

/// <summary>Distributed mode (<c>Gateway:Redis</c>): what the instances of a fleet share through Redis.</summary>
public sealed class RedisOptions
{
    public const string SectionName = "Gateway:Redis";

    /// <summary>A StackExchange.Redis configuration string, e.g. <c>redis-1:6379,redis-2:6379,password=…</c>.</summary>
    [Required]
    public string Configuration { get; set; } = string.Empty;

    /// <summary>Prefix of every key the gateway writes; instances that share limits share the prefix.</summary>
    [Required]
    [RegularExpression("^[A-Za-z0-9_.:-]{1,64}$", ErrorMessage = "Gateway:Redis:KeyPrefix may use letters, digits and _ . : - (1–64 characters).")]
    public string KeyPrefix { get; set; } = "pgw";

    /// <summary>What happens while Redis is unreachable.</summary>
    public RedisFailureMode FailureMode { get; set; } = RedisFailureMode.FailOpen;

    /// <summary>How long one Redis operation may take before it counts as unreachable.</summary>
    [Range(typeof(TimeSpan), "00:00:00.010", "00:01:00")]
    public TimeSpan OperationTimeout { get; set; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Share the admission rate limits across the fleet.</summary>
    public bool RateLimits { get; set; } = true;

    /// <summary>Use Redis as a shared second level behind each instance's response cache.</summary>
    public bool Cache { get; set; } = true;

    /// <summary>Share budget accounts (spend and reservations) across the fleet.</summary>
    public bool Budgets { get; set; } = true;

    /// <summary>
    /// Keep <c>/v1/responses</c> answers asked with <c>store</c> in Redis (not in each instance's memory), so a
    /// conversation continued by <c>previous_response_id</c> or <c>item_reference</c> finds them on any instance.
    /// </summary>
    public bool StoredResponses { get; set; } = true;

    /// <summary>The service key under which the stored responses' <c>IDistributedCache</c> is registered.</summary>
    public const string StoredResponsesServiceKey = "PipelineGateway.StoredResponses";

    /// <summary>Share circuit openings and 429 cooldowns between instances (pub/sub).</summary>
    public bool Health { get; set; } = true;

    /// <summary>Answers larger than this stay in the instance's own cache only.</summary>
    [Range(1024, 64 * 1024 * 1024)]
    public int CacheMaxEntryBytes { get; set; } = 512 * 1024;
}

public enum RedisFailureMode
{
    /// <summary>Each instance falls back to its own limits until Redis is back (available, may over-admit by the fleet size).</summary>
    FailOpen,

    /// <summary>Requests that need Redis are refused until it is back (never over-admits).</summary>
    FailClosed,
}
