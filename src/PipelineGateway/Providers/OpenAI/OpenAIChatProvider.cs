using System.Text.Json;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.Http;

namespace PipelineGateway.Providers.OpenAI;

/// <summary>
/// OpenAI Chat Completions (<c>POST {base}/chat/completions</c>, Bearer key), which also serves any
/// OpenAI-compatible endpoint by base URL (vLLM, Ollama, Groq, Together, Mistral…) and Azure OpenAI
/// (deployment URL, <c>api-key</c> header, <c>api-version</c> query).
/// </summary>
internal sealed class OpenAIChatProvider : HttpChatProvider, IOperationProvider, ITextCompletionProvider, IStreamedOperationProvider, IUpstreamModelLister
{
    /// <summary>Marks an upstream call on the <c>/completions</c> route, with the caller's model (its refusal names it).</summary>
    private static readonly HttpRequestOptionsKey<string> TextCompletionOf = new("pgw.completions");

    /// <summary>The streamed operation a request carries, and the model asked (its 403/404/405/501 is the request's, as a whole operation's).</summary>
    private static readonly HttpRequestOptionsKey<(OperationRequest Operation, string Model)> OperationOf = new("pgw.operation");

    private readonly Uri _base;
    private readonly Uri _chat;
    private readonly bool _azure;

    /// <summary>
    /// OpenAI itself (and Azure OpenAI) gets none of Anthropic's own members — <c>cache_control</c> (prompt-caching
    /// marks), a tool result's <c>is_error</c>, Claude's <c>thinking_blocks</c>, the <c>thinking</c> parameter — from
    /// Anthropic-format clients or OpenAI-format callers addressing Claude: a strict schema refuses unknown members. An
    /// OpenAI-compatible endpoint gets them as they are — routers in front of Claude (OpenRouter, LiteLLM) read them —
    /// unless <see cref="ProviderOptions.StripAnthropicMembers"/> says otherwise.
    /// </summary>
    private readonly bool _dropAnthropicMembers;

    /// <summary>The key header's value (<c>Bearer …</c>, or the bare key for Azure), built once. Never logged.</summary>
    private readonly string? _authorization;

    public OpenAIChatProvider(string name, HttpMessageInvoker http, ProviderOptions options, string? apiKey, TimeProvider time, ILogger logger)
        : base(name, http, options, apiKey, time, logger)
    {
        _azure = string.Equals(options.Type, ProviderTypes.AzureOpenAI, StringComparison.OrdinalIgnoreCase);
        _dropAnthropicMembers = options.StripAnthropicMembers ?? (_azure || string.Equals(options.Type, ProviderTypes.OpenAI, StringComparison.OrdinalIgnoreCase));
        var baseUrl = options.BaseUrl ?? (_azure ? throw new ArgumentException($"Provider '{name}': Azure OpenAI needs BaseUrl (the resource endpoint).") : "https://api.openai.com/v1");
        _base = new Uri(baseUrl.EndsWith('/') ? baseUrl : baseUrl + "/");
        _chat = new Uri(_base, "chat/completions");
        _authorization = string.IsNullOrEmpty(apiKey) ? null : _azure ? apiKey : "Bearer " + apiKey;
        _compatible = string.Equals(options.Type, ProviderTypes.OpenAICompatible, StringComparison.OrdinalIgnoreCase);
        _toolIds = options.ToolCallIds
            ?? (!_compatible ? ToolCallIdRule.OpenAI
                : string.Equals(_base.Host, "api.mistral.ai", StringComparison.OrdinalIgnoreCase) ? ToolCallIdRule.Mistral
                : ToolCallIdRule.AsSent);
    }

    private readonly bool _compatible;

    /// <summary>How other models' tool-call ids are written for this upstream (<see cref="ProviderOptions.ToolCallIds"/>).</summary>
    private readonly ToolCallIdRule _toolIds;

    public bool ServesTextCompletions(string model) =>
        Options.NativeTextCompletions ?? (_compatible
            || model.StartsWith("gpt-3.5-turbo-instruct", StringComparison.OrdinalIgnoreCase)
            || model.StartsWith("davinci-002", StringComparison.OrdinalIgnoreCase)
            || model.StartsWith("babbage-002", StringComparison.OrdinalIgnoreCase));

    /// <summary>A text completion this deployment sends to the native route (not as chat).</summary>
    private bool Native(ProviderRequest request) => request.Request.TextCompletion is not null && ServesTextCompletions(request.Model);

    protected override HttpRequestMessage CreateRequest(ProviderRequest request, bool stream)
    {
        if (request.Request.Operation is { } operation)
        {
            // Speech: its JSON body, the audio read as it comes (SpeechEvents). A streamed transcription: the caller's
            // form again, stream=true in it, its events read by OperationEvents (a JSON or text answer — whisper-1's —
            // as a whole answer).
            var message = operation.Kind is OperationKind.Speech or OperationKind.Images
                ? Post(OperationUri(operation, request.Model), Operations.UpstreamBody(operation, request.Model), stream: false, operation.Kind == OperationKind.Images || Speech.AsEvents(operation) ? "text/event-stream, application/json" : "audio/*, application/json")
                : Post(OperationUri(operation, request.Model), Forms.Upstream(operation, request.Model), "text/event-stream, application/json, text/plain");
            message.Options.Set(OperationOf, (operation, request.Request.Model));
            return message;
        }

        if (Native(request))
        {
            // POST {base}/completions (Azure: the deployment's route): the caller's body, the deployment's model.
            var route = _azure
                ? AzureRoute(request.Model, TextCompletionRequest.Path)
                : new Uri(_base, TextCompletionRequest.Path);
            var message = Post(route, TextCompletions.UpstreamBody(request.Request.TextCompletion!, request.Model, stream), stream);
            message.Options.Set(TextCompletionOf, request.Request.Model);
            return message;
        }

        var uri = _azure
            ? AzureRoute(request.Model, "chat/completions")
            : _chat;

        if (_dropAnthropicMembers)
        {
            // Claude's own tools and a turn's server-tool blocks: OpenAI's strict schema has no form for them.
            Anthropic.ServerTools.Refuse(request.Request, $"'{Name}'", anyType: false);
        }

        // Serialized up front (a per-thread buffer, one rented copy for the result) so the upstream gets a Content-Length
        // instead of a chunked body, which not every OpenAI-compatible server reads well.
        return Post(uri, RequestJson.ToUpstreamContent(request.Request, request.Model, stream, _dropAnthropicMembers, _toolIds), Accept(stream));
    }

    /// <summary>A POST of a JSON body with the key and the configured headers.</summary>
    private HttpRequestMessage Post(Uri uri, byte[] body, bool stream, string? accept = null)
    {
        var content = new ByteArrayContent(body);
        content.Headers.TryAddWithoutValidation("Content-Type", "application/json; charset=utf-8");
        return Post(uri, content, accept ?? Accept(stream));
    }

    private static string Accept(bool stream) => stream ? "text/event-stream" : "application/json";

    /// <summary>A POST of <paramref name="content"/> (JSON, or a multipart form) with the key and the configured headers.</summary>
    private HttpRequestMessage Post(Uri uri, HttpContent content, string accept) =>
        Authorized(new HttpRequestMessage(HttpMethod.Post, uri) { Content = content }, accept);

    /// <summary>Azure OpenAI's deployments are not a list of models: nothing to list there.</summary>
    public bool CanListModels => !_azure;

    /// <summary><c>GET {base}/models</c>: the ids of the upstream's <c>data</c> list.</summary>
    public async Task<IReadOnlyList<string>> ListModelsAsync(CancellationToken cancellationToken)
    {
        using var message = Authorized(new HttpRequestMessage(HttpMethod.Get, new Uri(_base, "models")), "application/json");
        var (answer, _, _) = await ExchangeAsync(message, null, cancellationToken).ConfigureAwait(false);
        using (answer)
        {
            return UpstreamModelIds.Read(answer.Span).Ids;
        }
    }

    /// <summary>The key and the configured headers on a request to the upstream.</summary>
    private HttpRequestMessage Authorized(HttpRequestMessage message, string accept)
    {
        if (_authorization is not null)
        {
            message.Headers.TryAddWithoutValidation(_azure ? "api-key" : "Authorization", _authorization);
        }

        message.Headers.TryAddWithoutValidation("Accept", accept);
        foreach (var (header, value) in Options.Headers)
        {
            message.Headers.TryAddWithoutValidation(header, value);
        }

        return message;
    }

    /// <summary>
    /// <c>POST {base}/embeddings</c> or <c>{base}/moderations</c> (Azure: the deployment's route): the caller's body with the
    /// deployment's model; the answer's list is kept as it came (checked by the worker, <see cref="Operations.Accept"/>).
    /// </summary>
    public async ValueTask<ChatCompletionResponse> SendAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        var operation = request.Request.Operation!;
        var uri = OperationUri(operation, request.Model);
        using var message = operation.Files is null
            ? Post(uri, Operations.UpstreamBody(operation, request.Model), stream: false, operation.Kind == OperationKind.Speech ? "audio/*, application/json" : null)
            : Post(uri, Forms.Upstream(operation, request.Model), "application/json, text/plain"); // the caller's form again
        PooledBody body;
        int status;
        bool events;
        try
        {
            (body, status, events) = await ExchangeAsync(message, request.Deadline, cancellationToken).ConfigureAwait(false);
        }
        catch (ProviderException ex) when (ex.StatusCode is 403 or 404 or 405 or 501)
        {
            // The upstream serves no such API here (a chat-only server, a model that does not embed, Azure without
            // moderations, a key without the scope): that is this request's, not the deployment's — its chat traffic must
            // not be taken out of rotation (a 403/404 would cool it down) by a caller asking it for embeddings. Passed over
            // like a provider without the API; when no deployment can, the caller's 400.
            throw Operations.NotServedBy(Name, operation, request.Request.Model, ex);
        }

        try
        {
            if (events)
            {
                throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered a {operation.Path} request with server-sent events.", status);
            }

            // Read in one pass, the list kept as its bytes — copied out of a pooled buffer, or, for a big answer (tens of
            // MB of vectors for 2,048 inputs) read into an array of its own, left where it is: a parsed document would
            // hold them twice over.
            var response = Operations.ReadAnswer(operation, body.Memory, copy: body.Pooled, Name, out var error);
            if (response.Operation is null && error is { ValueKind: JsonValueKind.Object } e)
            {
                throw UpstreamErrorIn(e, "its answer (with a 200)");
            }

            return response;
        }
        catch (JsonException ex)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned a body that is not a valid {operation.Path} answer: {Serialization.JsonProblems.Describe(ex, body.Span)}.", status, inner: ex);
        }
        finally
        {
            body.Dispose();
        }
    }

    /// <summary><c>{base}/{path}</c> of an operation (Azure: the deployment's route).</summary>
    private Uri OperationUri(OperationRequest operation, string model) => _azure
        ? AzureRoute(model, operation.Path)
        : new Uri(_base, operation.Path);

    /// <summary>
    /// Azure OpenAI's <c>{base}/openai/deployments/{model}/{path}?api-version=…</c>. The model is one escaped path
    /// segment; <c>.</c> and <c>..</c> are refused, not sent: escaping leaves them as they are and the URI resolves them
    /// as steps (<c>..</c> would have sent the gateway's key to <c>{base}/openai/{path}</c>).
    /// </summary>
    private Uri AzureRoute(string model, string path) => model is "." or ".."
        ? throw ProviderException.Unsupported("model", $"The model '{model}' cannot be a deployment name of '{Name}' (Azure OpenAI).")
        : new Uri(_base, $"openai/deployments/{Uri.EscapeDataString(model)}/{path}?api-version={Uri.EscapeDataString(Options.AzureApiVersion)}");

    protected override ChatCompletionResponse ParseResponse(ReadOnlySpan<byte> body, ProviderRequest request)
    {
        if (request.Request.Operation is { Kind: OperationKind.Speech })
        {
            // Speech answered as JSON: no audio — an error sent with a 200, or JSON where audio was asked.
            Speech.ReadAnswer(body.ToArray(), copy: false, out var speechError);
            throw speechError is { } e
                ? UpstreamErrorIn(e, "its answer (with a 200)")
                : new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned an answer that is not a usable speech answer: it has no audio.");
        }

        if (request.Request.Operation is { Kind: OperationKind.Images or OperationKind.ImageEdit } image)
        {
            // A streamed image request answered whole, as JSON (a server that does not stream images): an error sent with
            // a 200 is that error; else this deployment does not stream images — passed over for one that does, the
            // caller's 400 when none can (never an event stream without events).
            using (var answer = JsonDocument.Parse(body.ToArray()))
            {
                if (answer.RootElement.ValueKind == JsonValueKind.Object && answer.RootElement.TryGetProperty("error", out var sent) && sent.ValueKind == JsonValueKind.Object)
                {
                    throw UpstreamErrorIn(sent.Clone(), "its answer (with a 200)");
                }
            }

            throw ProviderException.Unsupported("stream", $"The model '{ProviderException.Quoted(request.Request.Model)}' is served by '{Name}', which answered a streamed image request whole (it does not stream images): ask without 'stream'.");
        }

        if (request.Request.Operation is { } operation)
        {
            // A streamed transcription answered whole (whisper-1 ignores stream): replayed as the stream's chunks.
            return Transcriptions.AsStreamAnswer(operation, request.Model, body, out var refusal) ?? (refusal is { } e
                ? throw UpstreamErrorIn(e, "its answer (with a 200)")
                : throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered a streamed transcription with no transcript."));
        }

        if (Native(request))
        {
            var answer = TextCompletions.ReadAnswer(body, out var refusal);
            return refusal is { } e ? throw UpstreamErrorIn(e, "its answer (with a 200)") : answer;
        }

        // Kept as its bytes too when the chat endpoint writes them and they say what the gateway would write (not for a
        // stream answered whole: that answer is replayed as chunks).
        var response = AnswerJson.ReadAnswer(body, keepJson: request.Request.Gateway?.KeepsUpstreamJson == true && request.Request.Stream != true)
            ?? throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned an empty body.");

        // An error sent with a 200 and no answer (some OpenAI-compatible servers and proxies do): a failure classified
        // by its type or code, never an empty answer passed on (and billed) with the error beside it.
        if (response.Choices is null or { Count: 0 } && response.AdditionalProperties?.TryGetValue("error", out var error) == true && error.ValueKind == JsonValueKind.Object)
        {
            throw UpstreamErrorIn(error, "its answer (with a 200)");
        }

        return response;
    }

    protected override StreamEvents ReadStream(ProviderRequest request)
    {
        if (request.Request.Operation is { } operation)
        {
            var created = Time.GetUtcNow().ToUnixTimeSeconds();
            var model = request.Model;
            return operation.Kind is OperationKind.Images or OperationKind.ImageEdit
                ? new OperationEvents(this, Images.EventPrefix(operation) + ".completed", (ReadOnlySpan<byte> data, out JsonElement? error, out bool done) => Images.ReadEvent(data, operation, model, created, out error, out done))
                : operation.Kind != OperationKind.Speech
                ? new OperationEvents(this, "transcript.text.done", (ReadOnlySpan<byte> data, out JsonElement? error, out bool done) => Transcriptions.ReadEvent(data, model, created, out error, out done))
                : Speech.AsEvents(operation)
                ? new OperationEvents(this, "speech.audio.done", (ReadOnlySpan<byte> data, out JsonElement? error, out bool done) => Speech.ReadEvent(data, operation, model, created, out error, out done))
                : new SpeechEvents(this, operation, model, created);
        }

        if (Native(request))
        {
            return new TextEvents(this, Math.Max(1, request.Request.TextCompletion!.Choices));
        }

        var keep = request.Request.Gateway?.KeepsUpstreamJson == true;
        return new Events(this, keep, skim: keep && request.ChoicesMayStayUnread, choices: Math.Max(1, request.Request.N ?? 1));
    }

    /// <summary>
    /// Chunks are parsed straight from the event bytes (no string per event), all sharing the first one's id string,
    /// and keep those bytes when the endpoint can write them as they came.
    /// </summary>
    private sealed class Events(OpenAIChatProvider provider, bool keep, bool skim, int choices) : StreamEvents
    {
        // With more than one choice the events alternate between them: each would miss the last one's template.
        private readonly Serialization.StreamTemplate? _template = skim && choices == 1 ? new() : null;
        private string? _id;
        private int _finished;

        public override string LastEvent => "[DONE]";

        /// <summary>
        /// Every choice asked for got its finish_reason (a finishing event counted once when its choices were only
        /// skimmed): the answer is whole even if [DONE] never comes.
        /// </summary>
        public override bool EndedWhole => _finished >= choices;

        /// <summary>How many of the chunk's choices finish in it (a skimmed chunk: one if any does). Not yet accepted: choices may be null.</summary>
        private static int Finishing(ChatCompletionChunk chunk)
        {
            if (chunk.ChoicesUnread)
            {
                return chunk.Finishes ? 1 : 0;
            }

            var finishing = 0;
            foreach (var choice in chunk.Choices ?? [])
            {
                if (choice?.FinishReason is not null)
                {
                    finishing++;
                }
            }

            return finishing;
        }

        public override ChatCompletionChunk? Read(ReadOnlySpan<byte> data, out bool end)
        {
            end = data.SequenceEqual("[DONE]"u8);
            if (end)
            {
                return null;
            }

            if (AnswerJson.ReadStreamChunk(data, ref _id, keep, skim, _template) is not { } chunk)
            {
                // Reported as an invalid event (SseParser's null item had ended the stream as if it were [DONE]).
                throw new JsonException("A stream event is the JSON null.");
            }

            if (chunk.AdditionalProperties?.TryGetValue("error", out var error) == true)
            {
                throw provider.UpstreamErrorIn(error, "the stream");
            }

            _finished += Finishing(chunk);
            return chunk;
        }
    }

    /// <summary>
    /// Speech asked as events from an upstream that answers with the audio itself (one without them: Kokoro-FastAPI,
    /// openedai-speech…): its bytes as they come, each block made a <c>speech.audio.delta</c>, closed by a
    /// <c>speech.audio.done</c> without a usage (the upstream gave none) — the caller gets the events it asked for.
    /// </summary>
    protected override StreamEvents ReadStream(ProviderRequest request, string mediaType) =>
        request.Request.Operation is { Kind: OperationKind.Speech } speech && Speech.AsEvents(speech) && mediaType.StartsWith("audio/", StringComparison.OrdinalIgnoreCase)
            ? new SpeechEvents(this, speech, request.Model, Time.GetUtcNow().ToUnixTimeSeconds(), asEvents: true)
            : ReadStream(request);

    /// <summary>Speech's audio as it comes (<see cref="Speech.Block"/>), or made events (<paramref name="asEvents"/>); a body that looks like JSON is judged as a whole answer is.</summary>
    private sealed class SpeechEvents(OpenAIChatProvider provider, OperationRequest operation, string model, long created, bool asEvents = false) : RawBodyEvents
    {
        public override ChatCompletionChunk Block(ReadOnlySpan<byte> bytes) => asEvents
            ? Speech.ReadEvent(Speech.DeltaEvent(bytes), operation, model, created, out _, out _)!
            : Speech.Block(bytes, model, created);

        public override ChatCompletionChunk Finish() => asEvents
            ? Speech.ReadEvent("{\"type\":\"speech.audio.done\"}"u8, operation, model, created, out _, out _)!
            : Speech.Finish(operation, model, created);

        public override ChatCompletionChunk Whole(ReadOnlyMemory<byte> body)
        {
            var answer = Speech.ReadAnswer(body, copy: false, out var error);
            return answer.Operation is not null ? Block(body.Span) // raw PCM may begin with '{': audio after all
                : error is { } e ? throw provider.UpstreamErrorIn(e, "its answer (with a 200)")
                : throw new ProviderException(AttemptOutcome.RetryableError, $"'{provider.Name}' returned an answer that is not a usable speech answer: it has no audio.");
        }
    }

    /// <summary>
    /// An operation's server-sent events — a streamed transcription's (<see cref="Transcriptions.ReadEvent"/>), speech's
    /// asked as events (<see cref="Speech.ReadEvent"/>) — each read by <paramref name="read"/>, whole at
    /// <paramref name="last"/> (OpenAI's streams end with it, no <c>[DONE]</c>; one after it is taken as the end).
    /// </summary>
    private sealed class OperationEvents(OpenAIChatProvider provider, string last, OperationEvents.Reader read) : StreamEvents
    {
        public delegate ChatCompletionChunk? Reader(ReadOnlySpan<byte> data, out JsonElement? error, out bool done);

        private bool _done;

        public override string LastEvent => last;

        public override bool EndedWhole => _done;

        public override ChatCompletionChunk? Read(ReadOnlySpan<byte> data, out bool end)
        {
            end = false;
            if (data.SequenceEqual("[DONE]"u8))
            {
                end = _done ? true : throw new JsonException($"The stream sent [DONE] before {last}.");
                return null;
            }

            var chunk = read(data, out var error, out var done);
            if (error is { } e)
            {
                throw provider.UpstreamErrorIn(e, "the stream");
            }

            _done |= done;
            end = done;
            return chunk;
        }
    }

    /// <summary>A native text completion's events (<see cref="TextCompletions.ReadEvent"/>), whole once every choice finished.</summary>
    private sealed class TextEvents(OpenAIChatProvider provider, int choices) : StreamEvents
    {
        private int _finished;

        public override string LastEvent => "[DONE]";

        public override bool EndedWhole => _finished >= choices;

        public override ChatCompletionChunk? Read(ReadOnlySpan<byte> data, out bool end)
        {
            end = data.SequenceEqual("[DONE]"u8);
            if (end)
            {
                return null;
            }

            var chunk = TextCompletions.ReadEvent(data, out var error);
            if (error is { } e)
            {
                throw provider.UpstreamErrorIn(e, "the stream");
            }

            foreach (var choice in chunk.Choices!)
            {
                _finished += choice.FinishReason is null ? 0 : 1;
            }

            return chunk;
        }
    }

    /// <summary>
    /// The native completions route refused as one the upstream does not serve (403, 404, 405, 501: a chat-only server,
    /// OpenAI's "this is a chat model"): the request's, not the deployment's — passed over without cooling the deployment
    /// down, as an embeddings request to a chat-only server is.
    /// </summary>
    protected override ProviderException Refused(HttpRequestMessage message, ProviderException refusal) =>
        refusal.StatusCode is not (403 or 404 or 405 or 501) ? refusal
        : message.Options.TryGetValue(TextCompletionOf, out var model) ? TextCompletions.NotServedBy(Name, model, refusal)
        : message.Options.TryGetValue(OperationOf, out var asked) ? Operations.NotServedBy(Name, asked.Operation, asked.Model, refusal) // a streamed operation, as a whole one
        : refusal;

    /// <summary>
    /// An error sent inside the stream (OpenAI does this for mid-stream failures) or inside a 200's body: classified by
    /// its type or code.
    /// </summary>
    private ProviderException UpstreamErrorIn(JsonElement error, string where)
    {
        var text = SecretRedactor.Redact((error.ValueKind == JsonValueKind.Object && error.TryGetProperty("message", out var m) ? m.GetString() : error.ToString()) ?? "unknown", ApiKey);
        var type = error.ValueKind == JsonValueKind.Object && error.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        var code = error.ValueKind == JsonValueKind.Object && error.TryGetProperty("code", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString() : null;
        var outcome = (type ?? code) switch
        {
            "rate_limit_exceeded" or "rate_limit_error" or "tokens" or "requests" => AttemptOutcome.RateLimited,
            "invalid_request_error" => AttemptOutcome.NonRetryableError,
            _ => AttemptOutcome.RetryableError,
        };
        return new ProviderException(outcome, $"'{Name}' sent an error in {where}: {text}") { ErrorType = type, ErrorCode = code, UpstreamMessage = text };
    }

    protected override UpstreamError ParseError(int status, string body) =>
        ParseErrorBody(body, (message, code) => code == "context_length_exceeded"
            || (status == 400 && message.Contains("maximum context length", StringComparison.OrdinalIgnoreCase)));
}
