using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(OpenAIErrorBody))]
internal sealed partial class ServerJsonContext : JsonSerializerContext;

/// <summary>Maps every gateway failure to a status code and an OpenAI error body; never a 500 for a client's mistake.</summary>
internal static class OpenAIErrors
{
    public static (int Status, OpenAIError Error, TimeSpan? RetryAfter) Map(Exception error) => OpenAIErrorMapping.Map(error);

    public static async Task WriteAsync(HttpContext ctx, int status, OpenAIError error, TimeSpan? retryAfter = null)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        ctx.Response.StatusCode = status;
        RouteErrors.EnsureRequestId(ctx);
        WriteRetryAfter(ctx.Response, retryAfter);

        await JsonBody.WriteAsync(ctx.Response, new OpenAIErrorBody { Error = error }, ServerJsonContext.Default.OpenAIErrorBody, CancellationToken.None);
    }

    /// <summary>
    /// <c>Retry-After</c> in whole seconds (at least 1, what HTTP allows) and <c>retry-after-ms</c> to the millisecond,
    /// which the OpenAI SDKs read first: clients told to come back in 0.3 s or 1.7 s need not all come back on the second.
    /// </summary>
    public static void WriteRetryAfter(HttpResponse response, TimeSpan? retryAfter)
    {
        if (retryAfter is not { } ra || response.HasStarted)
        {
            return;
        }

        response.Headers.RetryAfter = Math.Max(1, Math.Ceiling(ra.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
        response.Headers["retry-after-ms"] = Math.Max(1, Math.Ceiling(ra.TotalMilliseconds)).ToString(CultureInfo.InvariantCulture);
    }

    public static Task WriteAsync(HttpContext ctx, Exception error)
    {
        var (status, body, retryAfter) = Map(error);
        WriteShouldRetry(ctx.Response, error);
        return WriteAsync(ctx, status, body, retryAfter);
    }

    /// <summary><c>x-should-retry: false</c> when a client's retry cannot succeed now (<see cref="OpenAIErrorMapping.RetryCannotHelp"/>).</summary>
    public static void WriteShouldRetry(HttpResponse response, Exception error)
    {
        if (!response.HasStarted && OpenAIErrorMapping.RetryCannotHelp(error))
        {
            response.Headers["x-should-retry"] = "false";
        }
    }
}
