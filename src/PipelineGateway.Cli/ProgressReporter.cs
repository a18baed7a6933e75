using System.Diagnostics;
using PipelineGateway.Batch;
using Spectre.Console;

namespace PipelineGateway.Cli;

/// <summary>
/// Shows batch progress: on a terminal a live Spectre.Console progress bar (done/total, rate, ETA, failures, cache hits);
/// otherwise (output redirected) a plain line every few seconds, so logs stay readable.
/// </summary>
internal sealed class ProgressReporter : IAsyncDisposable
{
    private readonly TextWriter _out;
    private readonly bool _interactive;
    private readonly BatchProgress _progress;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public ProgressReporter(TextWriter output, bool interactive, BatchProgress progress)
    {
        _out = output;
        _interactive = interactive;
        _progress = progress;
        _loop = interactive ? Task.Run(RunBarAsync) : Task.Run(RunAsync);
    }

    /// <summary>The terminal's live bar, redrawn in place until the run ends.</summary>
    private Task RunBarAsync()
    {
        var console = Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings { Out = new Spectre.Console.AnsiConsoleOutput(_out) });
        return console.Progress()
            .AutoClear(false)
            .Columns(new Spectre.Console.TaskDescriptionColumn(), new Spectre.Console.ProgressBarColumn(), new Spectre.Console.PercentageColumn(), new Spectre.Console.RemainingTimeColumn())
            .StartAsync(async ctx =>
            {
                var task = ctx.AddTask("starting", maxValue: 1);
                while (true)
                {
                    var p = _progress;
                    task.MaxValue = Math.Max(1, p.Lines);
                    task.Value = p.Done;
                    task.Description = Spectre.Console.Markup.Escape(Stats());
                    if (_stop.IsCancellationRequested)
                    {
                        break;
                    }

                    try
                    {
                        await Task.Delay(200, _stop.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                    }
                }
            });
    }

    private string Stats()
    {
        var p = _progress;
        var elapsed = _clock.Elapsed.TotalSeconds;
        var rate = elapsed > 0 ? (p.Succeeded + p.Failed) / elapsed : 0;
        return $"{p.Done}/{p.Lines} {rate:F1}/s failed {p.Failed} bad {p.BadLines} cached {p.CacheHits}";
    }

    private async Task RunAsync()
    {
        var period = TimeSpan.FromMilliseconds(_interactive ? 200 : 3000);
        using var timer = new PeriodicTimer(period);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                Draw(final: false);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void Draw(bool final)
    {
        var p = _progress;
        var (done, total) = (p.Done, p.Lines);
        var elapsed = _clock.Elapsed.TotalSeconds;
        var ranNow = p.Succeeded + p.Failed; // this run's requests: the rate ignores lines done by an earlier run
        var rate = elapsed > 0 ? ranNow / elapsed : 0;
        var eta = rate > 0 && total > done ? TimeSpan.FromSeconds((total - done) / rate) : TimeSpan.Zero;
        var stats = $"{done}/{total} {rate,7:F1}/s ETA {(int)eta.TotalHours:00}:{eta:mm\\:ss} failed {p.Failed} bad {p.BadLines} cached {p.CacheHits}";
        if (_interactive)
        {
            const int width = 30;
            var filled = total == 0 ? width : (int)(width * Math.Min(1.0, (double)done / total));
            _out.Write($"\r[{new string('#', filled)}{new string('.', width - filled)}] {stats}   ");
            if (final)
            {
                _out.WriteLine();
            }
        }
        else
        {
            _out.WriteLine($"progress: {stats}");
        }

        _out.Flush();
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false);
        if (!_interactive)
        {
            Draw(final: true); // the bar drew its own last state
        }

        _stop.Dispose();
    }
}
