namespace PipelineGateway.Admission;

/// <summary>
/// One limit's counters for one partition. Callers hold the partition's lock. <see cref="Charge"/> returns a
/// handle that <see cref="Adjust"/> uses to correct a charge later (estimated tokens → actual usage).
/// </summary>
internal interface ILimitState
{
    /// <summary>How long until <paramref name="cost"/> fits (zero: now; <see cref="TimeSpan.MaxValue"/>: never).</summary>
    TimeSpan TimeUntilAvailable(long now, long cost, long frequency);

    long Charge(long now, long cost);

    void Adjust(long handle, long delta);

    RateLimitStatus Status(string name, long limit, long now, long frequency);

    /// <summary>True when the state is as if new (a full bucket, an empty window): forgetting it changes nothing.</summary>
    bool AtRest(long now, long frequency);

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

    public long Charge(long now, long cost)
    {
        _tokens -= cost;
        return 0;
    }

    // A correction may leave the bucket in debt: the next requests wait until it is repaid.
    public void Adjust(long handle, long delta) => _tokens = Math.Min(_capacity, _tokens - delta);

    public bool AtRest(long now, long frequency)
    {
        Refill(now, frequency);
        return _tokens >= _capacity - 1e-9;
    }

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
/// <remarks>
/// The log is a ring of (time, amount) structs — 16 bytes per admission still inside the window, no object per
/// admission — and a charge's handle is its sequence number, so a correction finds its entry in O(1) while it is
/// still in the window.
/// </remarks>
internal sealed class SlidingWindowState(long limit, TimeSpan window) : ILimitState
{
    private Entry[] _log = new Entry[4];
    private int _head;
    private int _count;
    private long _firstSequence; // sequence number of the entry at _head
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
        for (var i = 0; i < _count; i++)
        {
            ref var e = ref At(i);
            freed += e.Amount;
            if (_sum - freed + cost <= limit)
            {
                return TimeSpan.FromSeconds(Math.Max((double)(e.Time + windowTicks - now) / frequency, 1e-6));
            }
        }

        return window;
    }

    public long Charge(long now, long cost)
    {
        if (_count == _log.Length)
        {
            var bigger = new Entry[_log.Length * 2];
            for (var i = 0; i < _count; i++)
            {
                bigger[i] = At(i);
            }

            _log = bigger;
            _head = 0;
        }

        _log[(_head + _count) % _log.Length] = new Entry(now, cost);
        _count++;
        _sum += cost;
        return _firstSequence + _count - 1;
    }

    public void Adjust(long handle, long delta)
    {
        var offset = handle - _firstSequence;
        if (offset < 0 || offset >= _count)
        {
            return; // left the window already: nothing to correct
        }

        ref var e = ref At((int)offset);
        var corrected = Math.Max(0, e.Amount + delta);
        _sum += corrected - e.Amount;
        e.Amount = corrected;
    }

    public RateLimitStatus Status(string name, long limit2, long now, long frequency)
    {
        var windowTicks = WindowTicks(frequency);
        Expire(now, windowTicks);
        var reset = _count == 0 ? TimeSpan.Zero : TimeSpan.FromSeconds((double)(At(0).Time + windowTicks - now) / frequency);
        return new RateLimitStatus(name, limit2, Math.Max(0, limit - _sum), reset);
    }

    public bool AtRest(long now, long frequency)
    {
        Expire(now, WindowTicks(frequency));
        return _count == 0;
    }

    /// <summary>Admissions still inside the window (what the log holds).</summary>
    public int Entries => _count;

    private ref Entry At(int i) => ref _log[(_head + i) % _log.Length];

    private long WindowTicks(long frequency) => (long)(window.TotalSeconds * frequency);

    private void Expire(long now, long windowTicks)
    {
        while (_count > 0 && now - _log[_head].Time >= windowTicks)
        {
            _sum -= _log[_head].Amount;
            _log[_head] = default;
            _head = (_head + 1) % _log.Length;
            _count--;
            _firstSequence++;
        }

        if (_count == 0 && _log.Length > 64)
        {
            _log = new Entry[4]; // give back the memory of a burst that is over
            _head = 0;
        }
    }

    private struct Entry(long time, long amount)
    {
        public long Time = time;

        public long Amount = amount;
    }
}
