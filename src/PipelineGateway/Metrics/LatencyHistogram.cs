namespace PipelineGateway.Metrics;

/// <summary>
/// A lock-free latency histogram with fixed memory: log-spaced buckets (about 5% wide) from 1 µs to
/// about 20 minutes. Recording is one interlocked increment; percentiles are read from the counts.
/// </summary>
internal sealed class LatencyHistogram
{
    private const double MinMs = 0.001;
    private const double Growth = 1.05;
    private const int BucketCount = 440; // 0.001 ms * 1.05^440 ≈ 2e6 ms

    private static readonly double LogGrowth = Math.Log(Growth);
    private readonly long[] _counts = new long[BucketCount + 1];
    private long _total;
    private long _sumMicros;

    public long Count => Interlocked.Read(ref _total);

    public double MeanMs => Count == 0 ? 0 : Interlocked.Read(ref _sumMicros) / 1000.0 / Count;

    public void Record(TimeSpan latency)
    {
        var ms = latency.TotalMilliseconds;
        Interlocked.Increment(ref _counts[Bucket(ms)]);
        Interlocked.Add(ref _sumMicros, (long)(ms * 1000));
        Interlocked.Increment(ref _total);
    }

    /// <summary>The latency below which <paramref name="quantile"/> of recordings fall (upper bound of the bucket).</summary>
    public double PercentileMs(double quantile)
    {
        var total = Count;
        if (total == 0)
        {
            return 0;
        }

        var rank = (long)Math.Ceiling(quantile * total);
        long seen = 0;
        for (var i = 0; i < _counts.Length; i++)
        {
            seen += Interlocked.Read(ref _counts[i]);
            if (seen >= rank)
            {
                return UpperBoundMs(i);
            }
        }

        return UpperBoundMs(_counts.Length - 1);
    }

    private static int Bucket(double ms)
    {
        if (ms <= MinMs)
        {
            return 0;
        }

        var b = (int)Math.Ceiling(Math.Log(ms / MinMs) / LogGrowth);
        return Math.Min(b, BucketCount);
    }

    private static double UpperBoundMs(int bucket) => Math.Round(MinMs * Math.Pow(Growth, bucket), 3);
}
