using System.Globalization;
using System.Reflection;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Metrics;

namespace PipelineGateway.Server;

/// <summary>
/// <c>/dashboard</c>: one page (embedded in this assembly, no file fetched from anywhere) that draws itself from
/// <c>/dashboard/events</c>, a server-sent event every second carrying the metrics snapshot (the same JSON as
/// <c>/v1/gateway/metrics</c>), the budgets' spend per key and user (the largest accounts) and the most recent failures.
/// </summary>
internal static class DashboardEndpoints
{
    /// <summary>Budget accounts an event lists at most, the largest first.</summary>
    internal const int MaxBudgetRows = 50;

    private static readonly byte[] Page = Load();

    private static byte[] Load()
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("dashboard.html")
            ?? throw new InvalidOperationException("The dashboard page is missing from this build.");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    public static async Task PageAsync(HttpContext ctx)
    {
        ctx.Response.ContentType = "text/html; charset=utf-8";
        ctx.Response.Headers.CacheControl = "no-store";
        // Nothing leaves this origin: the page's script and style are inline, its data comes from /dashboard/events.
        ctx.Response.Headers.ContentSecurityPolicy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";
        await ctx.Response.Body.WriteAsync(Page, ctx.RequestAborted);
    }

    public static async Task EventsAsync(HttpContext ctx, IGatewayMetrics metrics, GatewayMetrics own, Cost.BudgetTracker budgets, TimeProvider time)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["x-accel-buffering"] = "no";
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1), time);
        try
        {
            do
            {
                await using (var buffer = new MemoryStream())
                {
                    await using (var w = new Utf8JsonWriter(buffer))
                    {
                        w.WriteStartObject();
                        w.WriteString("time", time.GetUtcNow().UtcDateTime.ToString("O", CultureInfo.InvariantCulture));
                        w.WritePropertyName("metrics");
                        JsonSerializer.Serialize(w, metrics.GetSnapshot(), GatewayJsonContext.Default.GatewayMetricsSnapshot);
                        w.WriteStartArray("budgets");
                        // The largest accounts only: a per-user budget keeps an account for every user a caller names.
                        foreach (var (name, (spent, reserved)) in budgets.Balances().OrderByDescending(static b => b.Value.Spent + b.Value.Reserved).ThenBy(static b => b.Key, StringComparer.Ordinal).Take(MaxBudgetRows))
                        {
                            w.WriteStartObject();
                            w.WriteString("budget", Providers.SecretRedactor.RedactAndTrim(name, 300)); // a user's name is the caller's text
                            w.WriteNumber("spent_usd", spent);
                            w.WriteNumber("reserved_usd", reserved);
                            w.WriteEndObject();
                        }

                        w.WriteEndArray();
                        w.WriteStartArray("failures");
                        foreach (var f in own.RecentFailures())
                        {
                            w.WriteStartObject();
                            w.WriteString("time", f.Time.UtcDateTime.ToString("O", CultureInfo.InvariantCulture));
                            w.WriteString("request_id", f.RequestId);
                            w.WriteString("model", f.Model);
                            w.WriteNumber("status", f.Status);
                            w.WriteString("code", f.Code);
                            w.WriteString("message", f.Message);
                            w.WriteEndObject();
                        }

                        w.WriteEndArray();
                        w.WriteEndObject();
                    }

                    await SseWriter.WriteDataAsync(ctx.Response, buffer.GetBuffer().AsSpan(0, (int)buffer.Length), ctx.RequestAborted);
                }
            }
            while (await timer.WaitForNextTickAsync(ctx.RequestAborted));
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // The browser went away.
        }
    }
}
