using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Server;

/// <summary>
/// One <c>data:</c> server-sent event written into Kestrel's response pipe and flushed once: no byte array per event
/// and no separate stream writes (issue 21: a stream's cost is per chunk; see docs/benchmarks.md, streaming mode).
/// </summary>
internal static class SseWriter
{
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();

    /// <summary>An event whose JSON is already written, then flushed.</summary>
    public static ValueTask<FlushResult> WriteDataAsync(HttpResponse response, ReadOnlySpan<byte> json, CancellationToken cancellationToken)
    {
        WriteData(response, json);
        return response.BodyWriter.FlushAsync(cancellationToken);
    }

    /// <summary>An event whose JSON is already written (one line: the caller made sure), not flushed.</summary>
    public static void WriteData(HttpResponse response, ReadOnlySpan<byte> json)
    {
        var pipe = response.BodyWriter;
        pipe.Write(DataPrefix);
        pipe.Write(json);
        pipe.Write(EventEnd);
    }

    /// <summary>An event serialized straight into the pipe by <paramref name="json"/> (reused from event to event), not flushed (the caller flushes once per burst).</summary>
    public static void WriteData<T>(HttpResponse response, Utf8JsonWriter json, T value, JsonTypeInfo<T> info)
    {
        var pipe = response.BodyWriter;
        pipe.Write(DataPrefix);
        json.Reset(pipe);
        JsonSerializer.Serialize(json, value, info);
        json.Flush();
        pipe.Write(EventEnd);
    }
}
