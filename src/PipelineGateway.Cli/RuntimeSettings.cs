using System.Globalization;

namespace PipelineGateway.Cli;

/// <summary>
/// The memory settings the runtime's GC actually runs with, in one line that <c>pgw serve</c> prints as it starts: what
/// the shipped runtime configuration gives it (server GC with DATAS, a gen0 budget of at most 32 MiB) or what an
/// operator's <c>DOTNET_GC…</c> variables changed — whose names the runtime reads exactly, so a misspelt one is
/// otherwise silently ignored (docs/server.md, "Runtime settings").
/// </summary>
internal static class RuntimeSettings
{
    /// <summary>The line for <paramref name="gc"/>, the GC's configuration (<see cref="GC.GetConfigurationVariables"/>).</summary>
    public static string Describe(IReadOnlyDictionary<string, object> gc)
    {
        var server = Number(gc, "ServerGC") == 1;
        var parts = new List<string>(5) { server ? "server GC" : "workstation GC" };
        if (server && Number(gc, "GCDynamicAdaptationMode") == 1)
        {
            // DATAS adapts the server GC's heap count; the setting stays on for a workstation GC, where it does nothing.
            parts.Add("DATAS");
        }

        parts.Add(Number(gc, "GCGen0MaxBudget") is > 0 and var cap ? $"gen0 budget at most {Size(cap)}" : "gen0 budget the runtime's default");
        if (Number(gc, "GCHeapHardLimit") is > 0 and var limit)
        {
            parts.Add($"heap limit {Size(limit)}");
        }
        else if (Number(gc, "GCHeapHardLimitPercent") is > 0 and var percent)
        {
            parts.Add($"heap limit {percent}% of memory");
        }

        if (Number(gc, "GCConserveMem") is > 0 and var conserve)
        {
            parts.Add($"conserve memory {conserve}");
        }

        return $"pgw serve: runtime: {string.Join(", ", parts)}.";
    }

    /// <summary>A setting's value as a number (booleans 1 or 0); 0 when absent or not a number.</summary>
    private static long Number(IReadOnlyDictionary<string, object> gc, string name) => gc.TryGetValue(name, out var value) ? value switch
    {
        bool flag => flag ? 1 : 0,
        long n => n,
        ulong n => n > long.MaxValue ? long.MaxValue : (long)n,
        int n => n,
        uint n => n,
        string s when long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) => n,
        _ => 0,
    } : 0;

    private static string Size(long bytes) => bytes % (1024 * 1024) == 0
        ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024 * 1024)} MiB")
        : string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024):0.##} MiB");
}
