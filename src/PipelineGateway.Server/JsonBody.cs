using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>
/// JSON bodies on the hot path, read and written whole and parsed from memory. Chat requests and answers are small
/// (the body limit caps requests), and System.Text.Json's stream methods run its resumable reader and writer, whose
/// state (stack frames, async machinery) they allocate per call; from memory the serializer needs none of it.
/// The answer also goes out with a Content-Length instead of chunked.
/// </summary>
internal static class JsonBody
{
    /// <summary>Reads the whole request body (Kestrel enforces the size limit while reading) and parses it.</summary>
    /// <exception cref="JsonException">The body is not one valid JSON value of the type (empty included).</exception>
    public static async ValueTask<T?> ReadAsync<T>(PipeReader body, JsonTypeInfo<T> info, CancellationToken cancellationToken)
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
                return Parse(buffer, info);
            }
            finally
            {
                body.AdvanceTo(buffer.End);
            }
        }
    }

    private static T? Parse<T>(ReadOnlySequence<byte> body, JsonTypeInfo<T> info)
    {
        if (body.IsSingleSegment)
        {
            return JsonSerializer.Deserialize(body.FirstSpan, info);
        }

        // A body spanning several pipe segments is copied once: parsing a span validates it whole (trailing data
        // is an error, as it is for a stream), which Deserialize(ref Utf8JsonReader) would not.
        var length = checked((int)body.Length);
        var copy = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            body.CopyTo(copy);
            return JsonSerializer.Deserialize(copy.AsSpan(0, length), info);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(copy);
        }
    }

    /// <summary>Writes <paramref name="value"/> as the whole response body, with its Content-Length.</summary>
    public static Task WriteAsync<T>(HttpResponse response, T value, JsonTypeInfo<T> info, CancellationToken cancellationToken)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(value, info);
        response.ContentType = "application/json";
        response.ContentLength = bytes.Length;
        return response.Body.WriteAsync(bytes, cancellationToken).AsTask();
    }
}
