namespace PipelineGateway.Admission;

/// <summary>
/// One limit's counters for one partition. Callers hold the partition's lock. <see cref="Charge"/> returns a
/// handle that <see cref="Adjust"/> uses to correct a charge later (estimated tokens → actual usage).
/// </summary>
internal interface ILimitState
{
    /// <summary>How long until <paramref name="cost"/> fits (zero: now; <see cref="TimeSpan.MaxValue"/>: never).</summary>
    TimeSpan TimeUntilAvailable(long now, long cost, long frequency);

    object? Charge(long now, long cost);

    void Adjust(object? handle, long delta);

    RateLimitStatus Status(string name, long limit, long now, long frequency);

    static ILimitState Create(RateLimitAlgorithm algorithm, long limit, TimeSpan window, long? burst) => algorithm switch
    {
        RateLimitAlgorithm.SlidingWindow => new SlidingWindowState(limit, window),
        _ => new TokenBucketState(limit, window, burst),
    };
}

/// <summary>Continuous refill at Limit/Window up to Burst; refill computed lazily from timestamps.</summary>
internal sealed class TokenBucketState(long limit, TimeSpan window, long? burst) : ILimitState
{
    private readonly double _capacity = burst ?? limit;
    private readonly double _perSecond = limit / window.TotalSeconds;
    private double _tokens = burst ?? limit;
    private long _last = -1;

    public TimeSpan TimeUntilAvailable(long now, long cost, long frequency)
    {
        Refill(now, frequency);
        if (cost > _capacity)
        {
            return TimeSpan.MaxValue;
        }

        var missing = cost - _tokens;

        // A hair of tolerance absorbs floating-point residue from many small refills.
        return missing <= 1e-9 ? TimeSpan.Zero : TimeSpan.FromSeconds(Math.Max(missing / _perSecond, 1e-6));
    }

    public object? Charge(long now, long cost)
    {
        _tokens -= cost;
        return null;
    }

    // A correction may leave the bucket in debt: the next requests wait until it is repaid.
    public void Adjust(object? handle, long delta) => _tokens = Math.Min(_capacity, _tokens - delta);

    public RateLimitStatus Status(string name, long limit, long now, long frequency)
    {
        Refill(now, frequency);
        var toFull = (_capacity - _tokens) / _perSecond;
        return new RateLimitStatus(name, limit, (long)Math.Max(0, Math.Floor(_tokens + 1e-9)), TimeSpan.FromSeconds(toFull));
    }

    private void Refill(long now, long frequency)
    {
        if (_last < 0)
        {
            _last = now;
            return;
        }

        var elapsed = (double)(now - _last) / frequency;
        _last = now;
        _tokens = Math.Min(_capacity, _tokens + (elapsed * _perSecond));
    }
}

/// <summary>
/// An exact sliding window: a log of what was admitted in the last Window. A request is admitted when the
/// amounts still inside the window plus its own stay within the limit — so no interval of Window length ever
/// holds more than Limit, and there is no double burst at a window edge.
/// </summary>
internal sealed class SlidingWindowState(long limit, TimeSpan window) : ILimitState
{
    private readonly Queue<Entry> _log = new();
    private long _sum;

    public TimeSpan TimeUntilAvailable(long now, long cost, long frequency)
    {
        var windowTicks = WindowTicks(frequency);
        Expire(now, windowTicks);
        if (cost > limit)
        {
            return TimeSpan.MaxValue;
        }

        if (_sum + cost <= limit)
        {
            return TimeSpan.Zero;
        }

        // Walk the oldest entries until enough would have left the window.
        var freed = 0L;
        foreach (var e in _log)
        {
            freed += e.Amount;
            if (_sum - freed + cost <= limit)
            {
                return TimeSpan.FromSeconds(Math.Max((double)(e.At + windowTicks - now) / frequency, 1e-6));
            }
        }

        return window;
    }

    public object? Charge(long now, long cost)
    {
        var entry = new Entry(now, cost);
        _log.Enqueue(entry);
        _sum += cost;
        return entry;
    }

    public void Adjust(object? handle, long delta)
    {
        if (handle is Entry { Expired: false } e)
        {
            var corrected = Math.Max(0, e.Amount + delta);
            _sum += corrected - e.Amount;
            e.Amount = corrected;
        }
    }

    public RateLimitStatus Status(string name, long limit2, long now, long frequency)
    {
        var windowTicks = WindowTicks(frequency);
        Expire(now, windowTicks);
        var reset = _log.Count == 0 ? TimeSpan.Zero : TimeSpan.FromSeconds((double)(_log.Peek().At + windowTicks - now) / frequency);
        return new RateLimitStatus(name, limit2, Math.Max(0, limit - _sum), reset);
    }

    private long WindowTicks(long frequency) => (long)(window.TotalSeconds * frequency);

    private void Expire(long now, long windowTicks)
    {
        while (_log.Count > 0 && now - _log.Peek().At >= windowTicks)
        {
            var e = _log.Dequeue();
            e.Expired = true;
            _sum -= e.Amount;
        }
    }

    private sealed class Entry(long at, long amount)
    {
        public long At { get; } = at;

        public long Amount { get; set; } = amount;

        public bool Expired { get; set; }
    }
}
