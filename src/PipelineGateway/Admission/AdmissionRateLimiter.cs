using System.Collections.Concurrent;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// The chained, partitioned request limits of the admission stage.
/// </summary>
/// <remarks>
/// Hand-written rather than built on System.Threading.RateLimiting, deliberately:
/// (1) its token bucket and sliding window replenish from their own timer and clock, with no
/// <see cref="TimeProvider"/> seam, so limits could not be tested to the request without sleeping;
/// (2) its chained limiter acquires one limiter after another, and a token-bucket lease gives nothing
/// back when disposed, so a refusal by the per-hour limit would still consume the per-minute permit —
/// here every rule of a chain is checked first and charged only if all admit;
/// (3) its sliding window counts whole segments, which lets up to twice the limit through around a
/// segment edge; the window here keeps a log and is exact.
/// Each partition has its own lock, so one tenant's traffic never contends with another's.
/// </remarks>
internal sealed class AdmissionRateLimiter
{
    private readonly RateLimitRule[] _rules;
    private readonly RateLimitPartition _partitionBy;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<string, PartitionState> _partitions = new(StringComparer.Ordinal);

    public AdmissionRateLimiter(IOptions<GatewayOptions> options, TimeProvider time)
    {
        _rules = [.. options.Value.Admission.RateLimits];
        _partitionBy = options.Value.Admission.PartitionBy;
        _time = time;
    }

    public bool IsEnabled => _rules.Length > 0;

    /// <summary>Admits the request (charging every rule) or returns the refusal without charging any.</summary>
    public RateLimitedException? TryAdmit(WorkItem item) => TryAdmit(PartitionKey(item.Request), 1);

    public RateLimitedException? TryAdmit(string partition, long cost)
    {
        if (_rules.Length == 0)
        {
            return null;
        }

        var state = _partitions.GetOrAdd(partition, static (_, rules) => new PartitionState(rules), _rules);
        var now = _time.GetTimestamp();
        lock (state)
        {
            for (var i = 0; i < _rules.Length; i++)
            {
                var wait = state.Limits[i].TimeUntilAvailable(now, cost, _time.TimestampFrequency);
                if (wait > TimeSpan.Zero)
                {
                    return new RateLimitedException(_rules[i].DisplayName, wait);
                }
            }

            for (var i = 0; i < _rules.Length; i++)
            {
                state.Limits[i].Charge(now, cost);
            }
        }

        return null;
    }

    /// <summary>What is left of each rule for a partition, for x-ratelimit-* headers and metrics.</summary>
    public IReadOnlyList<RateLimitStatus> GetStatus(string partition)
    {
        if (!_partitions.TryGetValue(partition, out var state))
        {
            return [.. _rules.Select(r => new RateLimitStatus(r.DisplayName, r.Limit, r.Burst ?? r.Limit, TimeSpan.Zero))];
        }

        var now = _time.GetTimestamp();
        lock (state)
        {
            return [.. _rules.Select((r, i) => state.Limits[i].Status(r, now, _time.TimestampFrequency))];
        }
    }

    public string PartitionKey(ChatCompletionRequest request) => _partitionBy switch
    {
        RateLimitPartition.Key => request.Gateway?.RateLimitKey ?? string.Empty,
        RateLimitPartition.User => request.User ?? string.Empty,
        RateLimitPartition.Model => request.Model,
        _ => string.Empty,
    };

    private sealed class PartitionState(RateLimitRule[] rules)
    {
        public ILimitState[] Limits { get; } = [.. rules.Select(ILimitState.Create)];
    }
}

/// <summary>A rule's state for one partition, at a moment.</summary>
public readonly record struct RateLimitStatus(string Name, long Limit, long Remaining, TimeSpan ResetAfter);

internal interface ILimitState
{
    TimeSpan TimeUntilAvailable(long now, long cost, long frequency);

    void Charge(long now, long cost);

    RateLimitStatus Status(RateLimitRule rule, long now, long frequency);

    static ILimitState Create(RateLimitRule rule) => rule.Algorithm switch
    {
        RateLimitAlgorithm.SlidingWindow => new SlidingWindowState(rule),
        _ => new TokenBucketState(rule),
    };
}

/// <summary>Continuous refill at Limit/Window up to Burst; refill computed lazily from timestamps.</summary>
internal sealed class TokenBucketState(RateLimitRule rule) : ILimitState
{
    private readonly double _capacity = rule.Burst ?? rule.Limit;
    private readonly double _perSecond = rule.Limit / rule.Window.TotalSeconds;
    private double _tokens = rule.Burst ?? rule.Limit;
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

    public void Charge(long now, long cost) => _tokens = Math.Max(0, _tokens - cost);

    public RateLimitStatus Status(RateLimitRule rule, long now, long frequency)
    {
        Refill(now, frequency);
        var toFull = (_capacity - _tokens) / _perSecond;
        return new RateLimitStatus(rule.DisplayName, rule.Limit, (long)Math.Floor(_tokens + 1e-9), TimeSpan.FromSeconds(toFull));
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
/// An exact sliding window: a log of (time, amount) for what was admitted in the last Window. A request
/// is admitted when the amounts still inside the window plus its own stay within the limit.
/// </summary>
internal sealed class SlidingWindowState(RateLimitRule rule) : ILimitState
{
    private readonly Queue<(long At, long Amount)> _log = new();
    private readonly long _limit = rule.Limit;
    private readonly TimeSpan _window = rule.Window;
    private long _sum;

    public TimeSpan TimeUntilAvailable(long now, long cost, long frequency)
    {
        var windowTicks = WindowTicks(frequency);
        Expire(now, windowTicks);
        if (cost > _limit)
        {
            return TimeSpan.MaxValue;
        }

        if (_sum + cost <= _limit)
        {
            return TimeSpan.Zero;
        }

        // Walk the oldest entries until enough would have left the window.
        var freed = 0L;
        foreach (var (at, amount) in _log)
        {
            freed += amount;
            if (_sum - freed + cost <= _limit)
            {
                return TimeSpan.FromSeconds(Math.Max((double)(at + windowTicks - now) / frequency, 1e-6));
            }
        }

        return _window;
    }

    public void Charge(long now, long cost)
    {
        _log.Enqueue((now, cost));
        _sum += cost;
    }

    public RateLimitStatus Status(RateLimitRule rule, long now, long frequency)
    {
        var windowTicks = WindowTicks(frequency);
        Expire(now, windowTicks);
        var reset = _log.Count == 0 ? TimeSpan.Zero : TimeSpan.FromSeconds((double)(_log.Peek().At + windowTicks - now) / frequency);
        return new RateLimitStatus(rule.DisplayName, rule.Limit, Math.Max(0, _limit - _sum), reset);
    }

    private long WindowTicks(long frequency) => (long)(_window.TotalSeconds * frequency);

    private void Expire(long now, long windowTicks)
    {
        while (_log.Count > 0 && now - _log.Peek().At >= windowTicks)
        {
            _sum -= _log.Dequeue().Amount;
        }
    }
}
