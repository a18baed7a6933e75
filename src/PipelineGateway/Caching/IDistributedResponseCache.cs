namespace PipelineGateway.Caching;

/// <summary>
/// A shared second level behind the in-memory cache (for example Redis, in PipelineGateway.Redis), so an answer
/// cached by one gateway instance is a hit on the others. Keys are the canonical cache keys
/// (<see cref="CacheKey"/>, namespace included). A second level never fails a request: an unreachable store is a miss.
/// </summary>
public interface IDistributedResponseCache
{
    /// <summary>The stored answer (with who produced it and its cost in <see cref="ChatCompletionResponse.Gateway"/>), or null.</summary>
    ValueTask<ChatCompletionResponse?> GetAsync(string key, CancellationToken cancellationToken);

    /// <summary>Stores an answer for <paramref name="ttl"/>, in the background; never throws.</summary>
    void Set(string key, ChatCompletionResponse response, TimeSpan ttl);
}
