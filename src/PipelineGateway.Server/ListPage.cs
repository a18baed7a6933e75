using System.Globalization;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>OpenAI's list parameters: <c>limit</c>, <c>order</c> (desc by default: the newest first), <c>after</c>.</summary>
internal readonly record struct ListPage(int Limit, string After, bool Ascending)
{
    /// <summary>The parameters of the request, <c>limit</c> 1 to <paramref name="max"/>; null once a bad one is answered (400 naming it).</summary>
    public static async Task<ListPage?> ReadAsync(HttpContext ctx, int max, int defaultLimit)
    {
        var query = ctx.Request.Query;
        var limit = defaultLimit;
        if (query["limit"].ToString() is { Length: > 0 } l && (!int.TryParse(l, NumberStyles.None, CultureInfo.InvariantCulture, out limit) || limit < 1 || limit > max))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", $"'limit' must be a whole number from 1 to {max}.", "limit");
            return null;
        }

        var order = query["order"].ToString();
        if (order is not ("" or "asc" or "desc"))
        {
            await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "'order' must be \"asc\" or \"desc\".", "order");
            return null;
        }

        return new ListPage(limit, query["after"].ToString(), order == "asc");
    }
}
