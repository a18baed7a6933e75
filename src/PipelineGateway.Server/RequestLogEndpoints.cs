using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.RequestLog;

namespace PipelineGateway.Server;

/// <summary>
/// The request log's query surface (admin keys only when keys are configured, like all of /v1/gateway/*):
/// <c>GET /v1/gateway/logs</c> (filters, newest first, paged by cursor) and <c>GET /v1/gateway/spend</c> (grouped
/// totals). A bad parameter is a 400 naming it; with no log, 404 <c>request_log_disabled</c>.
/// </summary>
internal static class RequestLogEndpoints
{
    public static async Task LogsAsync(HttpContext ctx, RequestLogWriter log, TimeProvider time)
    {
        if (log.Store is not { } store)
        {
            await Disabled(ctx);
            return;
        }

        var q = ctx.Request.Query;
        var now = time.GetUtcNow();
        if (!TryTime(q, "since", now, out var since, out var bad) || !TryTime(q, "until", now, out var until, out bad)
            || !TryInt(q, "status", 100, 599, out var status, out bad) || !TryInt(q, "limit", 1, 1000, out var limit, out bad)
            || !TryLong(q, "cursor", out var cursor, out bad))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_parameter", bad!, bad is null ? null : Param(bad));
            return;
        }

        var page = await store.QueryAsync(new RequestLogQuery
        {
            KeyId = Text(q, "key"),
            Model = Text(q, "model"),
            User = Text(q, "user"),
            Status = status,
            Since = since,
            Until = until,
            Before = cursor,
            Limit = limit ?? 100,
        }, ctx.RequestAborted);

        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body);
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var row in page.Rows)
        {
            Write(w, row);
        }

        w.WriteEndArray();
        if (page.NextCursor is { } next)
        {
            w.WriteNumber("next_cursor", next);
        }
        else
        {
            w.WriteNull("next_cursor");
        }

        w.WriteEndObject();
    }

    public static async Task SpendAsync(HttpContext ctx, RequestLogWriter log, TimeProvider time)
    {
        if (log.Store is not { } store)
        {
            await Disabled(ctx);
            return;
        }

        var q = ctx.Request.Query;
        var groupText = Text(q, "group_by") ?? "key";
        if (!Enum.TryParse<SpendGrouping>(groupText, ignoreCase: true, out var groupBy) || !Enum.IsDefined(groupBy) || int.TryParse(groupText, out _))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_parameter", "group_by must be one of key, model, deployment, day, user.", "group_by");
            return;
        }

        var now = time.GetUtcNow();
        if (!TryTime(q, "since", now, out var since, out var bad))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_parameter", bad!, "since");
            return;
        }

        var from = since ?? now.AddDays(-30);
        var rows = await store.SpendAsync(groupBy, from, ctx.RequestAborted);
        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body);
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteString("group_by", groupBy.ToString().ToLowerInvariant());
        w.WriteString("since", from.UtcDateTime.ToString("O", CultureInfo.InvariantCulture));
        w.WriteStartArray("data");
        foreach (var r in rows)
        {
            w.WriteStartObject();
            w.WriteString("group", r.Group);
            w.WriteNumber("requests", r.Requests);
            w.WriteNumber("failed", r.Failed);
            w.WriteNumber("prompt_tokens", r.PromptTokens);
            w.WriteNumber("completion_tokens", r.CompletionTokens);
            w.WriteNumber("cost_usd", r.Cost);
            w.WriteNumber("cost_saved_usd", r.CostSaved);
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteNumber("total_cost_usd", rows.Sum(r => r.Cost));
        w.WriteEndObject();
    }

    private static void Write(Utf8JsonWriter w, LoggedRequest row)
    {
        var r = row.Request;
        w.WriteStartObject();
        w.WriteNumber("id", row.Id);
        w.WriteString("time", r.Timestamp.UtcDateTime.ToString("O", CultureInfo.InvariantCulture));
        w.WriteString("request_id", r.RequestId);
        w.WriteString("key_id", r.KeyId);
        w.WriteString("model", r.Model);
        w.WriteString("provider", r.Provider);
        w.WriteString("provider_model", r.ProviderModel);
        w.WriteNumber("status", r.Status);
        w.WriteString("error_code", r.ErrorCode);
        w.WriteString("error_type", r.ErrorType);
        w.WriteNumber("prompt_tokens", r.PromptTokens);
        w.WriteNumber("completion_tokens", r.CompletionTokens);
        w.WriteBoolean("usage_estimated", r.UsageEstimated);
        w.WriteString("user", r.User);
        w.WriteNumber("cost_usd", r.Cost);
        w.WriteNumber("cost_saved_usd", r.CostSaved);
        w.WriteBoolean("cached", r.Cached);
        w.WriteBoolean("coalesced", r.Coalesced);
        w.WriteBoolean("stream", r.Stream);
        w.WriteNumber("latency_ms", Math.Round(r.LatencyMs, 3));
        if (r.TimeToFirstTokenMs is { } ttft)
        {
            w.WriteNumber("ttft_ms", Math.Round(ttft, 3));
        }
        else
        {
            w.WriteNull("ttft_ms");
        }

        w.WriteString("priority", r.Priority);
        w.WritePropertyName("attempts");
        try
        {
            using var doc = JsonDocument.Parse(r.Attempts);
            doc.RootElement.WriteTo(w);
        }
        catch (JsonException)
        {
            w.WriteStringValue(r.Attempts); // a row edited by hand: shown as it is
        }

        if (r.Prompt is not null)
        {
            w.WriteString("prompt", r.Prompt);
        }

        if (r.Answer is not null)
        {
            w.WriteString("answer", r.Answer);
        }

        w.WriteEndObject();
    }

    private static Task Disabled(HttpContext ctx) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "request_log_disabled", "The request log is not enabled on this gateway (pgw serve keeps it unless started with --no-log or Gateway:RequestLog:Enabled = false).", null);

    internal static string? Text(IQueryCollection q, string name) => q.TryGetValue(name, out var v) && v.Count > 0 && !string.IsNullOrEmpty(v[0]) ? v[0] : null;

    private static string Param(string message) => message[..message.IndexOf(' ', StringComparison.Ordinal)];

    private static bool TryTime(IQueryCollection q, string name, DateTimeOffset now, out DateTimeOffset? value, out string? error)
    {
        value = null;
        error = null;
        if (Text(q, name) is not { } text)
        {
            return true;
        }

        if (TimeSpec.TryParse(text, now, out var parsed))
        {
            value = parsed;
            return true;
        }

        error = $"{name} must be {TimeSpec.Help}.";
        return false;
    }

    private static bool TryInt(IQueryCollection q, string name, int min, int max, out int? value, out string? error)
    {
        value = null;
        error = null;
        if (Text(q, name) is not { } text)
        {
            return true;
        }

        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max)
        {
            value = n;
            return true;
        }

        error = $"{name} must be a whole number from {min} to {max}.";
        return false;
    }

    private static bool TryLong(IQueryCollection q, string name, out long? value, out string? error)
    {
        value = null;
        error = null;
        if (Text(q, name) is not { } text)
        {
            return true;
        }

        if (long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0)
        {
            value = n;
            return true;
        }

        error = $"{name} must be a positive whole number (the next_cursor of the previous page).";
        return false;
    }
}
