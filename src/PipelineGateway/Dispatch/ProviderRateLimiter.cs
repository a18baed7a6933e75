using PipelineGateway.Admission;

namespace PipelineGateway.Dispatch;

/// <summary>
/// A provider's own limits: requests and tokens per minute as exact sliding windows, plus a pause while the
/// provider has said 429. Workers wait here (on the injected clock) before sending, so work waits in the
/// provider's queue instead of being sent to earn a 429, and a batch runs at exactly the allowed rate.
/// </summary>
internal sealed class ProviderRateLimiter(int? requestsPerMinute, int? tokensPerMinute, TimeProvider time)
{
    private static readonly TimeSpan Minute = TimeSpan.FromMinutes(1);
    private readonly SlidingWindowState? _requests = requestsPerMinute is { } rpm ? new SlidingWindowState(rpm, Minute) : null;
    private readonly SlidingWindowState? _tokens = tokensPerMinute is { } tpm ? new SlidingWindowState(tpm, Minute) : null;
    private readonly object _lock = new();
    private long _pausedUntilUtcTicks;

    public bool CountsTokens => _tokens is not null;

    public bool IsLimited => _requests is not null || _tokens is not null;

    /// <summary>Waits until the request fits every limit and the provider is not paused, then charges it.</summary>
    public async ValueTask<Charge?> AcquireAsync(long tokens, CancellationToken cancellationToken)
    {
        while (true)
        {
            var wait = TryAcquire(tokens, out var charge);
            if (wait == TimeSpan.Zero)
            {
                return charge;
            }

            await Task.Delay(wait, time, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Charges now, or returns how long until the request would fit.</summary>
    public TimeSpan TryAcquire(long tokens, out Charge? charge)
    {
        charge = null;
        var paused = new DateTimeOffset(Volatile.Read(ref _pausedUntilUtcTicks), TimeSpan.Zero) - time.GetUtcNow();
        if (paused > TimeSpan.Zero)
        {
            return paused;
        }

        if (!IsLimited)
        {
            return TimeSpan.Zero;
        }

        var now = time.GetTimestamp();
        var frequency = time.TimestampFrequency;
        lock (_lock)
        {
            var wait = TimeSpan.Zero;
            if (_requests?.TimeUntilAvailable(now, 1, frequency) is { } r && r > wait)
            {
                wait = r;
            }

            // A request larger than the whole minute's budget is sent alone rather than never.
            var cost = _tokens is null ? 0 : Math.Min(tokens, tokensPerMinute!.Value);
            if (_tokens?.TimeUntilAvailable(now, cost, frequency) is { } t && t > wait)
            {
                wait = t;
            }

            if (wait > TimeSpan.Zero)
            {
                return wait;
            }

            charge = new Charge(_requests?.Charge(now, 1), _tokens?.Charge(now, cost), cost);
            return TimeSpan.Zero;
        }
    }

    /// <summary>Corrects the token charge to the actual usage (0 when nothing was billed).</summary>
    public void Settle(Charge? charge, long actualTokens)
    {
        if (charge?.TokenHandle is null || _tokens is null)
        {
            return;
        }

        lock (_lock)
        {
            _tokens.Adjust(charge.TokenHandle, actualTokens - charge.Tokens);
        }
    }

    /// <summary>The provider said 429: send nothing until its Retry-After.</summary>
    public void Pause(TimeSpan retryAfter)
    {
        var until = (time.GetUtcNow() + retryAfter).UtcTicks;
        long current;
        do
        {
            current = Volatile.Read(ref _pausedUntilUtcTicks);
            if (until <= current)
            {
                return;
            }
        }
        while (Interlocked.CompareExchange(ref _pausedUntilUtcTicks, until, current) != current);
    }

    internal sealed record Charge(object? RequestHandle, object? TokenHandle, long Tokens);
}
