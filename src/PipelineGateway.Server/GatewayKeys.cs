using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server;

/// <summary>
/// Checks gateway keys: the presented key (Authorization: Bearer, x-api-key, or Azure's api-key) is hashed with SHA-256 and
/// compared in constant time with every configured hash, so neither timing nor logs reveal a key. The keys can be
/// replaced while the gateway runs (<see cref="TryReload"/>: the configuration reloaded — its file changed, or SIGHUP):
/// one table swapped whole, so a request sees the old keys or the new, never a mix.
/// </summary>
internal sealed partial class GatewayKeys(ServerOptions options, Routing.ModelCatalog catalog, ILogger<GatewayKeys> logger)
{
    private volatile KeyTable _table = new(options.Keys);

    /// <summary>The keys as they stand (replaced whole by a reload).</summary>
    public KeyTable Table => _table;

    public bool Required => _table.Entries.Length > 0;

    /// <summary>The configured key with this id, as the keys now stand; null when there is none.</summary>
    public GatewayKeyOptions? Find(string id) => Array.Find(_table.Entries, e => e.Key.Id == id).Key;

    /// <summary>
    /// Replaces the keys with <paramref name="keys"/> (a reloaded configuration's) when they differ and are valid: a
    /// key's id, hash, models or admin right changed, a key added or removed. Refused — the keys left as they were, the
    /// reason logged — when a key is not valid (as at start) or when none would be left: a gateway that required keys
    /// would serve anyone (a half-written file reads as no keys at all). Logs the ids added, removed and changed, never
    /// a hash. True when the keys were replaced.
    /// </summary>
    public bool TryReload(IReadOnlyList<GatewayKeyOptions> keys)
    {
        var current = _table;
        if (KeyTable.Same(current.Keys, keys))
        {
            return false;
        }

        if (ServerOptions.ValidateKeys(keys).ToList() is { Count: > 0 } problems)
        {
            LogReloadRefused(logger, string.Join(" ", problems));
            return false;
        }

        if (keys.Count == 0)
        {
            LogReloadRefused(logger, "it has no keys: the gateway would serve anyone (restart it to serve without keys, on loopback only).");
            return false;
        }

        var before = current.Keys.ToDictionary(static k => k.Id, StringComparer.Ordinal);
        var after = keys.ToDictionary(static k => k.Id, StringComparer.Ordinal);
        _table = new KeyTable(keys);
        var added = Ids(after.Keys.Where(id => !before.ContainsKey(id)));
        var removed = Ids(before.Keys.Where(id => !after.ContainsKey(id)));
        var changed = Ids(after.Where(a => before.TryGetValue(a.Key, out var b) && !KeyTable.Same([b], [a.Value])).Select(static a => a.Key));
        LogReloaded(logger, keys.Count, added, removed, changed);
        return true;

        static string Ids(IEnumerable<string> ids) => ids.Order(StringComparer.Ordinal).ToList() is { Count: > 0 } list ? string.Join(", ", list) : "none";
    }

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
        foreach (var (key, expected) in _table.Entries)
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

    [LoggerMessage(EventId = 150, Level = LogLevel.Information, Message = "Gateway keys reloaded: {Count} keys (added: {Added}; removed: {Removed}; changed: {Changed}).")]
    private static partial void LogReloaded(ILogger logger, int count, string added, string removed, string changed);

    [LoggerMessage(EventId = 151, Level = LogLevel.Warning, Message = "Gateway keys not reloaded, the running keys kept: {Reason}")]
    private static partial void LogReloadRefused(ILogger logger, string reason);
}

/// <summary>One set of keys: the configured entries with their hashes as bytes. Replaced whole, never changed.</summary>
internal sealed class KeyTable
{
    public KeyTable(IReadOnlyList<GatewayKeyOptions> keys)
    {
        Keys = [.. keys.Select(static k => new GatewayKeyOptions { Id = k.Id, Sha256 = k.Sha256, AllowedModels = [.. k.AllowedModels], Admin = k.Admin })];
        Entries = [.. Keys.Select(static k => (k, Convert.FromHexString(k.Sha256)))];
    }

    /// <summary>The keys (copies: a reload's configuration objects are not shared).</summary>
    public IReadOnlyList<GatewayKeyOptions> Keys { get; }

    public (GatewayKeyOptions Key, byte[] Hash)[] Entries { get; }

    /// <summary>Whether two key lists say the same (ids, hashes whatever their case, models, admin right), in order.</summary>
    public static bool Same(IReadOnlyList<GatewayKeyOptions> a, IReadOnlyList<GatewayKeyOptions> b) =>
        a.Count == b.Count && a.Zip(b).All(static p => p.First.Id == p.Second.Id && string.Equals(p.First.Sha256, p.Second.Sha256, StringComparison.OrdinalIgnoreCase)
            && p.First.Admin == p.Second.Admin && p.First.AllowedModels.SequenceEqual(p.Second.AllowedModels, StringComparer.Ordinal));
}
