using System.Globalization;
using PipelineGateway.RequestLog;
using PipelineGateway.Sqlite;

namespace PipelineGateway.Cli;

/// <summary><c>pgw usage</c>: spend from the request log as a table.</summary>
internal static class UsageCommand
{
    public static async Task<int> RunAsync(string? db, string? config, string by, string since, TextWriter output, CancellationToken stop)
    {
        var path = db ?? RequestLogSetup.PathOf(GatewayConfiguration.Load(config).Configuration, GatewayConfiguration.DirectoryOf(config));
        var now = DateTimeOffset.UtcNow;
        TimeSpec.TryParse(since, now, out var from); // checked by the option's validator
        IRequestLogStore store;
        try
        {
            store = await SqliteRequestLogExtensions.OpenRequestLogAsync(path, stop).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is FileNotFoundException or InvalidOperationException)
        {
            throw new CliException(ex.Message, exitCode: 1);
        }

        var grouping = Enum.Parse<SpendGrouping>(by, ignoreCase: true);
        var rows = await store.SpendAsync(grouping, from, stop).ConfigureAwait(false);
        (store as IDisposable)?.Dispose();
        await output.WriteLineAsync($"pgw usage: {path}, since {from.UtcDateTime.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)} UTC, by {by}").ConfigureAwait(false);
        if (rows.Count == 0)
        {
            await output.WriteLineAsync("No requests in that time.").ConfigureAwait(false);
            return 0;
        }

        var table = new List<string[]> { new[] { by.ToUpperInvariant(), "REQUESTS", "FAILED", "PROMPT TOKENS", "COMPLETION TOKENS", "COST USD", "SAVED USD" } };
        table.AddRange(rows.Select(r => new[]
        {
            r.Group.Length == 0 ? (grouping == SpendGrouping.User ? "(no user)" : "(no key)") : Printable(r.Group),
            N(r.Requests), N(r.Failed), N(r.PromptTokens), N(r.CompletionTokens), Usd(r.Cost), Usd(r.CostSaved),
        }));
        table.Add(["TOTAL", N(rows.Sum(r => r.Requests)), N(rows.Sum(r => r.Failed)), N(rows.Sum(r => r.PromptTokens)), N(rows.Sum(r => r.CompletionTokens)), Usd(rows.Sum(r => r.Cost)), Usd(rows.Sum(r => r.CostSaved))]);
        var widths = Enumerable.Range(0, table[0].Length).Select(c => table.Max(r => r[c].Length)).ToArray();
        foreach (var row in table)
        {
            var cells = row.Select((cell, c) => c == 0 ? cell.PadRight(widths[c]) : cell.PadLeft(widths[c]));
            await output.WriteLineAsync(string.Join("  ", cells).TrimEnd()).ConfigureAwait(false);
        }

        return 0;
    }

    private static string N(long n) => n.ToString("N0", CultureInfo.InvariantCulture);

    private static string Usd(decimal d) => d.ToString("0.00000000", CultureInfo.InvariantCulture);

    /// <summary>Most characters of a group a table shows (an end user's name may have up to 256).</summary>
    private const int MaxShown = 48;

    /// <summary>
    /// A group as a terminal shows it: a caller's end-user name may hold control characters (an escape sequence, a
    /// newline), shown as '?', and is cut to <see cref="MaxShown"/> characters so one long name does not widen the table.
    /// </summary>
    private static string Printable(string group)
    {
        var shown = group.Any(char.IsControl) ? string.Concat(group.Select(static c => char.IsControl(c) ? '?' : c)) : group;
        return shown.Length <= MaxShown ? shown : string.Concat(shown.AsSpan(0, MaxShown - 1), "…");
    }
}
