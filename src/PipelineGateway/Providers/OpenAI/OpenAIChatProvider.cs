using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.ServerSentEvents;
using System.Runtime.CompilerServices;
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
public sealed class OpenAIChatProvider : HttpChatProvider
{
    private static readonly MediaTypeHeaderValue JsonType = new("application/json") { CharSet = "utf-8" };
    private readonly Uri _base;
    private readonly bool _azure;

    public OpenAIChatProvider(string name, HttpClient http, ProviderOptions options, string? apiKey, TimeProvider time, ILogger logger)
        : base(name, http, options, apiKey, time, logger)
    {
        _azure = string.Equals(options.Type, ProviderTypes.AzureOpenAI, StringComparison.OrdinalIgnoreCase);
        var baseUrl = options.BaseUrl ?? (_azure ? throw new ArgumentException($"Provider '{name}': Azure OpenAI needs BaseUrl (the resource endpoint).") : "https://api.openai.com/v1");
        _base = new Uri(baseUrl.EndsWith('/') ? baseUrl : baseUrl + "/");
    }

    protected override HttpRequestMessage CreateRequest(ProviderRequest request, bool stream)
    {
        var uri = _azure
            ? new Uri(_base, $"openai/deployments/{Uri.EscapeDataString(request.Model)}/chat/completions?api-version={Uri.EscapeDataString(Options.AzureApiVersion)}")
            : new Uri(_base, "chat/completions");
        var message = new HttpRequestMessage(HttpMethod.Post, uri)
        {
            Content = JsonContent.Create(request.Request.ForUpstream(request.Model, stream), GatewayJsonContext.Default.ChatCompletionRequest, JsonType),
        };
        if (!string.IsNullOrEmpty(ApiKey))
        {
            if (_azure)
            {
                message.Headers.TryAddWithoutValidation("api-key", ApiKey);
            }
            else
            {
                message.Headers.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
            }
        }

        message.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(stream ? "text/event-stream" : "application/json"));
        foreach (var (header, value) in Options.Headers)
        {
            message.Headers.TryAddWithoutValidation(header, value);
        }

        return message;
    }

    protected override async ValueTask<ChatCompletionResponse> ReadResponseAsync(Stream body, ProviderRequest request, CancellationToken cancellationToken) =>
        await JsonSerializer.DeserializeAsync(body, GatewayJsonContext.Default.ChatCompletionResponse, cancellationToken).ConfigureAwait(false)
        ?? throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned an empty body.");

    protected override async IAsyncEnumerable<ChatCompletionChunk> ReadStreamAsync(Stream body, ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        // Chunks are parsed straight from the event bytes: no string per event.
        var parser = SseParser.Create(body, static (_, data) => data.SequenceEqual("[DONE]"u8) ? null : JsonSerializer.Deserialize(data, GatewayJsonContext.Default.ChatCompletionChunk));
        await foreach (var item in parser.EnumerateAsync(cancellationToken).ConfigureAwait(false))
        {
            if (item.Data is not { } chunk)
            {
                yield break; // data: [DONE]
            }

            if (chunk.AdditionalProperties?.TryGetValue("error", out var error) == true)
            {
                // An error sent inside the stream (OpenAI does this for mid-stream failures).
                var text = error.ValueKind == JsonValueKind.Object && error.TryGetProperty("message", out var m) ? m.GetString() : error.ToString();
                throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' sent an error in the stream: {SecretRedactor.Redact(text ?? "unknown", ApiKey)}");
            }

            yield return chunk;
        }

        // The body ended without "data: [DONE]": the stream was cut short.
        throw new ProviderException(AttemptOutcome.RetryableError, $"The stream from '{Name}' ended before [DONE].");
    }

    protected override (string Message, bool ContextLength) ParseError(int status, string body)
    {
        var message = ErrorMessage(body, "error", "message") ?? Trim(body);
        var code = ErrorMessage(body, "error", "code");
        var contextLength = code == "context_length_exceeded"
            || (status == 400 && message.Contains("maximum context length", StringComparison.OrdinalIgnoreCase));
        return (message, contextLength);
    }
}
