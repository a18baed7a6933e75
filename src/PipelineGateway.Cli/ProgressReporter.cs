using System.Diagnostics;
using PipelineGateway.Batch;

namespace PipelineGateway.Cli;

/// <summary>
/// Shows batch progress: on a terminal a live bar redrawn in place (done/total, rate, ETA, failures,
/// cache hits); otherwise a plain line every few seconds, so logs stay readable.
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
        _loop = Task.Run(RunAsync);
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
        Draw(final: true);
        _stop.Dispose();
    }
}
