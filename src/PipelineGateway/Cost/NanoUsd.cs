namespace PipelineGateway.Cost;

/// <summary>
/// Money as whole nano-dollars (1e-9 USD), how the gateway sums it: a <see cref="long"/> added with one interlocked
/// instruction and no lock, exact where a double drifts. A request's cost is converted once and the same nano-dollars
/// go to every figure it counts in (the model's, the key's, the provider's, the deployment's, the instruments'): the
/// conversion is a decimal multiply and round, which ran once per figure — five a request, about a quarter of what the
/// metrics' own figures cost in a profile (docs/benchmarks.md, "The stream's pipe writer held once; where the streams'
/// and the metrics' CPU goes").
/// </summary>
internal static class NanoUsd
{
    public static long From(decimal usd) => (long)decimal.Round(usd * 1_000_000_000m);

    public static decimal ToUsd(long nano) => nano / 1_000_000_000m;
}
