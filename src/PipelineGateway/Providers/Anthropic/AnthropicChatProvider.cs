using System.Buffers;
using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.Http;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>Anthropic Messages (<c>POST {base}/messages</c>, <c>x-api-key</c>, <c>anthropic-version</c>).</summary>
internal sealed class AnthropicChatProvider : HttpChatProvider
{
    private readonly Uri _messages;

    public AnthropicChatProvider(string name, HttpMessageInvoker http, ProviderOptions options, string? apiKey, TimeProvider time, ILogger logger)
        : base(name, http, options, apiKey, time, logger)
    {
        var baseUrl = options.BaseUrl ?? "https://api.anthropic.com/v1";
        _messages = new Uri(new Uri(baseUrl.EndsWith('/') ? baseUrl : baseUrl + "/"), "messages");
    }

    protected override HttpRequestMessage CreateRequest(ProviderRequest request, bool stream)
    {
        var body = new ArrayBufferWriter<byte>(2048);
        AnthropicTranslator.WriteRequest(body, request.Request, request.Model, stream, Options.DefaultMaxTokens);
        var content = new ReadOnlyMemoryContent(body.WrittenMemory);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json") { CharSet = "utf-8" };
        var message = new HttpRequestMessage(HttpMethod.Post, _messages) { Content = content };
        if (!string.IsNullOrEmpty(ApiKey))
        {
            message.Headers.TryAddWithoutValidation("x-api-key", ApiKey);
        }

        message.Headers.TryAddWithoutValidation("anthropic-version", Options.AnthropicVersion);
        message.Headers.TryAddWithoutValidation("Accept", stream ? "text/event-stream" : "application/json");
        foreach (var (header, value) in Options.Headers)
        {
            message.Headers.TryAddWithoutValidation(header, value);
        }

        return message;
    }

    protected override ChatCompletionResponse ParseResponse(ReadOnlySpan<byte> body, ProviderRequest request)
    {
        var message = JsonSerializer.Deserialize(body, AnthropicJsonContext.Default.AnthropicMessage)
            ?? throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned an empty body.");
        var response = AnthropicTranslator.ToCanonical(message);
        response.Created = Time.GetUtcNow().ToUnixTimeSeconds();
        return response;
    }

    protected override async IAsyncEnumerable<ChatCompletionChunk> ReadStreamAsync(Stream body, ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var state = new AnthropicTranslator.StreamState(Time.GetUtcNow().ToUnixTimeSeconds());
        using var events = new SseEventReader(body);
        while (await events.MoveNextAsync(cancellationToken).ConfigureAwait(false))
        {
            if (JsonSerializer.Deserialize(events.Data, AnthropicJsonContext.Default.AnthropicStreamEvent) is not { } e)
            {
                continue;
            }

            foreach (var chunk in state.OnEvent(e))
            {
                yield return chunk;
            }

            if (e.Type == "message_stop")
            {
                yield break;
            }
        }

        throw new ProviderException(AttemptOutcome.RetryableError, $"The stream from '{Name}' ended before message_stop.");
    }

    protected override UpstreamError ParseError(int status, string body)
    {
        var error = ParseErrorBody(body, static (message, _) =>
            message.Contains("prompt is too long", StringComparison.OrdinalIgnoreCase) || message.Contains("context window", StringComparison.OrdinalIgnoreCase));
        return error with { ContextLength = error.ContextLength && error.Type is "invalid_request_error" or null };
    }
}
