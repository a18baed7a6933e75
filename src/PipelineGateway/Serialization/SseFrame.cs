using System.Buffers;

namespace PipelineGateway.Serialization;

/// <summary>
/// One server-sent event's parts written next to each other into a response pipe. When they fit one of Kestrel's
/// pooled output buffers (4 KB) they are copied in under one <c>GetSpan</c> and one <c>Advance</c>: Kestrel takes its
/// output lock on each call, and an event written part by part took it twice per part — 1.6% of a streaming gateway's
/// CPU in the profile (docs/benchmarks.md, eighth session). A bigger event is written part by part (a span that big
/// would be an array of its own).
/// </summary>
internal static class SseFrame
{
    private const int OneBuffer = 4096;

    public static void Write(IBufferWriter<byte> pipe, ReadOnlySpan<byte> a, ReadOnlySpan<byte> b, ReadOnlySpan<byte> c, ReadOnlySpan<byte> d = default, ReadOnlySpan<byte> e = default)
    {
        var length = a.Length + b.Length + c.Length + d.Length + e.Length;
        if (length > OneBuffer)
        {
            pipe.Write(a);
            pipe.Write(b);
            pipe.Write(c);
            pipe.Write(d);
            pipe.Write(e);
            return;
        }

        var span = pipe.GetSpan(length);
        a.CopyTo(span);
        span = span[a.Length..];
        b.CopyTo(span);
        span = span[b.Length..];
        c.CopyTo(span);
        span = span[c.Length..];
        d.CopyTo(span);
        e.CopyTo(span[d.Length..]);
        pipe.Advance(length);
    }
}
