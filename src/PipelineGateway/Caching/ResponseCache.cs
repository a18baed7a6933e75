using Microsoft.Extensions.Caching.Memory;
using Microsoft.Extensions.Internal;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Caching;

/// <summary>
/// Whole answers by <see cref="CacheKey"/>, in a <see cref="MemoryCache"/> bounded by entries and approximate
/// bytes, with TTLs. MemoryCache has its own clock; it is given one that reads the injected
/// <see cref="TimeProvider"/> so expiry is testable without waiting.
/// </summary>
/// <remarks>
/// MemoryCache on its own refuses a new entry when the size limit is reached (and compacts later, in the
/// background): the newest answer would be the one lost. Here the cache is compacted synchronously before an
/// insert that would not fit, and compaction removes the least recently used entries first — so the LRU entry
/// leaves, and the new one is kept.
/// </remarks>
internal sealed class ResponseCache : IDisposable
{
    private readonly MemoryCache _cache;
    private readonly CacheOptions _options;
    private readonly PostEvictionCallbackRegistration _onEvicted;
    private long _evictions;
    private readonly IDistributedResponseCache? _secondLevel;

    public ResponseCache(IOptions<GatewayOptions> options, TimeProvider time, IDistributedResponseCache? secondLevel = null)
    {
        _options = options.Value.Cache;
        _secondLevel = secondLevel;
        _cache = new MemoryCache(new MemoryCacheOptions
        {
            SizeLimit = _options.MaxBytes,
            CompactionPercentage = 0.1,
            Clock = new TimeProviderClock(time),
            ExpirationScanFrequency = TimeSpan.FromSeconds(30),
            TrackStatistics = true,
        });
        _onEvicted = new PostEvictionCallbackRegistration
        {
            EvictionCallback = static (_, value, reason, state) =>
            {
                var self = (ResponseCache)state!;
                if (reason == EvictionReason.Capacity)
                {
                    Interlocked.Increment(ref self._evictions);
                }
            },
            State = this,
        };
    }

    public bool IsEnabled => _options.Enabled;

    public bool SingleFlight => _options.SingleFlight;

    public int MaxFollowers => _options.MaxFollowers;

    public int Count => _cache.Count;

    /// <summary>Approximate bytes held (MemoryCache's own size count, updated as entries come and go).</summary>
    public long Bytes => _cache.GetCurrentStatistics()?.CurrentEstimatedSize ?? 0;

    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>Whether this request may use the cache at all (policy and per-request controls).</summary>
    public bool IsCacheable(ChatCompletionRequest request) =>
        _options.Enabled
        && request.Gateway?.NoStore != true
        && (request.N ?? 1) == 1
        && (_options.CacheNonDeterministic || request.Temperature is null or 0);

    public bool TryGet(in CacheKey key, out ChatCompletionResponse response)
    {
        if (_cache.TryGetValue(key, out var value) && value is Entry e)
        {
            response = e.Response;
            return true;
        }

        response = null!;
        return false;
    }

    /// <summary>True when a shared second level sits behind this cache.</summary>
    public bool HasSecondLevel => _secondLevel is not null;

    /// <summary>Looks a key up in the second level; a hit is kept in memory too. Any failure is a miss.</summary>
    public async ValueTask<ChatCompletionResponse?> GetSecondLevelAsync(CacheKey key, CancellationToken cancellationToken)
    {
        ChatCompletionResponse? response;
        try
        {
            response = await _secondLevel!.GetAsync(key.ToString(), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return null;
        }

        if (response is not null)
        {
            SetLocal(key, response, null);
        }

        return response;
    }

    /// <summary>Stores an answer in memory and, when there is one, in the shared second level.</summary>
    public void Set(in CacheKey key, ChatCompletionResponse response, TimeSpan? ttl)
    {
        SetLocal(key, response, ttl);
        _secondLevel?.Set(key.ToString(), response, ttl ?? _options.DefaultTtl);
    }

    private void SetLocal(in CacheKey key, ChatCompletionResponse response, TimeSpan? ttl)
    {
        var bytes = ApproximateBytes(response);
        if (bytes > _options.MaxBytes)
        {
            return; // larger than the whole cache: not worth evicting everything for
        }

        // Make room first, least recently used out, so the new answer is never the one refused.
        for (var guard = 0; guard < 1000 && _cache.Count > 0 && (_cache.Count + 1 > _options.MaxEntries || Bytes + bytes > _options.MaxBytes); guard++)
        {
            _cache.Compact(1.0 / _cache.Count);
        }

        using var entry = _cache.CreateEntry(key);
        entry.Value = new Entry(response, bytes);
        entry.Size = bytes;
        entry.AbsoluteExpirationRelativeToNow = ttl ?? _options.DefaultTtl;
        entry.PostEvictionCallbacks.Add(_onEvicted);
    }

    public void Dispose() => _cache.Dispose();

    /// <summary>Text, tool calls and a fixed overhead for the objects around them.</summary>
    internal static long ApproximateBytes(ChatCompletionResponse response)
    {
        long bytes = 512;
        foreach (var c in response.Choices)
        {
            bytes += 2L * (c.Message?.Content?.GetText().Length ?? 0);
            foreach (var t in c.Message?.ToolCalls ?? [])
            {
                bytes += 128 + (2L * ((t.Function?.Arguments?.Length ?? 0) + (t.Function?.Name?.Length ?? 0)));
            }
        }

        return bytes;
    }

    private sealed record Entry(ChatCompletionResponse Response, long Bytes);

#pragma warning disable CS0618 // ISystemClock is the only clock seam MemoryCache takes.
    private sealed class TimeProviderClock(TimeProvider time) : ISystemClock
    {
        public DateTimeOffset UtcNow => time.GetUtcNow();
    }
#pragma warning restore CS0618
}
