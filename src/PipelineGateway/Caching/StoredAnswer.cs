using System.Text.Json;

namespace PipelineGateway.Caching;

/// <summary>
/// An answer as the cache and single-flight keep it: its serialized form (the second level's format, so it is
/// written once for both), who produced it and what it cost. Immutable: every caller served from it gets its own
/// <see cref="ChatCompletionResponse"/> (<see cref="Materialize"/>), so no caller can change what later hits get.
/// </summary>
internal sealed class StoredAnswer
{
    private StoredAnswer(byte[] json, string provider, string providerModel, decimal cost, Providers.OperationKind? operation = null)
    {
        Json = json;
        Operation = operation;
        Provider = provider;
        ProviderModel = providerModel;
        Cost = cost;
    }

    /// <summary>The answer as its wire JSON (without the gateway's info, which is not part of it).</summary>
    public byte[] Json { get; }

    public string Provider { get; }

    /// <summary>Another API's answer (embeddings, moderations): <see cref="Json"/> is that API's answer, not a chat completion.</summary>
    public Providers.OperationKind? Operation { get; }

    public string ProviderModel { get; }

    /// <summary>What the upstream call that produced it cost: what a hit or a follower avoids.</summary>
    public decimal Cost { get; }

    /// <summary>Bytes held: the serialized answer and a fixed overhead for the entry around it.</summary>
    public long Size => Json.Length + 160;

    /// <summary>Captures an answer before anyone else holds it (its <see cref="ChatCompletionResponse.Gateway"/> info included).</summary>
    public static StoredAnswer From(ChatCompletionResponse response) => response.Operation is { } operation
        ? new(Providers.Operations.ToJson(response), response.Gateway?.Provider ?? "cache", response.Gateway?.ProviderModel ?? response.Model, response.Gateway?.Cost ?? 0, operation.Kind)
        : new(AnswerBytes(response), response.Gateway?.Provider ?? "cache", response.Gateway?.ProviderModel ?? response.Model, response.Gateway?.Cost ?? 0);

    /// <summary>A chat answer's JSON: its upstream bytes when it still holds them (they say what writing it would), else written.</summary>
    private static byte[] AnswerBytes(ChatCompletionResponse response) => response.HasUpstreamJson
        ? response.UpstreamJson.ToArray()
        : JsonSerializer.SerializeToUtf8Bytes(response, GatewayJsonContext.Default.ChatCompletionResponse);

    /// <summary>
    /// A new, independent copy of the answer (without gateway info: whoever serves it attaches the caller's own). Another
    /// API's list (vectors, moderation results) is this entry's bytes, shared: nobody writes them.
    /// </summary>
    public ChatCompletionResponse Materialize() => Operation is { } kind
        ? Providers.Operations.ReadAnswer(kind, Json, copy: false, "cache", out _)
        : JsonSerializer.Deserialize(Json, GatewayJsonContext.Default.ChatCompletionResponse) ?? throw new InvalidOperationException("A stored answer could not be read back.");

    /// <summary>The second level's form (<see cref="DistributedCacheResponseCache"/>): who produced it and its cost around the answer.</summary>
    public byte[] ToEnvelope() => DistributedCacheResponseCache.Envelope(Provider, ProviderModel, Cost, Json);
}
