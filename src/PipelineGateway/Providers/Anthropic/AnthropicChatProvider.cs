using System.Buffers;
using System.Net.Http.Headers;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.Http;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>Anthropic Messages (<c>POST {base}/messages</c>, <c>x-api-key</c>, <c>anthropic-version</c>).</summary>
internal sealed class AnthropicChatProvider : HttpChatProvider, IUpstreamModelLister
{
    private readonly Uri _messages;

    public AnthropicChatProvider(string name, HttpMessageInvoker http, ProviderOptions options, string? apiKey, TimeProvider time, ILogger logger)
        : base(name, http, options, apiKey, time, logger)
    {
        var baseUrl = options.BaseUrl ?? "https://api.anthropic.com/v1";
        _messages = new Uri(new Uri(baseUrl.EndsWith('/') ? baseUrl : baseUrl + "/"), "messages");
        _countTokens = new Uri(new Uri(baseUrl.EndsWith('/') ? baseUrl : baseUrl + "/"), "messages/count_tokens");
        _models = new Uri(new Uri(baseUrl.EndsWith('/') ? baseUrl : baseUrl + "/"), "models");
    }

    private readonly Uri _models;

    public bool CanListModels => true;

    /// <summary><c>GET {base}/models</c>, page after page (<c>has_more</c>, <c>after_id</c>; at most ten pages of 1,000).</summary>
    public async Task<IReadOnlyList<string>> ListModelsAsync(CancellationToken cancellationToken)
    {
        var ids = new List<string>();
        string? after = null;
        for (var page = 0; page < 10 && ids.Count < UpstreamModelIds.MaxIds; page++)
        {
            using var message = new HttpRequestMessage(HttpMethod.Get, new Uri(_models + "?limit=1000" + (after is null ? string.Empty : "&after_id=" + Uri.EscapeDataString(after))));
            AddHeaders(message, stream: false, beta: null);
            var (answer, _, _) = await ExchangeAsync(message, null, cancellationToken).ConfigureAwait(false);
            using (answer)
            {
                var (got, more, last) = UpstreamModelIds.Read(answer.Span, UpstreamModelIds.MaxIds - ids.Count);
                ids.AddRange(got);
                if (!more || last is null || string.Equals(last, after, StringComparison.Ordinal))
                {
                    break;
                }

                after = last;
            }
        }

        return ids;
    }

    private readonly Uri _countTokens;

    protected override HttpRequestMessage CreateRequest(ProviderRequest request, bool stream)
    {
        var body = new ArrayBufferWriter<byte>(2048);
        AnthropicTranslator.WriteRequest(body, request.Request, request.Model, stream, Options.DefaultMaxTokens);
        var content = new ReadOnlyMemoryContent(body.WrittenMemory);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json") { CharSet = "utf-8" };
        var message = new HttpRequestMessage(HttpMethod.Post, _messages) { Content = content };
        AddHeaders(message, stream, request.Request.Gateway?.AnthropicBeta);
        return message;
    }

    /// <summary>The key, the API version, what the answer may be, and the provider's configured headers.</summary>
    private void AddHeaders(HttpRequestMessage message, bool stream, string? beta)
    {
        if (!string.IsNullOrEmpty(ApiKey))
        {
            message.Headers.TryAddWithoutValidation("x-api-key", ApiKey);
        }

        message.Headers.TryAddWithoutValidation("anthropic-version", Options.AnthropicVersion);
        message.Headers.TryAddWithoutValidation("Accept", stream ? "text/event-stream" : "application/json");
        if (beta is not null)
        {
            // The caller's betas (checked at /v1/messages), beside any the provider's configuration adds.
            message.Headers.TryAddWithoutValidation("anthropic-beta", beta);
        }

        foreach (var (header, value) in Options.Headers)
        {
            message.Headers.TryAddWithoutValidation(header, value);
        }
    }

    /// <summary>
    /// Claude's own count of a request's input tokens (<c>POST {base}/messages/count_tokens</c>): exact for this model, free,
    /// and not a chat call (no worker, no budget, no log row). Upstream failures are <see cref="ProviderException"/>s.
    /// </summary>
    public async Task<int> CountTokensAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        var body = new ArrayBufferWriter<byte>(2048);
        AnthropicTranslator.WriteRequest(body, request.Request, request.Model, stream: false, Options.DefaultMaxTokens, counting: true);
        using var message = new HttpRequestMessage(HttpMethod.Post, _countTokens) { Content = new ReadOnlyMemoryContent(body.WrittenMemory) };
        message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json") { CharSet = "utf-8" };
        AddHeaders(message, stream: false, request.Request.Gateway?.AnthropicBeta);
        var (answer, status, _) = await ExchangeAsync(message, request.Deadline, cancellationToken).ConfigureAwait(false);
        using (answer)
        {
            return InputTokens(answer.Span)
                ?? throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered count_tokens without a count of input tokens.", status);
        }
    }

    private static int? InputTokens(ReadOnlySpan<byte> body)
    {
        try
        {
            var r = new Utf8JsonReader(body);
            if (!r.Read() || r.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }

            while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
            {
                var isCount = r.ValueTextEquals("input_tokens"u8);
                r.Read();
                if (isCount)
                {
                    return r.TokenType == JsonTokenType.Number && r.TryGetInt32(out var n) && n >= 0 ? n : null;
                }

                r.Skip();
            }
        }
        catch (JsonException)
        {
            // Not JSON: no count.
        }

        return null;
    }

    protected override ChatCompletionResponse ParseResponse(ReadOnlySpan<byte> body, ProviderRequest request)
    {
        var message = JsonSerializer.Deserialize(body, AnthropicJsonContext.Default.AnthropicMessage)
            ?? throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned an empty body.");
        var response = AnthropicTranslator.ToCanonical(message, AnthropicTranslator.AnswersInJson(request.Request));
        response.Created = Time.GetUtcNow().ToUnixTimeSeconds();
        return response;
    }

    protected override StreamEvents ReadStream(ProviderRequest request)
    {
        var json = AnthropicTranslator.AnswersInJson(request.Request);
        // The /v1/messages route writes Claude's content events as they came (not for a JSON answer, whose tool the
        // gateway made up and turns into content).
        var keep = request.Request.Gateway?.KeepsAnthropicEvents == true && !json;
        return new Events(new AnthropicTranslator.StreamState(Time.GetUtcNow().ToUnixTimeSeconds(), json), keep);
    }

    /// <summary>Anthropic's events translated into chat chunks: an event makes none, one or several.</summary>
    private sealed class Events(AnthropicTranslator.StreamState state, bool keepEvents) : StreamEvents
    {
        private readonly Queue<ChatCompletionChunk> _made = new();

        private bool _stopped;

        public override string LastEvent => "message_stop";

        /// <summary>The message_delta with its stop_reason came (its usage with it): a body that ends there is whole.</summary>
        public override bool EndedWhole => _stopped;

        public override ChatCompletionChunk? Read(ReadOnlySpan<byte> data, out bool end)
        {
            end = false;
            if (JsonSerializer.Deserialize(data, AnthropicJsonContext.Default.AnthropicStreamEvent) is not { } e)
            {
                return null;
            }

            ChatCompletionChunk? made = null;
            foreach (var chunk in state.OnEvent(e))
            {
                _made.Enqueue(chunk);
                made = chunk;
            }

            if (keepEvents && ContentEventName(e.Type) is { } name)
            {
                // A content event makes at most one chunk; it carries the event as it came (one without a chunk, a bare one).
                if (made is null)
                {
                    _made.Enqueue(made = state.Bare(e));
                }

                made.AnthropicEvent = (name, OneLine(data));
            }

            end = e.Type == "message_stop";
            _stopped |= e.Type == "message_delta" && e.Delta?.StopReason is not null;
            return Next();
        }

        public override ChatCompletionChunk? Next() => _made.TryDequeue(out var chunk) ? chunk : null;

        /// <summary>
        /// The SSE name a content event is written under: the protocol's own word, never the upstream's string (a type
        /// with a line break in it would otherwise write an event of the upstream's choosing to the caller).
        /// </summary>
        private static string? ContentEventName(string? type) => type switch
        {
            "content_block_start" => "content_block_start",
            "content_block_delta" => "content_block_delta",
            "content_block_stop" => "content_block_stop",
            _ => null,
        };

        /// <summary>
        /// The event's JSON on one line: an SSE event's data may come as several <c>data:</c> lines, joined by line
        /// breaks, which can only be whitespace between JSON tokens (the event was read as JSON): spaces keep it one
        /// <c>data:</c> line when it is written on.
        /// </summary>
        private static byte[] OneLine(ReadOnlySpan<byte> data)
        {
            var copy = data.ToArray();
            if (copy.AsSpan().IndexOfAny((byte)'\n', (byte)'\r') >= 0)
            {
                copy.AsSpan().Replace((byte)'\n', (byte)' ');
                copy.AsSpan().Replace((byte)'\r', (byte)' ');
            }

            return copy;
        }
    }

    protected override UpstreamError ParseError(int status, string body)
    {
        var error = ParseErrorBody(body, static (message, _) =>
            message.Contains("prompt is too long", StringComparison.OrdinalIgnoreCase) || message.Contains("context window", StringComparison.OrdinalIgnoreCase));
        return error with { ContextLength = error.ContextLength && error.Type is "invalid_request_error" or null };
    }
}
