using System.Buffers;
using System.IO.Hashing;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Batch;

/// <summary>
/// One input line: a request to run, or the reason it cannot run; <paramref name="Answer"/> writes its answer's body when
/// the line's endpoint is not one the library writes itself (a <see cref="BatchEndpoint"/>'s).
/// </summary>
internal readonly record struct BatchLine(long Number, string? CustomId, ChatCompletionRequest? Request, string? ErrorCode, string? ErrorMessage, Func<ChatCompletionResponse, byte[]>? Answer = null)
{
    public const string ChatCompletionsUrl = "/v1/chat/completions";

    public const string EmbeddingsUrl = "/v1/embeddings";

    public const string CompletionsUrl = "/v1/completions";

    public const string ModerationsUrl = "/v1/moderations";

    public bool IsBad => ErrorCode is not null;

    /// <summary>Parses one line of the OpenAI Batch API input format (a line that is not UTF-8 is not JSON either).</summary>
    public static BatchLine Parse(JsonlLine line, long number, string? endpoint = null, BatchEndpoint? extra = null) => line.Text is { } text
        ? Parse(text, number, endpoint, extra)
        : Bad(number, null, "invalid_json", $"line {number} is not valid UTF-8 (at byte {line.InvalidUtf8At}): JSON text is UTF-8 (save the file as UTF-8).");

    /// <summary>
    /// Parses one line of the OpenAI Batch API input format; with <paramref name="endpoint"/> (a batch created over HTTP
    /// names one), a line for another endpoint is an <c>unsupported_url</c> line, as OpenAI's Batch API has it; with
    /// <paramref name="extra"/>, lines for its URL are read by it.
    /// </summary>
    public static BatchLine Parse(string text, long number, string? endpoint = null, BatchEndpoint? extra = null)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(text);
        }
        catch (JsonException ex)
        {
            var at = ex.BytePositionInLine is { } position ? $" (at byte {position})" : string.Empty;
            return Bad(number, null, "invalid_json", $"line {number} is not valid JSON{at}: {Serialization.JsonProblems.FirstSentence(ex.Message).TrimEnd()}");
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                return Bad(number, null, "invalid_json", $"line {number} is not a JSON object.");
            }

            var customId = root.TryGetProperty("custom_id", out var id) && id.ValueKind == JsonValueKind.String ? id.GetString() : null;
            if (string.IsNullOrEmpty(customId))
            {
                var which = id.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null ? "has no 'custom_id'" : $"has a 'custom_id' that is {Kind(id)}";
                return Bad(number, null, "missing_custom_id", $"line {number} {which} (a non-empty string is required).");
            }

            var url = Canonical(root.TryGetProperty("url", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null);
            var embeddings = url == EmbeddingsUrl;
            var completions = url == CompletionsUrl;
            var moderations = url == ModerationsUrl;
            var other = extra is not null && url == extra.Url;
            if (!embeddings && !completions && !moderations && !other && url != ChatCompletionsUrl)
            {
                var also = extra is null ? string.Empty : $"\"{extra.Url}\", ";
                return Bad(number, customId, "unsupported_url", $"line {number}: 'url' must be \"{ChatCompletionsUrl}\", \"{CompletionsUrl}\", {also}\"{EmbeddingsUrl}\" or \"{ModerationsUrl}\" (the endpoints a batch can call).");
            }

            if (endpoint is not null && url != Canonical(endpoint))
            {
                return Bad(number, customId, "unsupported_url", $"line {number}: 'url' must be \"{endpoint}\", the batch's endpoint (every line of a batch calls the one endpoint it was created for).");
            }

            if (root.TryGetProperty("method", out var method) && (method.ValueKind != JsonValueKind.String || !string.Equals(method.GetString(), "POST", StringComparison.OrdinalIgnoreCase)))
            {
                return Bad(number, customId, "unsupported_method", $"line {number}: 'method' must be \"POST\".");
            }

            var kind = embeddings ? "an embeddings" : completions ? "a completions" : moderations ? "a moderations" : other ? extra!.Kind : "a chat completion";
            if (!root.TryGetProperty("body", out var body) || body.ValueKind != JsonValueKind.Object)
            {
                return Bad(number, customId, "invalid_body", $"line {number}: 'body' must be {kind} request object.");
            }

            if (embeddings || completions || moderations || other)
            {
                // Read by the routes' own checks: a bad body is a bad line naming the member, as the route's 400 would.
                ChatCompletionRequest checkedRequest;
                Func<ChatCompletionResponse, byte[]>? answer = null;
                try
                {
                    var own = body.Clone();
                    checkedRequest = embeddings ? Providers.Embeddings.ToRequest(own) : moderations ? Providers.Moderations.ToRequest(own)
                        : completions ? Providers.TextCompletions.ToRequest(own) : extra!.Read(own, out answer);
                }
                catch (InvalidRequestException ex)
                {
                    return Bad(number, customId, "invalid_body", $"line {number}: 'body' is not {kind} request{(ex.Param is null ? string.Empty : $" ({ex.Param})")}: {ex.Message}");
                }
                catch (InvalidOperationException ex)
                {
                    return Bad(number, customId, "invalid_body", $"line {number}: 'body' is not {kind} request: {Serialization.JsonProblems.FirstSentence(ex.Message)}");
                }

                return checkedRequest.Stream == true
                    ? Bad(number, customId, "invalid_body", $"line {number}: 'body.stream' must not be true in a batch (results are written whole).")
                    : new BatchLine(number, customId, checkedRequest, null, null, answer);
            }

            ChatCompletionRequest? request;
            try
            {
                request = body.Deserialize(GatewayJsonContext.Default.ChatCompletionRequest);
            }
            catch (JsonException ex)
            {
                return Bad(number, customId, "invalid_body", $"line {number}: 'body' is not a valid chat completion request ({Serialization.JsonProblems.PathOf(ex)}): {Serialization.JsonProblems.FirstSentence(ex.Message)}");
            }

            if (request is null)
            {
                return Bad(number, customId, "invalid_body", $"line {number}: 'body' is empty.");
            }

            if (request.Stream == true)
            {
                return Bad(number, customId, "invalid_body", $"line {number}: 'body.stream' must not be true in a batch (results are written whole).");
            }

            return new BatchLine(number, customId, request, null, null);
        }
    }

    /// <summary>
    /// An endpoint as the gateway names it: Azure OpenAI's batch files name them without the version
    /// (<c>/chat/completions</c>), OpenAI's with it (<c>/v1/chat/completions</c>); anything else as it is.
    /// </summary>
    public static string? Canonical(string? url) => url switch
    {
        "/chat/completions" => ChatCompletionsUrl,
        "/completions" => CompletionsUrl,
        "/embeddings" => EmbeddingsUrl,
        "/responses" => "/v1/responses",
        _ => url,
    };

    private static BatchLine Bad(long number, string? customId, string code, string message) => new(number, customId, null, code, message);

    private static string Kind(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => "empty",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "true or false",
        JsonValueKind.Array => "a list",
        _ => "an object",
    };

    /// <summary>
    /// A 128-bit fingerprint of a custom_id: the run remembers these (16 bytes a line) instead of the ids,
    /// so a million-line batch needs ~40 MB for duplicate and resume checks, and a collision is out of reach.
    /// </summary>
    public static UInt128 Fingerprint(string customId)
    {
        var max = Encoding.UTF8.GetMaxByteCount(customId.Length);
        var rented = max <= 512 ? null : ArrayPool<byte>.Shared.Rent(max);
        Span<byte> buffer = rented ?? stackalloc byte[512];
        try
        {
            var n = Encoding.UTF8.GetBytes(customId, buffer);
            return XxHash128.HashToUInt128(buffer[..n]);
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }
}

/// <summary>
/// An endpoint a batch may call that the library does not read itself — the server's <c>/v1/responses</c>: its lines'
/// bodies read into the canonical request, each answer written back in its own shape.
/// </summary>
internal sealed class BatchEndpoint
{
    /// <summary>The line URL it serves (<c>/v1/responses</c>).</summary>
    public required string Url { get; init; }

    /// <summary>What its request is called in a bad line's message ("a responses").</summary>
    public required string Kind { get; init; }

    /// <summary>
    /// Reads one line's body into a request and the writer of its answer's body; throws
    /// <see cref="InvalidRequestException"/> (or <see cref="InvalidOperationException"/>) for a body it refuses.
    /// </summary>
    public required BatchBodyReader Read { get; init; }
}

/// <summary>Reads a batch line's body into a request, and gives the writer of its answer's body.</summary>
internal delegate ChatCompletionRequest BatchBodyReader(JsonElement body, out Func<ChatCompletionResponse, byte[]> answer);
