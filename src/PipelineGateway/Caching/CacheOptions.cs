using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Caching;

/// <summary>The response cache (section <c>Gateway:Cache</c>).</summary>
public sealed class CacheOptions
{
    public bool Enabled { get; set; }

    /// <summary>How long an answer stays servable.</summary>
    public TimeSpan DefaultTtl { get; set; } = TimeSpan.FromHours(1);

    /// <summary>Entries kept at most; the least recently used leave first.</summary>
    [Range(1, 100_000_000)]
    public int MaxEntries { get; set; } = 10_000;

    /// <summary>Approximate bytes kept at most (answers' text and metadata); the least recently used leave first.</summary>
    [Range(1024, long.MaxValue)]
    public long MaxBytes { get; set; } = 256L * 1024 * 1024;

    /// <summary>Also cache answers to requests with temperature above 0 (not deterministic, so off by default).</summary>
    public bool CacheNonDeterministic { get; set; }

    /// <summary>Identical requests in flight share one upstream call.</summary>
    public bool SingleFlight { get; set; } = true;

    /// <summary>
    /// Requests that wait for one identical request in flight, at most; past it, an identical request makes its own
    /// upstream call instead of waiting (nothing is refused). Followers hold in-flight slots while they wait.
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxFollowers { get; set; } = 256;
}
