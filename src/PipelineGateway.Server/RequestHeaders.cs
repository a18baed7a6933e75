using System.Globalization;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>
/// The per-request <c>x-gateway-*</c> headers, parsed once for every route. Each has a stated range; a value outside
/// it (or an <c>x-gateway-*</c> header the gateway does not know) is a 400 naming the header and what is allowed —
/// never a 500, never silently ignored.
/// </summary>
internal sealed class RequestHeaders
{
    /// <summary>The longest <c>x-gateway-timeout-ms</c> accepted: one hour.</summary>
    public const long MaxTimeoutMs = 3_600_000;

    /// <summary>The longest <c>x-gateway-cache-ttl</c> accepted: thirty days, in seconds.</summary>
    public const long MaxCacheTtlSeconds = 2_592_000;

    private static readonly HashSet<string> Known = new(StringComparer.OrdinalIgnoreCase)
    {
        "x-gateway-cache", "x-gateway-cache-ttl", "x-gateway-timeout-ms", "x-gateway-priority",
    };

    public bool NoCache { get; private init; }

    public bool NoStore { get; private init; }

    public TimeSpan? CacheTtl { get; private init; }

    public TimeSpan? Timeout { get; private init; }

    public RequestPriority Priority { get; private init; }

    /// <summary>Reads the headers; throws <see cref="InvalidRequestException"/> naming the header when one is wrong.</summary>
    public static RequestHeaders Parse(IHeaderDictionary headers)
    {
        foreach (var (name, _) in headers)
        {
            if (name.StartsWith("x-gateway-", StringComparison.OrdinalIgnoreCase) && !Known.Contains(name))
            {
                throw new InvalidRequestException(name, $"The header '{name}' is not one the gateway knows; its request headers are {string.Join(", ", Known.Order())}.");
            }
        }

        foreach (var name in Known)
        {
            if (headers.TryGetValue(name, out var sent) && sent.ToString().Trim().Length == 0)
            {
                throw new InvalidRequestException(name, $"The header '{name}' is empty; leave it out or give it a value (docs/server.md, request headers).");
            }
        }

        var cache = headers["x-gateway-cache"].ToString().Trim().ToLowerInvariant();
        if (cache is not ("" or "no-cache" or "no-store"))
        {
            throw new InvalidRequestException("x-gateway-cache", "The header 'x-gateway-cache' must be 'no-cache' or 'no-store'.");
        }

        var priority = headers["x-gateway-priority"].ToString().Trim().ToLowerInvariant() switch
        {
            "" or "interactive" => RequestPriority.Interactive,
            "batch" => RequestPriority.Batch,
            _ => throw new InvalidRequestException("x-gateway-priority", "The header 'x-gateway-priority' must be 'interactive' or 'batch'."),
        };

        return new RequestHeaders
        {
            NoCache = cache == "no-cache",
            NoStore = cache == "no-store",
            Priority = priority,
            CacheTtl = Whole(headers, "x-gateway-cache-ttl", MaxCacheTtlSeconds, "seconds") is { } ttl ? TimeSpan.FromSeconds(ttl) : null,
            Timeout = Whole(headers, "x-gateway-timeout-ms", MaxTimeoutMs, "milliseconds") is { } ms ? TimeSpan.FromMilliseconds(ms) : null,
        };
    }

    /// <summary>The request's gateway options: these headers, and the caller's key id scoping limits, budgets and the cache.</summary>
    public GatewayRequestOptions ToOptions(GatewayKeyOptions? key) => new()
    {
        NoCache = NoCache,
        NoStore = NoStore,
        CacheTtl = CacheTtl,
        Timeout = Timeout,
        Priority = Priority,
        RateLimitKey = key?.Id,
        CacheNamespace = key?.Id,
    };

    /// <summary>A whole number from 1 to <paramref name="max"/> (digits only: no sign, fraction, exponent, NaN or infinity).</summary>
    private static long? Whole(IHeaderDictionary headers, string name, long max, string unit)
    {
        var raw = headers[name].ToString().Trim();
        if (raw.Length == 0)
        {
            return null;
        }

        if (raw.Length > 19 || !raw.All(char.IsAsciiDigit) || !long.TryParse(raw, NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value < 1 || value > max)
        {
            throw new InvalidRequestException(name, $"The header '{name}' must be a whole number of {unit} from 1 to {max.ToString(CultureInfo.InvariantCulture)}; got '{Shorten(raw)}'.");
        }

        return value;
    }

    private static string Shorten(string raw) => raw.Length <= 32 ? raw : raw[..32] + "…";
}
