using System.Buffers;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace PipelineGateway.Caching;

/// <summary>
/// The response cache's second level over any <see cref="IDistributedCache"/> (Redis, SQL Server, …): the
/// in-memory cache stays the first level. Entries are <c>{"provider","provider_model","cost","response"}</c> so a
/// hit on another instance reports who produced the answer and its cost; the TTL becomes the entry's absolute
/// expiry. Answers over <paramref name="maxEntryBytes"/> stay local. Writes are in the background and a failed
/// read is a miss: the second level never fails a request.
/// </summary>
public sealed class DistributedCacheResponseCache(IDistributedCache cache, int maxEntryBytes = 512 * 1024) : IDistributedResponseCache
{
    public async ValueTask<ChatCompletionResponse?> GetAsync(string key, CancellationToken cancellationToken)
    {
        byte[]? bytes;
        try
        {
            bytes = await cache.GetAsync(key, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return null;
        }

        return bytes is null ? null : Read(bytes);
    }

    public void Set(string key, ChatCompletionResponse response, TimeSpan ttl) => SetSerialized(key, Write(response), ttl);

    /// <summary>Stores an entry already in this format (the in-memory cache keeps answers this way).</summary>
    internal void SetSerialized(string key, byte[] bytes, TimeSpan ttl)
    {
        if (bytes.Length > maxEntryBytes || ttl <= TimeSpan.Zero)
        {
            return;
        }

        _ = SetAsync(key, bytes, ttl);
    }

    private async Task SetAsync(string key, byte[] bytes, TimeSpan ttl)
    {
        try
        {
            await cache.SetAsync(key, bytes, new DistributedCacheEntryOptions { AbsoluteExpirationRelativeToNow = ttl }).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // Not shared this time; the instance's own cache still has it.
        }
    }

    internal static byte[] Write(ChatCompletionResponse response) =>
        Envelope(response.Gateway?.Provider, response.Gateway?.ProviderModel ?? response.Model, response.Gateway?.Cost ?? 0, JsonSerializer.SerializeToUtf8Bytes(response, GatewayJsonContext.Default.ChatCompletionResponse));

    /// <summary>The stored form around an answer already serialized: <c>{"provider","provider_model","cost","response"}</c>.</summary>
    internal static byte[] Envelope(string? provider, string providerModel, decimal cost, ReadOnlySpan<byte> responseJson)
    {
        var buffer = new ArrayBufferWriter<byte>(responseJson.Length + 128);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("provider", provider);
            w.WriteString("provider_model", providerModel);
            w.WriteString("cost", cost.ToString(CultureInfo.InvariantCulture));
            w.WritePropertyName("response");
            w.WriteRawValue(responseJson, skipInputValidation: true);
            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Which API a stored answer is: results are a ranking's (scored) or moderations'; data is an embeddings list (<c>"object":"list"</c>) or images.</summary>
    private static Providers.OperationKind KindOf(JsonElement stored) =>
        stored.TryGetProperty("results", out var results) ? results.ValueKind == JsonValueKind.Array && results.GetArrayLength() > 0 && results[0].TryGetProperty("relevance_score", out _) ? Providers.OperationKind.Rerank : Providers.OperationKind.Moderations
        : stored.TryGetProperty("object", out var o) && o.ValueKind == JsonValueKind.String && o.ValueEquals("list") ? Providers.OperationKind.Embeddings
        : Providers.OperationKind.Images;

    internal static ChatCompletionResponse? Read(byte[] bytes)
    {
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            var root = doc.RootElement;
            var stored = root.GetProperty("response");
            var response = stored.ValueKind == JsonValueKind.Object && !stored.TryGetProperty("choices", out _)
                && (stored.TryGetProperty("data", out _) || stored.TryGetProperty("results", out _))
                ? Providers.Operations.ReadAnswer(KindOf(stored), System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(stored).ToArray(), copy: false, "cache", out _) // another API's answer
                : stored.Deserialize(GatewayJsonContext.Default.ChatCompletionResponse);
            if (response is null)
            {
                return null;
            }

            response.Gateway = new GatewayResponseInfo
            {
                Provider = root.GetProperty("provider").GetString() ?? "cache",
                ProviderModel = root.GetProperty("provider_model").GetString() ?? response.Model,
                Attempts = [],
                Cost = decimal.Parse(root.GetProperty("cost").GetString() ?? "0", CultureInfo.InvariantCulture),
            };
            return response;
        }
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or Providers.ProviderException)
        {
            return null; // written by another version, or damaged: a miss, and the next answer overwrites it
        }
    }
}

public static class DistributedCacheServiceCollectionExtensions
{
    /// <summary>
    /// Uses the registered <see cref="IDistributedCache"/> (any implementation) as the response cache's shared
    /// second level. PipelineGateway.Redis does this for Redis by itself.
    /// </summary>
    public static IServiceCollection AddPipelineGatewayDistributedCache(this IServiceCollection services, int maxEntryBytes = 512 * 1024)
    {
        services.TryAddSingleton<IDistributedResponseCache>(sp => new DistributedCacheResponseCache(sp.GetRequiredService<IDistributedCache>(), maxEntryBytes));
        return services;
    }
}
