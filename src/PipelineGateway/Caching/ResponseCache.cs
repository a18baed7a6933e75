using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Caching;

/// <summary>
/// Whole answers by <see cref="CacheKey"/>: an exact LRU (<see cref="LruStore{TKey,TValue}"/>) bounded by entries and
/// bytes, with a TTL per entry on the injected <see cref="TimeProvider"/> (so expiry is testable without waiting),
/// and an optional shared second level behind it. Answers are kept serialized (<see cref="StoredAnswer"/>): the
/// byte count is exact, and every hit is a new copy.
/// </summary>
internal sealed class ResponseCache
{
    private readonly LruStore<CacheKey, StoredAnswer> _store;
    private readonly CacheOptions _options;
    private readonly IDistributedResponseCache? _secondLevel;

    public ResponseCache(IOptions<GatewayOptions> options, TimeProvider time, IDistributedResponseCache? secondLevel = null)
    {
        _options = options.Value.Cache;
        _secondLevel = secondLevel;
        _store = new LruStore<CacheKey, StoredAnswer>(_options.MaxEntries, _options.MaxBytes, time);
    }

    public bool IsEnabled => _options.Enabled;

    public bool SingleFlight => _options.SingleFlight;

    public int MaxFollowers => _options.MaxFollowers;

    public int Count => _store.Count;

    /// <summary>Bytes held: the serialized answers and a fixed overhead per entry.</summary>
    public long Bytes => _store.Bytes;

    public long Evictions => _store.Evictions;

    /// <summary>Whether this request may use the cache at all (policy and per-request controls).</summary>
    public bool IsCacheable(ChatCompletionRequest request) =>
        _options.Enabled
        && request.Gateway?.NoStore != true
        && (request.N ?? 1) == 1
        && request.Operation is not ({ Kind: Providers.OperationKind.Speech } or { Files: not null }) // audio has no place in a JSON store (and is drawn anew)
        && request.TextCompletion is not { AsksLogprobs: true } // a stream's would not be rebuilt: the completions form is not chat's
        && (_options.CacheNonDeterministic || (request.Temperature is null or 0 && request.Operation?.Kind != Providers.OperationKind.Images)); // an image is drawn anew each time

    public bool TryGet(in CacheKey key, out StoredAnswer answer) => _store.TryGet(key, out answer);

    /// <summary>True when a shared second level sits behind this cache.</summary>
    public bool HasSecondLevel => _secondLevel is not null;

    /// <summary>Looks a key up in the second level; a hit is kept in memory too. Any failure is a miss.</summary>
    public async ValueTask<StoredAnswer?> GetSecondLevelAsync(CacheKey key, CancellationToken cancellationToken)
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

        if (response is null)
        {
            return null;
        }

        var answer = StoredAnswer.From(response);
        _store.Set(key, answer, answer.Size, _options.DefaultTtl);
        return answer;
    }

    /// <summary>
    /// Captures a cacheable request's answer before its caller holds it — for the cache, and for the identical requests
    /// that wait on it — so neither ever sees what the caller later does with its own object.
    /// </summary>
    public void Store(Pipeline.WorkItem item, ChatCompletionResponse response)
    {
        if (item.CacheKey is not { } key || (response.Choices.Count == 0 && response.Operation is null)) // embeddings have no choices
        {
            return;
        }

        item.Stored = StoredAnswer.From(response);
        Set(key, item.Stored, item.Request.Gateway?.CacheTtl);
    }

    /// <summary>Stores an answer in memory and, when there is one, in the shared second level.</summary>
    public void Set(in CacheKey key, StoredAnswer answer, TimeSpan? ttl)
    {
        var lifetime = ttl ?? _options.DefaultTtl;
        _store.Set(key, answer, answer.Size, lifetime);
        switch (_secondLevel)
        {
            case null:
                break;
            case DistributedCacheResponseCache shared:
                shared.SetSerialized(key.ToString(), answer.ToEnvelope(), lifetime); // the answer's bytes are reused, not written again
                break;
            case not null when answer.Operation is not null:
                break; // another store's format is the chat answer's, which has no place for another API's list
            default:
                _secondLevel.Set(key.ToString(), answer.Materialize(), lifetime);
                break;
        }
    }
}
