using System.Buffers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Server;

/// <summary>
/// The routes that take a multipart form: <c>POST /v1/audio/transcriptions</c> and <c>/v1/audio/translations</c> (speech
/// to text: the audio as the form's <c>file</c>, the transcript out as the upstream wrote it, JSON or text) and
/// <c>/v1/images/edits</c> (images and a mask in, images out), and Azure's deployment routes — through the same pipeline
/// as every operation (<see cref="Transcriptions"/>, <see cref="Images.EditRequest"/>): keys, limits, budgets, routing
/// with failover and health, cost, metrics, the request log. A transcription asked with <c>stream=true</c> is answered
/// as OpenAI streams one (<see cref="TranscriptEvents"/>).
/// </summary>
internal sealed class TranscriptionsEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ILogger<TranscriptionsEndpoint> logger)
{
    /// <summary>The form's text fields: enough for every field the API has, never a caller's choice of how many.</summary>
    private const int MaxFields = 64;

    public Task TranscriptionsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Transcription, deployment: null);

    public Task TranslationsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Translation, deployment: null);

    /// <summary>Azure OpenAI's routes (<c>/openai/deployments/{deployment}/audio/…</c>): the deployment is the model.</summary>
    public Task AzureTranscriptionsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Transcription, ctx.Request.RouteValues["deployment"] as string);

    public Task AzureTranslationsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.Translation, ctx.Request.RouteValues["deployment"] as string);

    public Task ImageEditsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.ImageEdit, deployment: null);

    public Task AzureImageEditsAsync(HttpContext ctx) => HandleAsync(ctx, OperationKind.ImageEdit, ctx.Request.RouteValues["deployment"] as string);

    private async Task HandleAsync(HttpContext ctx, OperationKind kind, string? deployment)
    {
        // Key, content type (a multipart form), size and x-gateway-* headers were checked by the front door.
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        if (await MultipartForms.ReadAsync(ctx, options.MaxUploadBytes, MaxFields, 1024 * 1024, "its files", options, logger) is not { } form)
        {
            return;
        }

        ChatCompletionRequest request;
        try
        {
            var files = new List<FilePart>(form.Files.Count);
            foreach (var file in form.Files)
            {
                var bytes = new byte[file.Length];
                await using (var stream = file.OpenReadStream())
                {
                    await stream.ReadExactlyAsync(bytes, aborted);
                }

                files.Add(new FilePart(file.Name, new Upload(bytes, Upload.SafeName(file.FileName), file.ContentType)));
            }

            if (kind != OperationKind.ImageEdit && (files.Count > 1 || (files.Count == 1 && files[0].Field != "file")))
            {
                await RouteErrors.WriteAsync(ctx, new InvalidRequestException("file", "The form takes one file, named 'file' (the audio)."));
                return;
            }

            var fields = form.SelectMany(static f => f.Value.Select(v => new KeyValuePair<string, string>(f.Key, v ?? string.Empty))).ToList();
            request = kind == OperationKind.ImageEdit
                ? Images.EditRequest(fields, files, deployment)
                : Transcriptions.ToRequest(kind, fields, files.Count == 0 ? null : files[0].File, deployment);
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex))
        {
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
            return;
        }

        if (!await OperationsEndpoint.AdmitAsync(ctx, caller, keys, request))
        {
            return;
        }

        if (Images.Streams(request.Operation!))
        {
            await OperationsEndpoint.StreamAsync(ctx, queue, headers, request, aborted); // an edit's events, as a generation's
            return;
        }

        if (request.Stream == true)
        {
            await NamedEventStream.WriteAsync(ctx, queue, request, new TranscriptEvents(), options, time, headers, calls: null, aborted);
            return;
        }

        await OperationsEndpoint.AnswerAsync(ctx, queue, headers, request, aborted);
    }

    /// <summary>
    /// A streamed transcription's events as OpenAI writes them — <c>data:</c> lines, no event names, no <c>[DONE]</c>:
    /// each upstream event's own bytes where its chunk kept them (<c>transcript.text.delta</c> with its logprobs,
    /// <c>.segment</c>, <c>.done</c> with its usage); for chunks without them (an answer given whole, the simulator) a
    /// delta per chunk of text and a closing <c>transcript.text.done</c> with the whole text and the usage. An error
    /// after the start is an <c>{"error": …}</c> event, which the SDKs raise.
    /// </summary>
    private sealed class TranscriptEvents : INamedEventWriter
    {
        private readonly StringBuilder _text = new();
        private TokenUsage? _usage;
        private bool _done;

        public IEnumerable<(string Name, byte[] Json)> Start() => [];

        public IEnumerable<(string Name, byte[] Json)> OnChunk(ChatCompletionChunk chunk)
        {
            var content = chunk.Choices.Count > 0 ? chunk.Choices[0].Delta.Content : null;
            _text.Append(content);
            _usage = chunk.Usage ?? _usage;
            if (chunk.TakeEventJson(out var buffer, out var length))
            {
                // The upstream's event as it came; the rented buffer goes back once copied (this writer is its one taker).
                var json = buffer.AsSpan(0, length).ToArray();
                ArrayPool<byte>.Shared.Return(buffer);
                _done |= chunk.Finishes;
                return [(string.Empty, json)];
            }

            return string.IsNullOrEmpty(content) ? [] : [(string.Empty, Transcriptions.DeltaEvent(content))];
        }

        public IEnumerable<(string Name, byte[] Json)> Finish() => _done ? [] : [(string.Empty, Transcriptions.DoneEvent(_text.ToString(), _usage))];

        public (string Name, byte[] Json) Error(int status, Exception error, string message) =>
            (string.Empty, JsonSerializer.SerializeToUtf8Bytes(new OpenAIErrorBody { Error = OpenAIErrors.Map(error).Error }, ServerJsonContext.Default.OpenAIErrorBody));
    }
}
