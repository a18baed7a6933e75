using System.Globalization;

namespace PipelineGateway.RequestLog;

/// <summary>
/// A point in time as the log's query surfaces take it: relative to now (<c>30m</c>, <c>24h</c>, <c>7d</c>, <c>2w</c>)
/// or absolute (ISO 8601, <c>2026-12-01</c> or <c>2026-12-01T08:00:00Z</c>; no offset means UTC).
/// </summary>
internal static class TimeSpec
{
    public const string Help = "a time like 30m, 24h, 7d or 2w (ago), or an ISO 8601 date or time such as 2026-12-01 or 2026-12-01T08:00:00Z";

    public static bool TryParse(string? text, DateTimeOffset now, out DateTimeOffset value)
    {
        value = default;
        if (string.IsNullOrWhiteSpace(text) || text.Length > 64)
        {
            return false;
        }

        text = text.Trim();
        var unit = char.ToLowerInvariant(text[^1]);
        if (unit is 'm' or 'h' or 'd' or 'w'
            && int.TryParse(text.AsSpan(0, text.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out var n)
            && n <= 100_000)
        {
            var span = unit switch
            {
                'm' => TimeSpan.FromMinutes(n),
                'h' => TimeSpan.FromHours(n),
                'd' => TimeSpan.FromDays(n),
                _ => TimeSpan.FromDays(7.0 * n),
            };
            if (now - DateTimeOffset.MinValue <= span)
            {
                return false;
            }

            value = now - span;
            return true;
        }

        return DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out value);
    }
}
