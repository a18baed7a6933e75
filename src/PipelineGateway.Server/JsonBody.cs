using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using System.Text.Unicode;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server;

/// <summary>
/// JSON bodies on the hot path, read and written whole and parsed from memory. Chat requests and answers are small
/// (the body limit caps requests), and System.Text.Json's stream methods run its resumable reader and writer, whose
/// state (stack frames, async machinery) they allocate per call; from memory the serializer needs none of it.
/// The answer also goes out with a Content-Length instead of chunked.
/// </summary>
internal static partial class JsonBody
{
    /// <summary>Parses a body from memory (a reader that is not System.Text.Json's source-generated one, say).</summary>
    public delegate T BodyParser<out T>(ReadOnlySpan<byte> body);

    private delegate T BodyParser<in TState, out T>(ReadOnlySpan<byte> body, TState state);

    /// <summary>Reads the whole request body and hands it to <paramref name="parse"/>.</summary>
    /// <exception cref="InvalidRequestException">The body is not valid UTF-8.</exception>
    public static ValueTask<T> ReadAsync<T>(PipeReader body, BodyParser<T> parse, CancellationToken cancellationToken) =>
        ReadAsync(body, parse, static (span, parse) => parse(span), cancellationToken);

    /// <summary>Reads the whole request body (Kestrel enforces the size limit while reading) and parses it.</summary>
    /// <exception cref="JsonException">The body is not one valid JSON value of the type (empty included).</exception>
    /// <exception cref="InvalidRequestException">The body is not valid UTF-8.</exception>
    public static ValueTask<T?> ReadAsync<T>(PipeReader body, JsonTypeInfo<T> info, CancellationToken cancellationToken) =>
        ReadAsync(body, info, static (span, info) => JsonSerializer.Deserialize(span, info), cancellationToken);

    private static async ValueTask<T> ReadAsync<TState, T>(PipeReader body, TState state, BodyParser<TState, T> parse, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await body.ReadAsync(cancellationToken);
            var buffer = result.Buffer;
            if (!result.IsCompleted)
            {
                body.AdvanceTo(buffer.Start, buffer.End); // everything seen, nothing consumed: wait for the rest
                continue;
            }

            try
            {
                if (buffer.IsSingleSegment)
                {
                    return Parse(buffer.FirstSpan, state, parse);
                }

                // A body spanning several pipe segments is copied once: parsing a span validates it whole (trailing
                // data is an error, as it is for a stream), which Deserialize(ref Utf8JsonReader) would not.
                var length = checked((int)buffer.Length);
                var copy = ArrayPool<byte>.Shared.Rent(length);
                try
                {
                    buffer.CopyTo(copy);
                    return Parse(copy.AsSpan(0, length), state, parse);
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(copy);
                }
            }
            finally
            {
                body.AdvanceTo(buffer.End);
            }
        }
    }

    private static T Parse<TState, T>(ReadOnlySpan<byte> body, TState state, BodyParser<TState, T> parse)
    {
        // A UTF-8 byte order mark is read past, as JSON parsers may (RFC 8259 §8.1) and ASP.NET's own JSON reading does:
        // Windows tools write one (PowerShell, Notepad's saved bodies), and it is no reason to refuse the request.
        if (body.StartsWith("\uFEFF"u8))
        {
            body = body[3..];
        }

        // The whole body is checked up front (vectorized, a few GB/s): System.Text.Json checks UTF-8 only in what it
        // decodes, so bad bytes in a name it skips or in extension data would otherwise surface later, mid-request.
        if (!Utf8.IsValid(body))
        {
            throw new InvalidRequestException(null, $"The request body is not valid UTF-8 (at byte {Serialization.JsonProblems.FirstInvalidUtf8(body)}).");
        }

        return parse(body, state);
    }

    /// <summary>
    /// Kestrel refused the body while it was read: too large (413), too slow (408: below the minimum data rate), or
    /// badly framed (400); or the front door did: a body sent without a length past the large bodies' room (503,
    /// <see cref="LargeBodies"/>). Answered in the route's shape and logged below warning: a client's doing, not the gateway's.
    /// </summary>
    public static Task WriteBodyFailureAsync(HttpContext ctx, BadHttpRequestException ex, ServerOptions options, ILogger logger)
    {
        LogBodyRefused(logger, ex.StatusCode, ex.Message);
        return ex.StatusCode switch
        {
            413 => FrontDoor.WriteTooLargeAsync(ctx, options),
            408 => RouteErrors.WriteAsync(ctx, 408, "invalid_request_error", "request_timeout", "The request body arrived too slowly."),
            503 => FrontDoor.WriteBusyAsync(ctx, ex.Message), // a chunked body past MaxBodyBytesInFlight (FrontDoor)
            _ => RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_request", "The request body could not be read (malformed framing)."),
        };
    }

    /// <summary>
    /// What the routes that read their body by hand refuse alike (<see cref="WriteRefusalAsync"/>): Kestrel's refusal of
    /// the body, a checked member, JSON that is not.
    /// </summary>
    public static bool IsRefusal(Exception ex) => ex is BadHttpRequestException or InvalidRequestException or JsonException;

    /// <summary>
    /// The route's error for a refused body: Kestrel's (<see cref="WriteBodyFailureAsync"/>), a checked member's 400 naming
    /// it, or — anything else: malformed JSON, a string no character can be made of — "not valid JSON" with the reader's words.
    /// </summary>
    public static Task WriteRefusalAsync(HttpContext ctx, Exception ex, ServerOptions options, ILogger logger) => ex switch
    {
        BadHttpRequestException bad => WriteBodyFailureAsync(ctx, bad, options, logger),
        InvalidRequestException invalid => RouteErrors.WriteAsync(ctx, invalid),
        _ => RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not valid JSON: {Serialization.JsonProblems.FirstSentence(ex.Message)}")),
    };

    [LoggerMessage(EventId = 120, Level = LogLevel.Debug, Message = "Refused a request body ({Status}): {Reason}")]
    private static partial void LogBodyRefused(ILogger logger, int status, string reason);

    /// <summary>
    /// Writes <paramref name="value"/> as the whole response body, with its Content-Length. It is serialized into this
    /// thread's reused buffer and copied into Kestrel's (no array of its own per answer, as <c>SerializeToUtf8Bytes</c>
    /// would allocate), all before the first await, so no other request can touch the buffer meanwhile.
    /// </summary>
    public static async Task WriteAsync<T>(HttpResponse response, T value, JsonTypeInfo<T> info, CancellationToken cancellationToken)
    {
        var buffer = t_buffer ??= new ArrayBufferWriter<byte>(4096);
        buffer.ResetWrittenCount();
        var writer = t_writer is { } cached && ReferenceEquals(t_writerOptions, info.Options) ? cached : NewWriter(info.Options);
        writer.Reset(buffer);
        try
        {
            JsonSerializer.Serialize(writer, value, info);
            writer.Flush();
            PutBody(response, buffer.WrittenSpan);
        }
        finally
        {
            if (buffer.Capacity > MaxKeptBuffer)
            {
                t_buffer = null; // an unusually large answer: neither its buffer nor the writer pointing at it is kept
                t_writer = null;
            }
        }

        await response.BodyWriter.FlushAsync(cancellationToken);
    }

    /// <summary>
    /// Writes an upstream's answer as it came (<see cref="ChatCompletionResponse.UpstreamJson"/>, taken from the
    /// response) as the whole body, with its Content-Length; the rented buffer goes back to the pool once copied into
    /// Kestrel's, before the first await.
    /// </summary>
    public static async Task WriteUpstreamAsync(HttpResponse response, byte[] rented, int length, CancellationToken cancellationToken)
    {
        PutBody(response, rented.AsSpan(0, length));
        ArrayPool<byte>.Shared.Return(rented);
        await response.BodyWriter.FlushAsync(cancellationToken);
    }

    /// <summary>A whole JSON body, copied into Kestrel's buffer with its Content-Length (the caller flushes).</summary>
    private static void PutBody(HttpResponse response, ReadOnlySpan<byte> json)
    {
        response.ContentType = "application/json";
        response.ContentLength = json.Length;
        response.BodyWriter.Write(json);
    }

    private const int MaxKeptBuffer = 64 * 1024;

    [ThreadStatic]
    private static ArrayBufferWriter<byte>? t_buffer;

    [ThreadStatic]
    private static Utf8JsonWriter? t_writer;

    [ThreadStatic]
    private static JsonSerializerOptions? t_writerOptions;

    private static Utf8JsonWriter NewWriter(JsonSerializerOptions options)
    {
        t_writerOptions = options;
        return t_writer = new Utf8JsonWriter(Stream.Null, new JsonWriterOptions
        {
            Encoder = PipelineGateway.Serialization.WireJson.Encoder,
            Indented = options.WriteIndented,
            MaxDepth = options.MaxDepth,
            SkipValidation = true,
        });
    }
}

/// <summary>
/// The chat request as the front door reads it: the canonical contract plus a duplicate key refused (a body with two
/// <c>"model"</c> keys is ambiguous: last-wins parsing would let a proxy and the gateway disagree about it).
/// </summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    UseStringEnumConverter = true,
    AllowDuplicateProperties = false)]
[JsonSerializable(typeof(ChatCompletionRequest))]
internal sealed partial class FrontDoorJsonContext : JsonSerializerContext;
