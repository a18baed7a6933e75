using System.Globalization;
using Spectre.Console;

namespace PipelineGateway.Cli;

/// <summary>
/// The end of <c>pgw demo</c> and <c>pgw batch</c>: the specification's metrics as two compact tables (Spectre.Console)
/// — totals, then per provider — instead of the whole snapshot (<c>--json</c> prints that). Rounded borders and colour
/// on a terminal; plain ASCII when the output is redirected, so logs and CI stay readable.
/// </summary>
internal static class MetricsSummary
{
    public static void Write(TextWriter output, GatewayMetricsSnapshot s, bool interactive)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!interactive)
        {
            console.Profile.Width = 120;
        }

        var border = interactive ? TableBorder.Rounded : TableBorder.Ascii;
        var totals = new Table().Border(border).Title("Gateway metrics")
            .AddColumn("total").AddColumn("succeeded").AddColumn("cached").AddColumn("failed").AddColumn("cache hit rate")
            .AddColumn("avg latency").AddColumn("p95 latency").AddColumn("total cost").AddColumn("saved by cache");
        foreach (var column in totals.Columns)
        {
            column.RightAligned();
        }

        totals.AddRow(
            N(s.TotalRequests), N(s.SuccessfulRequests), N(s.CachedRequests), N(s.FailedRequests), Percent(s.CacheHitRate),
            Ms(s.AvgLatencyMs), Ms(s.P95LatencyMs), Usd(s.TotalCost), Usd(s.CostSaved));
        console.Write(totals);

        var providers = new Table().Border(border).Title("Per provider")
            .AddColumn("provider").AddColumn(new TableColumn("requests").RightAligned()).AddColumn(new TableColumn("success rate").RightAligned())
            .AddColumn(new TableColumn("avg latency").RightAligned()).AddColumn(new TableColumn("cost").RightAligned()).AddColumn("health");
        foreach (var (name, p) in s.Providers.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var health = s.Deployments.Where(d => d.Key.Contains("/" + name + "/", StringComparison.Ordinal)).Select(d => d.Value.HealthState).Distinct().ToList();
            providers.AddRow(Markup.Escape(name), N(p.Requests), Percent(p.SuccessRate), Ms(p.AvgLatencyMs), Usd(p.TotalCost), Markup.Escape(health.Count == 0 ? "-" : string.Join(", ", health)));
        }

        console.Write(providers);
        console.WriteLine($"retries {N(s.Retries)}, fallbacks {N(s.Fallbacks)}, rate-limit waits {N(s.RateLimitWaits)}, tokens {N(s.PromptTokens)} in / {N(s.CompletionTokens)} out. --json prints the full snapshot.");
    }

    private static string N(long n) => n.ToString("N0", CultureInfo.InvariantCulture);

    private static string Percent(double rate) => (rate * 100).ToString("0.0", CultureInfo.InvariantCulture) + " %";

    private static string Ms(double ms) => ms.ToString("0.0", CultureInfo.InvariantCulture) + " ms";

    private static string Usd(decimal usd) => "$" + usd.ToString("0.000000", CultureInfo.InvariantCulture);
}
