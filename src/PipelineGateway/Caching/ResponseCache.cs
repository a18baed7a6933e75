using Microsoft.Extensions.Caching.Memory;
using Microsoft.Extensions.Internal;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Caching;

/// <summary>
/// Whole answers by <see cref="CacheKey"/>, in a size-limited <see cref="MemoryCache"/> with TTLs.
/// MemoryCache has its own clock; it is given one that reads the injected <see cref="TimeProvider"/>
/// so expiry is testable without waiting.
/// </summary>
internal sealed class ResponseCache : IDisposable
{
    private readonly MemoryCache _cache;
    private readonly CacheOptions _options;

    public ResponseCache(IOptions<GatewayOptions> options, TimeProvider time)
    {
        _options = options.Value.Cache;
        _cache = new MemoryCache(new MemoryCacheOptions
        {
            SizeLimit = _options.MaxEntries,
            CompactionPercentage = 0.05,
            Clock = new TimeProviderClock(time),
            ExpirationScanFrequency = TimeSpan.FromSeconds(30),
        });
    }

    public bool IsEnabled => _options.Enabled;

    /// <summary>Whether this request may read and write the cache at all (policy and per-request controls).</summary>
    public bool IsCacheable(ChatCompletionRequest request) =>
        _options.Enabled
        && request.Gateway?.NoStore != true
        && (request.N ?? 1) == 1
        && (_options.CacheNonDeterministic || request.Temperature is null or 0);

    public bool TryGet(in CacheKey key, out ChatCompletionResponse response) => _cache.TryGetValue(key, out response!);

    public void Set(in CacheKey key, ChatCompletionResponse response, TimeSpan? ttl)
    {
        using var entry = _cache.CreateEntry(key);
        entry.Value = response;
        entry.Size = 1;
        entry.AbsoluteExpirationRelativeToNow = ttl ?? _options.DefaultTtl;
    }

    public int Count => _cache.Count;

    public void Dispose() => _cache.Dispose();

#pragma warning disable CS0618 // ISystemClock is the only clock seam MemoryCache takes.
    private sealed class TimeProviderClock(TimeProvider time) : ISystemClock
    {
        public DateTimeOffset UtcNow => time.GetUtcNow();
    }
#pragma warning restore CS0618
}
