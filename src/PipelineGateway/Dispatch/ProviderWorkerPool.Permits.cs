using PipelineGateway.Pipeline;
using PipelineGateway.Routing;
using PipelineGateway.Routing.Health;

namespace PipelineGateway.Dispatch;

/// <summary>Concurrency permits and the provider's RPM/TPM limits, taken before an attempt.</summary>
internal sealed partial class ProviderWorkerPool
{
    private readonly SemaphoreSlim _permits;

    private ValueTask<ProviderRateLimiter.Charge?> AcquireRateAsync(WorkItem item)
    {
        // The synchronous try covers the common case (no pause, no limit, or room now) without an async state machine.
        var tokens = Limits.CountsTokens ? item.EstimatedTokens : 0;
        ProviderRateLimiter.Charge? charge = null;
        return _health.PausedFor(Name) == TimeSpan.Zero && Limits.TryAcquire(tokens, out charge) == TimeSpan.Zero
            ? ValueTask.FromResult(charge)
            : WaitForRateAsync(tokens, item.Token);
    }

    /// <summary>Waits out a 429 pause (the health tracker's) and the provider's RPM/TPM limits, on the injected clock.</summary>
    private async ValueTask<ProviderRateLimiter.Charge?> WaitForRateAsync(long tokens, CancellationToken token)
    {
        var time = _time;
        while (true)
        {
            var paused = _health.PausedFor(Name);
            ProviderRateLimiter.Charge? charge = null;
            var wait = paused > TimeSpan.Zero ? paused : Limits.TryAcquire(tokens, out charge);
            if (wait == TimeSpan.Zero)
            {
                return charge;
            }

            // Counted once the timer exists: a test that moves a fake clock on this signal must not move it before.
            var delay = Task.Delay(wait, time, token);
            Interlocked.Increment(ref _waitingForRate);
            try
            {
                await delay.ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _waitingForRate);
            }
        }
    }

    private int _waitingForRate;

    /// <summary>Workers waiting out a 429 pause or the provider's RPM/TPM limit right now (an explicit signal for tests and metrics).</summary>
    internal int WaitingForRate => Volatile.Read(ref _waitingForRate);

    private ValueTask AcquirePermitAsync(CancellationToken token) =>
        _permits.Wait(0, CancellationToken.None) ? ValueTask.CompletedTask : new ValueTask(_permits.WaitAsync(token));

    /// <summary>Gives a concurrency permit back; <paramref name="now"/>: a timestamp the caller just read (0: read one).</summary>
    private void ReleasePermit(long now = 0)
    {
        Volatile.Write(ref _lastRelease, _time.OrNow(now));
        _permits.Release();
    }
}
