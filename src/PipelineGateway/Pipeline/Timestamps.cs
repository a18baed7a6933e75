namespace PipelineGateway.Pipeline;

/// <summary>
/// A clock read is ~15–20 ns and was ~20% of the in-process path (docs/benchmarks.md, eleventh session), so a timestamp a
/// caller already holds is passed on rather than read again. 0 means "none read yet": TimeProvider timestamps are never 0
/// in practice (Stopwatch ticks since boot; FakeTimeProvider's since 2000).
/// </summary>
internal static class Timestamps
{
    /// <summary><paramref name="read"/> when the caller read one, else a fresh read.</summary>
    public static long OrNow(this TimeProvider time, long read) => read != 0 ? read : time.GetTimestamp();
}
