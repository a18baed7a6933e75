using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Cost;

namespace PipelineGateway.Server;

/// <summary>
/// <c>GET /v1/gateway/budgets?key=&amp;user=</c> (admin keys only when keys are configured, like all of /v1/gateway/*):
/// where a request by that key (<c>Keys[].Id</c>) naming that end user stands in every budget it would be charged in —
/// spent and reserved this period, what is left, when the period ends (LiteLLM's <c>/customer/info</c>). The fleet's
/// accounts when budgets are shared in Redis (503 <c>budget_store_unavailable</c> when it cannot be reached), else this
/// instance's. Read only: asking makes no account.
/// </summary>
internal static class BudgetsEndpoint
{
    public static async Task GetAsync(HttpContext ctx, BudgetTracker budgets)
    {
        var q = ctx.Request.Query;
        var standing = await budgets.StandingAsync(RequestLogEndpoints.Text(q, "key") ?? string.Empty, RequestLogEndpoints.Text(q, "user"), ctx.RequestAborted);
        if (standing is null)
        {
            await RouteErrors.WriteAsync(ctx, 503, "api_error", "budget_store_unavailable", "The shared budget store (Redis) cannot be reached, so the fleet's spend cannot be read; retry shortly.");
            return;
        }

        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body);
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var s in standing)
        {
            w.WriteStartObject();
            w.WriteString("budget", s.Budget.DisplayName);
            w.WriteString("scope", s.Budget.Scope.ToString().ToLowerInvariant());
            w.WriteString("period", s.Budget.Period.ToString().ToLowerInvariant());
            w.WriteNumber("limit_usd", s.Budget.LimitUsd);
            w.WriteNumber("spent_usd", s.Spent);
            w.WriteNumber("reserved_usd", s.Reserved);
            w.WriteNumber("remaining_usd", s.Remaining);
            w.WriteString("resets_at", s.PeriodEnd.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture));
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteEndObject();
    }
}
