using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// A provider that can say which models its upstream serves (<c>GET {base}/models</c>, OpenAI's and Anthropic's shape):
/// what a wildcard group with <c>ListUpstreamModels</c> lists on <c>/v1/models</c>. Not on the request path.
/// </summary>
internal interface IUpstreamModelLister
{
    /// <summary>False where the upstream has no such list (Azure OpenAI's deployments are not its models).</summary>
    bool CanListModels { get; }

    /// <summary>The upstream's model ids; failures are <see cref="ProviderException"/>s.</summary>
    Task<IReadOnlyList<string>> ListModelsAsync(CancellationToken cancellationToken);
}

/// <summary>Reads an upstream's model list: <c>{"data":[{"id":…},…]}</c>, with Anthropic's <c>has_more</c> and <c>last_id</c>.</summary>
internal static class UpstreamModelIds
{
    /// <summary>The most ids taken from one upstream (a list is shown to callers whole).</summary>
    public const int MaxIds = 10_000;

    /// <summary>The longest id taken: the upstream's bytes are hostile, and a model id is far shorter.</summary>
    public const int MaxIdLength = 256;

    /// <summary>
    /// The ids (printable, of a sane length, holding no secret nor key-shaped token; others skipped), whether another
    /// page follows, and the last id.
    /// </summary>
    public static (List<string> Ids, bool HasMore, string? LastId) Read(ReadOnlySpan<byte> body, int room = MaxIds)
    {
        var ids = new List<string>();
        try
        {
            using var doc = JsonDocument.Parse(body.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new ProviderException(AttemptOutcome.RetryableError, "The upstream's model list is not a JSON object.");
            }

            if (root.TryGetProperty("data"u8, out var data) && data.ValueKind == JsonValueKind.Array)
            {
                foreach (var model in data.EnumerateArray())
                {
                    if (ids.Count >= room)
                    {
                        break;
                    }

                    if (model.ValueKind == JsonValueKind.Object && model.TryGetProperty("id"u8, out var id) && id.ValueKind == JsonValueKind.String
                        && id.GetString() is { Length: > 0 and <= MaxIdLength } text && !text.Any(static c => char.IsControl(c) || char.IsWhiteSpace(c))
                        && SecretRedactor.Redact(text) == text) // an upstream echoing a key (ours) as a "model" shows it to no one
                    {
                        ids.Add(text);
                    }
                }
            }

            var more = root.TryGetProperty("has_more"u8, out var hasMore) && hasMore.ValueKind == JsonValueKind.True;
            var last = root.TryGetProperty("last_id"u8, out var lastId) && lastId.ValueKind == JsonValueKind.String ? lastId.GetString() : null;
            return (ids, more, last);
        }
        catch (JsonException)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, "The upstream's model list is not JSON.");
        }
    }
}
