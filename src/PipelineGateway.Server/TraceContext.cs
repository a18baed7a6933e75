using System.Diagnostics;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>
/// The caller's W3C trace context for the gateway's spans. ASP.NET Core makes the request's activity from the
/// <c>traceparent</c> header only when someone listens to its own source; when nobody does but the gateway's spans are
/// listened to, this middleware makes that parent itself (a malformed header is ignored, as the W3C spec says), so the
/// request's span, its attempts' spans and the upstream's <c>traceparent</c> stay in the caller's trace.
/// </summary>
internal sealed class TraceContext(RequestDelegate next)
{
    /// <remarks>Not an async method on the common path (no parent to make): no state machine per request.</remarks>
    public Task InvokeAsync(HttpContext ctx)
    {
        if (Activity.Current is not null || !Tracing.GatewayTracing.Source.HasListeners()
            || ctx.Request.Headers.TraceParent.ToString() is not { Length: > 0 } traceparent
            || !ActivityContext.TryParse(traceparent, ctx.Request.Headers.TraceState.ToString(), isRemote: true, out var parent))
        {
            return next(ctx);
        }

        return WithParentAsync(ctx, parent);
    }

    private async Task WithParentAsync(HttpContext ctx, ActivityContext parent)
    {
        using var inbound = new Activity("pgw.inbound");
        inbound.SetParentId(parent.TraceId, parent.SpanId, parent.TraceFlags);
        inbound.TraceStateString = parent.TraceState;
        inbound.Start();
        await next(ctx);
    }
}
