using System.Globalization;

namespace PipelineGateway.Pipeline;

/// <summary>Request ids: a per-process random prefix and a sequence number, formatted only when read.</summary>
internal static class RequestIds
{
    private static readonly string Prefix = "req_" + Guid.NewGuid().ToString("N")[..8] + "_";
    private static long s_sequence;

    public static long Next() => Interlocked.Increment(ref s_sequence);

    public static string Format(long sequence) => Prefix + sequence.ToString(CultureInfo.InvariantCulture);
}
