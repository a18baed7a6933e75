namespace PipelineGateway.Caching;

/// <summary>
/// An answer as the cache and single-flight keep it: its serialized form (the second level's format, so it is
/// written once for both), who produced it and what it cost. Immutable: every caller served from it gets its own
/// <see cref="ChatCompletionResponse"/> (<see cref="Materialize"/>), so no caller can change what later hits get.
/// </summary>
internal sealed class StoredAnswer
{
    private StoredAnswer(byte[] json, string provider, string providerModel, decimal cost)
    {
        Json = json;
        Provider = provider;
        ProviderModel = providerModel;
        Cost = cost;
    }

    /// <summary><c>{"provider","provider_model","cost","response"}</c> (see <see cref="DistributedCacheResponseCache"/>).</summary>
    public byte[] Json { get; }

    public string Provider { get; }

    public string ProviderModel { get; }

    /// <summary>What the upstream call that produced it cost: what a hit or a follower avoids.</summary>
    public decimal Cost { get; }

    /// <summary>Bytes held: the serialized answer and a fixed overhead for the entry around it.</summary>
    public long Size => Json.Length + 160;

    /// <summary>Captures an answer before anyone else holds it (its <see cref="ChatCompletionResponse.Gateway"/> info included).</summary>
    public static StoredAnswer From(ChatCompletionResponse response) =>
        new(DistributedCacheResponseCache.Write(response), response.Gateway?.Provider ?? "cache", response.Gateway?.ProviderModel ?? response.Model, response.Gateway?.Cost ?? 0);

    /// <summary>A new, independent copy of the answer (without gateway info: the caller's own is attached by the server of it).</summary>
    public ChatCompletionResponse Materialize() =>
        DistributedCacheResponseCache.Read(Json) ?? throw new InvalidOperationException("A stored answer could not be read back.");
}
