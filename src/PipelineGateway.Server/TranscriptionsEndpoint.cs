using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Server;

/// <summary>
/// <c>POST /v1/audio/transcriptions</c> and <c>/v1/audio/translations</c> (and Azure's deployment routes): OpenAI's
/// speech to text, a multipart form in (the audio as its <c>file</c>), the transcript out as the upstream wrote it — JSON
/// or text, as asked — through the same pipeline as every operation (<see cref="Transcriptions"/>): keys, limits,
/// budgets, routing with failover and health, cost (by the token or the minute of audio), metrics, the request log.
/// </summary>
internal sealed class TranscriptionsEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, ILogger<TranscriptionsEndpoint> logger)
{
    /// <summary>The form's text fields: enough for every field the API has, never a caller's choice of how many.</summary>
    private const int MaxFields = 64;

    public Task TranscriptionsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Transcription, deployment: null);

    public Task TranslationsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Translation, deployment: null);

    /// <summary>Azure OpenAI's routes (<c>/openai/deployments/{deployment}/audio/…</c>): the deployment is the model.</summary>
    public Task AzureTranscriptionsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Transcription, ctx.Request.RouteValues["deployment"] as string);

    public Task AzureTranslationsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Translation, ctx.Request.RouteValues["deployment"] as string);

    private async Task HandleAsync(HttpContext ctx, OperationKind kind, string? deployment)
    {
        // Key, content type (a multipart form), size and x-gateway-* headers were checked by the front door.
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        if (ctx.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
        {
            size.MaxRequestBodySize = options.MaxUploadBytes;
        }
        ChatCompletionRequest request;
        try
        {
            if (!ctx.Request.HasFormContentType)
            {
                await RouteErrors.WriteAsync(ctx, 415, "invalid_request_error", "unsupported_media_type", "The request body must be a multipart form (Content-Type: multipart/form-data) with the audio as its 'file'.");
                return;
            }

            var form = await ctx.Request.ReadFormAsync(new FormOptions
            {
                MultipartBodyLengthLimit = long.MaxValue, // the body's bound is Kestrel's (MaxUploadBytes, above): a 413
                ValueCountLimit = MaxFields,
                ValueLengthLimit = 1024 * 1024,
                MultipartHeadersCountLimit = 16,
            }, aborted);
            if (form.Files.Count > 1 || (form.Files.Count == 1 && form.Files[0].Name != "file"))
            {
                await RouteErrors.WriteAsync(ctx, new InvalidRequestException("file", "The form takes one file, named 'file' (the audio)."));
                return;
            }

            Upload? upload = null;
            if (form.Files.GetFile("file") is { } file)
            {
                var bytes = new byte[file.Length];
                await using (var stream = file.OpenReadStream())
                {
                    await stream.ReadExactlyAsync(bytes, aborted);
                }

                upload = new Upload(bytes, Upload.SafeName(file.FileName), file.ContentType);
            }

            var fields = form.SelectMany(static f => f.Value.Select(v => new KeyValuePair<string, string>(f.Key, v ?? string.Empty))).ToList();
            request = Transcriptions.ToRequest(kind, fields, upload, deployment);
        }
        catch (IOException ex) when (!aborted.IsCancellationRequested)
        {
            // The form ended before its closing boundary (a truncated body).
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not a whole multipart form: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
            return;
        }
        catch (InvalidDataException ex)
        {
            // A form that is not one (no boundary where it says, too many fields, a field too long).
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not a valid multipart form: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
            return;
        }
        catch (BadHttpRequestException ex)
        {
            await JsonBody.WriteBodyFailureAsync(ctx, ex, options, logger);
            return;
        }
        catch (InvalidRequestException ex)
        {
            await RouteErrors.WriteAsync(ctx, ex);
            return;
        }

        if (await OperationsEndpoint.AdmitAsync(ctx, caller, keys, request))
        {
            await OperationsEndpoint.AnswerAsync(ctx, queue, headers, request, aborted);
        }
    }
}
