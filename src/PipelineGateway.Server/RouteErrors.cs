using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server;

/// <summary>The error shape a route answers in: OpenAI's on the OpenAI routes, Anthropic's on <c>/v1/messages</c>.</summary>
internal enum ErrorShape
{
    OpenAI,
    Anthropic,
}

/// <summary>Writes any failure in the shape of the route it happened on; one place for status, type and Retry-After.</summary>
internal static class RouteErrors
{
    public static ErrorShape ShapeOf(PathString path) =>
        path.StartsWithSegments("/v1/messages", StringComparison.OrdinalIgnoreCase) ? ErrorShape.Anthropic : ErrorShape.OpenAI;

    /// <summary>A gateway failure, mapped once (<see cref="OpenAIErrorMapping"/>), written in the route's shape.</summary>
    public static Task WriteAsync(HttpContext ctx, Exception error)
    {
        var (status, body, retryAfter) = OpenAIErrors.Map(error);
        OpenAIErrors.WriteShouldRetry(ctx.Response, error);
        return ShapeOf(ctx.Request.Path) == ErrorShape.Anthropic
            ? WriteAnthropicAsync(ctx, status, AnthropicType(status, error), body.Message, retryAfter)
            : OpenAIErrors.WriteAsync(ctx, status, body, retryAfter);
    }

    /// <summary>The 403 for a model the caller's key may not use (<c>Gateway:Server:Keys</c>' model lists).</summary>
    public static Task ModelNotAllowedAsync(HttpContext ctx, string? model) =>
        WriteAsync(ctx, 403, "permission_error", "model_not_allowed", $"This key may not use the model '{Providers.ProviderException.Quoted(model)}'.", "model");

    /// <summary>A front-door refusal (status, OpenAI type and code, message) in the route's shape.</summary>
    public static Task WriteAsync(HttpContext ctx, int status, string type, string code, string message, string? param = null, TimeSpan? retryAfter = null) =>
        ShapeOf(ctx.Request.Path) == ErrorShape.Anthropic
            ? WriteAnthropicAsync(ctx, status, AnthropicType(status, null), message, retryAfter)
            : OpenAIErrors.WriteAsync(ctx, status, new OpenAIError { Message = message, Type = type, Code = code, Param = param }, retryAfter);

    /// <summary>
    /// A refusal before the request reached the pipeline (a key, a body, a header) gets a request id too, as every answer
    /// of OpenAI's and Anthropic's APIs has one (<c>x-request-id</c>, <c>request-id</c> on <c>/v1/messages</c>; and
    /// <c>x-gateway-request-id</c>): the id an SDK reports with the error, to find it in the gateway's logs.
    /// </summary>
    internal static void EnsureRequestId(HttpContext ctx)
    {
        var headers = ctx.Response.Headers;
        if (ctx.Response.HasStarted || headers.ContainsKey("x-gateway-request-id"))
        {
            return;
        }

        var id = Pipeline.RequestIds.Format(Pipeline.RequestIds.Next());
        headers[ShapeOf(ctx.Request.Path) == ErrorShape.Anthropic ? "request-id" : "x-request-id"] = id;
        headers["x-gateway-request-id"] = id;
    }

    /// <summary>
    /// Anthropic's error type for a status (or the upstream's own Anthropic type, when it gave one). A 404 is always
    /// <c>not_found_error</c>: OpenAI says a model it lacks with <c>invalid_request_error</c>, a name Anthropic's types
    /// share, but an Anthropic SDK expects its not-found type with a 404 (a wildcard's unknown model).
    /// </summary>
    public static string AnthropicType(int status, Exception? error) =>
        status != 404 && error is UpstreamRejectedException { ErrorType: { } upstream } && AnthropicTypes.Contains(upstream)
            ? upstream
            : status switch
            {
                400 or 405 or 408 or 415 or 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 or 529 => "overloaded_error",
                504 => "timeout_error",
                _ => "api_error",
            };

    public static async Task WriteAnthropicAsync(HttpContext ctx, int status, string type, string message, TimeSpan? retryAfter = null)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        ctx.Response.StatusCode = status;
        EnsureRequestId(ctx);
        OpenAIErrors.WriteRetryAfter(ctx.Response, retryAfter);
        await JsonBody.WriteAsync(ctx.Response, new AnthropicErrorBody { Error = new AnthropicError { Type = type, Message = message } }, AnthropicJsonContext.Default.AnthropicErrorBody, CancellationToken.None);
    }

    private static readonly HashSet<string> AnthropicTypes =
        ["invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error"];
}
