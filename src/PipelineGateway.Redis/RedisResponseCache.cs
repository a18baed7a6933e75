using System.Buffers;
using System.Globalization;
using System.Text.Json;
using PipelineGateway.Caching;
using StackExchange.Redis;

namespace PipelineGateway.Redis;

/// <summary>
/// Redis as the shared second level behind each instance's in-memory cache: same canonical keys
/// (<c>PREFIX:c:NAMESPACE:HASH</c>), the entry's TTL as the key's expiry, so an answer cached by one instance is
/// a hit on every other. Entries larger than <see cref="RedisOptions.CacheMaxEntryBytes"/> stay in memory only
/// (one huge answer should not cost every instance a large transfer on each hit). Writes are fire-and-forget;
/// reads that fail or time out are misses, so an unreachable Redis never fails or slows a request beyond
/// <see cref="RedisOptions.OperationTimeout"/>.
/// </summary>
internal sealed class RedisResponseCache(RedisConnection redis) : IDistributedResponseCache
{
    private readonly string _prefix = redis.Options.KeyPrefix + ":c:";

    public async ValueTask<ChatCompletionResponse?> GetAsync(string key, CancellationToken cancellationToken)
    {
        RedisValue value;
        try
        {
            value = await redis.Database.StringGetAsync(_prefix + key).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            return null;
        }

        return value.IsNullOrEmpty ? null : Read((byte[])value!);
    }

    public void Set(string key, ChatCompletionResponse response, TimeSpan ttl)
    {
        var bytes = Write(response);
        if (bytes.Length > redis.Options.CacheMaxEntryBytes || ttl <= TimeSpan.Zero)
        {
            return;
        }

        try
        {
            redis.Database.StringSet(_prefix + key, bytes, ttl, When.Always, CommandFlags.FireAndForget);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            // Not shared this time; the instance's own cache still has it.
        }
    }

    /// <summary><c>{"provider","provider_model","cost","response"}</c>: the answer and who produced it at what cost.</summary>
    internal static byte[] Write(ChatCompletionResponse response)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("provider", response.Gateway?.Provider);
            w.WriteString("provider_model", response.Gateway?.ProviderModel ?? response.Model);
            w.WriteString("cost", (response.Gateway?.Cost ?? 0).ToString(CultureInfo.InvariantCulture));
            w.WritePropertyName("response");
            JsonSerializer.Serialize(w, response, GatewayJsonContext.Default.ChatCompletionResponse);
            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    internal static ChatCompletionResponse? Read(byte[] bytes)
    {
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            var root = doc.RootElement;
            var response = root.GetProperty("response").Deserialize(GatewayJsonContext.Default.ChatCompletionResponse);
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
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null; // written by another version, or damaged: a miss, and the next answer overwrites it
        }
    }
}
