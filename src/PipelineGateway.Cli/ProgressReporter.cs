using System.Diagnostics;

namespace PipelineGateway.Cli;

/// <summary>
/// Shows batch progress: on a terminal a live bar redrawn in place (done/total, rate, ETA, failures,
/// cache hits); otherwise a plain line every few seconds, so logs stay readable.
/// </summary>
internal sealed class ProgressReporter : IAsyncDisposable
{
    private readonly TextWriter _out;
    private readonly bool _interactive;
    private readonly long _total;
    private readonly Func<(long Done, long Failed, long Cached)> _read;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public ProgressReporter(TextWriter output, bool interactive, long total, Func<(long Done, long Failed, long Cached)> read)
    {
        _out = output;
        _interactive = interactive;
        _total = total;
        _read = read;
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
        var (done, failed, cached) = _read();
        var elapsed = _clock.Elapsed.TotalSeconds;
        var rate = elapsed > 0 ? done / elapsed : 0;
        var eta = rate > 0 && _total > done ? TimeSpan.FromSeconds((_total - done) / rate) : TimeSpan.Zero;
        var stats = $"{done}/{_total} {rate,7:F1}/s ETA {eta:mm\\:ss} failed {failed} cached {cached}";
        if (_interactive)
        {
            const int width = 30;
            var filled = _total == 0 ? width : (int)(width * Math.Min(1.0, (double)done / _total));
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
