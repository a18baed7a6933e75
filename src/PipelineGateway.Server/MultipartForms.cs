using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server;

/// <summary>
/// Reads a route's multipart form (speech to text, image edits, batch files) within the route's own bound, answering
/// every way a form can be wrong in the route's shape: not a form (415), past the bound (413, with or without a length
/// announced), cut before its closing boundary or not a form at all (400). Null once the error is written.
/// </summary>
internal static class MultipartForms
{
    public static async Task<IFormCollection?> ReadAsync(HttpContext ctx, long maxBodyBytes, int maxFields, int maxValueLength, string expected, ServerOptions options, ILogger logger)
    {
        var aborted = ctx.RequestAborted;
        if (ctx.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
        {
            size.MaxRequestBodySize = maxBodyBytes;
        }

        try
        {
            if (!ctx.Request.HasFormContentType)
            {
                await RouteErrors.WriteAsync(ctx, 415, "invalid_request_error", "unsupported_media_type", $"The request body must be a multipart form (Content-Type: multipart/form-data) with {expected}.");
                return null;
            }

            return await ctx.Request.ReadFormAsync(new FormOptions
            {
                MultipartBodyLengthLimit = long.MaxValue, // the body's bound is Kestrel's (above): a 413
                ValueCountLimit = maxFields,
                ValueLengthLimit = maxValueLength,
                MultipartHeadersCountLimit = 16,
            }, aborted);
        }
        catch (BadHttpRequestException ex)
        {
            // Kestrel's refusal (past the bound with no length announced, a broken chunk): an IOException too, so first.
            await JsonBody.WriteBodyFailureAsync(ctx, ex, options, logger);
        }
        catch (IOException ex) when (!aborted.IsCancellationRequested)
        {
            // The form ended before its closing boundary (a truncated body).
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not a whole multipart form: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
        }
        catch (InvalidDataException ex)
        {
            // A form that is not one (no boundary where it says, too many fields, a field too long).
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not a valid multipart form: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
        }

        return null;
    }
}
