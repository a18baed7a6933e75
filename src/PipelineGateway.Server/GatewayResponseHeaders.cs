using System.Globalization;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Admission;

namespace PipelineGateway.Server;

/// <summary>
/// The gateway's response headers, the same on <c>/v1/chat/completions</c> and <c>/v1/messages</c> (docs/server.md):
/// who answered, from the cache or not, how many attempts, what it cost, and the caller's rate-limit state.
/// </summary>
internal sealed class GatewayResponseHeaders(AdmissionRateLimiter limiter)
{
    public void WriteGatewayHeaders(HttpContext ctx, ChatCompletionRequest request, GatewayResponseInfo? info, bool streaming = false)
    {
        if (info is not null)
        {
            var h = ctx.Response.Headers;
            h["x-gateway-provider"] = info.Provider;
            h["x-gateway-cache"] = info.Cached ? "hit" : "miss";
            h["x-gateway-attempts"] = Math.Max(1, info.Attempts.Count).ToString(CultureInfo.InvariantCulture);
            if (!streaming || !info.Billed)
            {
                // A live stream's cost is known only at its end: it travels in the final usage chunk (usage.cost).
                h["x-gateway-cost-usd"] = CostText(info.Cost);
            }
        }

        WriteRateLimitHeaders(ctx, request);
    }

    /// <summary>
    /// A cost as the header says it: at most ten decimals, rounded half away from zero, no trailing zeros — what the
    /// custom format <c>0.##########</c> writes, without its slow path (<c>Number.NumberToStringFormat</c> was ~0.5% of a
    /// request's CPU in a profile): the standard <c>F10</c> into a stack buffer, its trailing zeros trimmed.
    /// </summary>
    internal static string CostText(decimal cost)
    {
        if (cost == 0)
        {
            return "0"; // a hit, a follower, an unpriced model: no string made
        }

        Span<char> text = stackalloc char[48]; // 29 digits, a sign, a point and ten decimals at most
        if (!cost.TryFormat(text, out var length, "F10", CultureInfo.InvariantCulture))
        {
            return cost.ToString("0.##########", CultureInfo.InvariantCulture);
        }

        var trimmed = text[..length].TrimEnd('0').TrimEnd('.');
        return trimmed is "0" ? "0" : new string(trimmed);
    }

    /// <summary>
    /// x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the tightest rule of each unit; when every deployment
    /// is rate-limited by its provider, nothing is left until the first is free again, whatever the gateway's own rules say.
    /// </summary>
    public void WriteRateLimitHeaders(HttpContext ctx, ChatCompletionRequest request, Exception? error = null)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        if (error is RateLimitedException { Attempts.Count: > 0 } providers)
        {
            ctx.Response.Headers["x-ratelimit-remaining-requests"] = "0";
            ctx.Response.Headers["x-ratelimit-reset-requests"] = Duration(providers.RetryAfter);
            return;
        }

        if (!limiter.IsEnabled)
        {
            return;
        }

        // One status read (it takes the partition's lock) serves both units.
        var statuses = limiter.GetStatus(request);
        WriteTightest(ctx.Response.Headers, statuses, RateLimitUnit.Requests, "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests");
        WriteTightest(ctx.Response.Headers, statuses, RateLimitUnit.Tokens, "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens");
    }

    private static void WriteTightest(IHeaderDictionary headers, IReadOnlyList<RateLimitStatus> statuses, RateLimitUnit unit, string limit, string remaining, string reset)
    {
        RateLimitStatus? tightest = null;
        foreach (var s in statuses)
        {
            if (s.Unit == unit && (tightest is null || s.Remaining < tightest.Value.Remaining))
            {
                tightest = s;
            }
        }

        if (tightest is { } t)
        {
            headers[limit] = t.Limit.ToString(CultureInfo.InvariantCulture);
            headers[remaining] = t.Remaining.ToString(CultureInfo.InvariantCulture);
            headers[reset] = Duration(t.ResetAfter);
        }
    }

    private static string Duration(TimeSpan t) => t.TotalSeconds >= 1
        ? $"{Math.Ceiling(t.TotalSeconds).ToString(CultureInfo.InvariantCulture)}s"
        : $"{Math.Ceiling(t.TotalMilliseconds).ToString(CultureInfo.InvariantCulture)}ms";
}
