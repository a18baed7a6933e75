using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Serialization;

/// <summary>
/// A thread's own buffer and JSON writer, reused for bodies written at once (never across an await): a new buffer per
/// body grew by doubling to the body's size — past 85 KB for a coding agent's step, an array on the large object heap
/// per request (docs/benchmarks.md, "Agent-sized requests and token limits"). The owner keeps the two in its own
/// thread-static fields and passes them by reference; an unusually large body's buffer (over 256 KB) is not kept.
/// </summary>
internal static class ReusedWriter
{
    private const int MaxKeptBuffer = 256 * 1024;

    /// <summary>The thread's writer, reset over its emptied buffer (both made on the thread's first use).</summary>
    public static Utf8JsonWriter Take(ref ArrayBufferWriter<byte>? buffer, ref Utf8JsonWriter? writer, JsonWriterOptions options)
    {
        var b = buffer ??= new ArrayBufferWriter<byte>(4096);
        b.ResetWrittenCount();
        var w = writer ??= new Utf8JsonWriter(b, options);
        w.Reset(b);
        return w;
    }

    /// <summary>After the body is written (in a <c>finally</c>): a buffer grown too large is let go, with the writer pointing at it.</summary>
    public static void Release(ref ArrayBufferWriter<byte>? buffer, ref Utf8JsonWriter? writer)
    {
        if (buffer is { Capacity: > MaxKeptBuffer })
        {
            buffer = null;
            writer = null;
        }
    }
}
