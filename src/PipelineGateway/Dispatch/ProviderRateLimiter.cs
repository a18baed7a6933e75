using PipelineGateway.Admission;

namespace PipelineGateway.Dispatch;

/// <summary>
/// A provider's own limits: requests and tokens per minute as exact sliding windows. Workers wait here (on the
/// injected clock) before sending, so work waits in the provider's queue instead of being sent to earn a 429, and a
/// batch runs at exactly the allowed rate. (The pause after a 429 is the health tracker's: one owner for it.)
/// </summary>
internal sealed class ProviderRateLimiter(int? requestsPerMinute, int? tokensPerMinute, TimeProvider time)
{
    private static readonly TimeSpan Minute = TimeSpan.FromMinutes(1);
    private readonly SlidingWindowState? _requests = requestsPerMinute is { } rpm ? new SlidingWindowState(rpm, Minute) : null;
    private readonly SlidingWindowState? _tokens = tokensPerMinute is { } tpm ? new SlidingWindowState(tpm, Minute) : null;
    private readonly object _lock = new();

    public bool CountsTokens => _tokens is not null;

    public bool IsLimited => _requests is not null || _tokens is not null;

    /// <summary>The spacing the requests-per-minute limit imposes on a steady flow (zero without one).</summary>
    public TimeSpan RequestInterval { get; } = requestsPerMinute is { } r ? TimeSpan.FromMinutes(1) / r : TimeSpan.Zero;

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

            charge = new Charge(_requests?.Charge(now, 1) ?? -1, _tokens?.Charge(now, cost) ?? -1, cost);
            return TimeSpan.Zero;
        }
    }

    /// <summary>Corrects the token charge to the actual usage (0 when nothing was billed).</summary>
    public void Settle(Charge? charge, long actualTokens)
    {
        if (charge is null || _tokens is null)
        {
            return;
        }

        lock (_lock)
        {
            _tokens.Adjust(charge.TokenHandle, actualTokens - charge.Tokens);
        }
    }

    internal sealed record Charge(long RequestHandle, long TokenHandle, long Tokens);
}
