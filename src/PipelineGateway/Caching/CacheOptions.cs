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

    /// <summary>Also cache answers to requests with temperature above 0 (not deterministic, so off by default).</summary>
    public bool CacheNonDeterministic { get; set; }
}
