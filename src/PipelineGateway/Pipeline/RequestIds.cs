using System.Globalization;

namespace PipelineGateway.Pipeline;

/// <summary>Request ids: a per-process random prefix and a sequence number, formatted only when read.</summary>
internal static class RequestIds
{
    private static readonly string Prefix = "req_" + Guid.NewGuid().ToString("N")[..8] + "_";
    private static long s_sequence;

    public static long Next() => Interlocked.Increment(ref s_sequence);

    public static string Format(long sequence) => Prefix + sequence.ToString(CultureInfo.InvariantCulture);

    private static readonly byte[] Utf8Prefix = System.Text.Encoding.UTF8.GetBytes(Prefix);

    /// <summary>Writes the id as UTF-8 into <paramref name="destination"/> (at least 32 bytes); returns its length. No allocation.</summary>
    public static int FormatUtf8(long sequence, Span<byte> destination)
    {
        Utf8Prefix.CopyTo(destination);
        System.Buffers.Text.Utf8Formatter.TryFormat(sequence, destination[Utf8Prefix.Length..], out var written);
        return Utf8Prefix.Length + written;
    }
}
