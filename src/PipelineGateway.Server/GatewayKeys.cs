using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>
/// Checks gateway keys: the presented key (Authorization: Bearer, x-api-key, or Azure's api-key) is hashed with SHA-256 and
/// compared in constant time with every configured hash, so neither timing nor logs reveal a key.
/// </summary>
internal sealed class GatewayKeys(ServerOptions options, Routing.ModelCatalog catalog)
{
    private readonly (GatewayKeyOptions Key, byte[] Hash)[] _keys = [.. options.Keys.Select(k => (k, Convert.FromHexString(k.Sha256)))];

    public bool Required => _keys.Length > 0;

    /// <summary>
    /// Whether the key may call the model (by name or alias); a key without AllowedModels may call any. A model the
    /// gateway does not have passes here, to be answered 404 like for any key. A name a wildcard group takes is allowed
    /// by the wildcard's name (<c>openai/*</c>) or by the name itself. Makes no group.
    /// </summary>
    public bool MayUse(GatewayKeyOptions? key, string model)
    {
        if (key is not { AllowedModels.Count: > 0 })
        {
            return true;
        }

        if (catalog.TryGetConfigured(model, out var group))
        {
            return key.AllowedModels.Exists(m => catalog.TryGetConfigured(m, out var allowed) && ReferenceEquals(allowed, group));
        }

        if (catalog.Match(model, out _) is not { } wildcard)
        {
            return true;
        }

        return key.AllowedModels.Exists(m => string.Equals(m, wildcard.Name, StringComparison.OrdinalIgnoreCase) || string.Equals(m, model, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The key the request presents, or null when none matches (or none was sent).</summary>
    public GatewayKeyOptions? Authenticate(HttpRequest request)
    {
        var presented = Presented(request);
        if (presented is null)
        {
            return null;
        }

        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(presented));
        GatewayKeyOptions? match = null;
        foreach (var (key, expected) in _keys)
        {
            // Compare with every key, always: the time taken says nothing about which key (or whether any) matched.
            if (CryptographicOperations.FixedTimeEquals(hash, expected))
            {
                match = key;
            }
        }

        return match;
    }

    public static string Hash(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    private static string? Presented(HttpRequest request)
    {
        var auth = request.Headers.Authorization.ToString();
        if (auth.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return auth[7..].Trim();
        }

        var apiKey = request.Headers["x-api-key"].ToString();
        if (apiKey.Length > 0)
        {
            return apiKey;
        }

        // Azure OpenAI's key header: what the Azure OpenAI SDKs send (the Azure routes, GatewayServer).
        var azureKey = request.Headers["api-key"].ToString();
        return azureKey.Length > 0 ? azureKey : null;
    }
}
