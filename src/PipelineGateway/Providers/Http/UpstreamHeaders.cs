using System.Globalization;
using System.Net.Http.Headers;
using System.Text.RegularExpressions;

namespace PipelineGateway.Providers.Http;

/// <summary>The rate-limit state an upstream reported in its last response headers.</summary>
internal sealed record UpstreamRateLimits(
    long? LimitRequests,
    long? RemainingRequests,
    TimeSpan? ResetRequests,
    long? LimitTokens,
    long? RemainingTokens,
    TimeSpan? ResetTokens);

/// <summary>Reads Retry-After and rate-limit headers in the OpenAI and Anthropic dialects.</summary>
internal static partial class UpstreamHeaders
{
    /// <summary><c>retry-after-ms</c> (OpenAI), else <c>retry-after</c> in seconds or as an HTTP date.</summary>
    public static TimeSpan? RetryAfter(HttpResponseHeaders headers, DateTimeOffset now)
    {
        if (First(headers, "retry-after-ms") is { } ms && double.TryParse(ms, NumberStyles.Float, CultureInfo.InvariantCulture, out var millis) && millis >= 0)
        {
            return TimeSpan.FromMilliseconds(millis);
        }

        if (headers.RetryAfter is { } ra)
        {
            if (ra.Delta is { } delta)
            {
                return delta;
            }

            if (ra.Date is { } date)
            {
                var wait = date - now;
                return wait > TimeSpan.Zero ? wait : TimeSpan.Zero;
            }
        }

        // Some upstreams send fractional seconds, which the typed header rejects.
        if (First(headers, "retry-after") is { } raw && double.TryParse(raw, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && seconds >= 0)
        {
            return TimeSpan.FromSeconds(seconds);
        }

        return null;
    }

    /// <summary>OpenAI's <c>x-ratelimit-*</c> or Anthropic's <c>anthropic-ratelimit-*</c> headers, if present.</summary>
    public static UpstreamRateLimits? RateLimits(HttpResponseHeaders headers, DateTimeOffset now)
    {
        if (First(headers, "x-ratelimit-limit-requests") is not null || First(headers, "x-ratelimit-limit-tokens") is not null)
        {
            return new UpstreamRateLimits(
                Long(headers, "x-ratelimit-limit-requests"),
                Long(headers, "x-ratelimit-remaining-requests"),
                Duration(First(headers, "x-ratelimit-reset-requests")),
                Long(headers, "x-ratelimit-limit-tokens"),
                Long(headers, "x-ratelimit-remaining-tokens"),
                Duration(First(headers, "x-ratelimit-reset-tokens")));
        }

        if (First(headers, "anthropic-ratelimit-requests-limit") is not null || First(headers, "anthropic-ratelimit-tokens-limit") is not null)
        {
            return new UpstreamRateLimits(
                Long(headers, "anthropic-ratelimit-requests-limit"),
                Long(headers, "anthropic-ratelimit-requests-remaining"),
                Until(First(headers, "anthropic-ratelimit-requests-reset"), now),
                Long(headers, "anthropic-ratelimit-tokens-limit"),
                Long(headers, "anthropic-ratelimit-tokens-remaining"),
                Until(First(headers, "anthropic-ratelimit-tokens-reset"), now));
        }

        return null;
    }

    /// <summary>Parses OpenAI's reset durations: <c>1s</c>, <c>6m0s</c>, <c>20ms</c>, <c>1h2m3.5s</c>.</summary>
    /// <remarks>A hand-written scan rather than a regex: it runs on every upstream response, allocation-free.</remarks>
    public static TimeSpan? Duration(string? value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return null;
        }

        var s = value.AsSpan();
        var total = TimeSpan.Zero;
        var matched = false;
        var i = 0;
        while (i < s.Length)
        {
            if (!char.IsAsciiDigit(s[i]))
            {
                i++;
                continue;
            }

            var start = i;
            while (i < s.Length && char.IsAsciiDigit(s[i]))
            {
                i++;
            }

            if (i + 1 < s.Length && s[i] == '.' && char.IsAsciiDigit(s[i + 1]))
            {
                i++;
                while (i < s.Length && char.IsAsciiDigit(s[i]))
                {
                    i++;
                }
            }

            var n = double.Parse(s[start..i], NumberStyles.Float, CultureInfo.InvariantCulture);
            if (i + 1 < s.Length && s[i] == 'm' && s[i + 1] == 's')
            {
                total += TimeSpan.FromMilliseconds(n);
                i += 2;
            }
            else if (i < s.Length && s[i] is 'h' or 'm' or 's')
            {
                total += s[i] switch
                {
                    'h' => TimeSpan.FromHours(n),
                    'm' => TimeSpan.FromMinutes(n),
                    _ => TimeSpan.FromSeconds(n),
                };
                i++;
            }
            else
            {
                continue; // a number without a unit counts for nothing
            }

            matched = true;
        }

        return matched ? total : null;
    }

    private static TimeSpan? Until(string? rfc3339, DateTimeOffset now) =>
        DateTimeOffset.TryParse(rfc3339, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at)
            ? (at > now ? at - now : TimeSpan.Zero)
            : null;

    private static long? Long(HttpResponseHeaders headers, string name) =>
        long.TryParse(First(headers, name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : null;

    // NonValidated: the raw header values, without the typed parsing and the enumerator TryGetValues allocates.
    private static string? First(HttpResponseHeaders headers, string name) =>
        headers.NonValidated.TryGetValues(name, out var values) && values.Count > 0 ? FirstOf(values) : null;

    private static string? FirstOf(HeaderStringValues values)
    {
        foreach (var v in values)
        {
            return v;
        }

        return null;
    }
}
