using PipelineGateway.Routing.Health;

namespace PipelineGateway.Routing;

/// <summary>
/// What the gateway knows about one deployment right now: its latency average, requests in flight, and its
/// circuit. Reads on the routing path are lock-free; state transitions (rare) take the deployment's own lock — a private
/// one: this type is public, and a host that locks an instance it got from the API must not stall the circuit.
/// </summary>
public sealed class DeploymentState
{
    private const int Buckets = 10;
    private readonly long[] _bucketEpoch = new long[Buckets];
    private readonly long[] _bucketTotal = new long[Buckets];
    private readonly long[] _bucketFailed = new long[Buckets];
    private readonly Lock _gate = new(); // the circuit's transitions
    private double _latencyMs = double.NaN;
    private long _lastSampleUtcTicks;
    private long _probeClaimUtcTicks;
    private int _inFlight;
    private int _consecutiveFailures;
    private int _circuit;
    private long _openUntilUtcTicks;
    private long _coolUntilUtcTicks;
    private int _probeInFlight;
    private int _opens;
    private long _rejectedUntilUtcTicks;

    /// <summary>Exponentially weighted latency (time to first token for streams), or NaN before the first sample.</summary>
    public double LatencyMs => Volatile.Read(ref _latencyMs);

    public DateTimeOffset? LastSample => Volatile.Read(ref _lastSampleUtcTicks) is var t and > 0 ? new DateTimeOffset(t, TimeSpan.Zero) : null;

    /// <summary>Requests routed to this deployment and not finished (queued at its provider or running).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    public int ConsecutiveFailures => Volatile.Read(ref _consecutiveFailures);

    public CircuitState Circuit => (CircuitState)Volatile.Read(ref _circuit);

    /// <summary>When the circuit may be probed again (Open), a 429 cooldown ends, or a rejected deployment comes back.</summary>
    public DateTimeOffset AvailableAt => new(Math.Max(Math.Max(Volatile.Read(ref _openUntilUtcTicks), Volatile.Read(ref _coolUntilUtcTicks)), Volatile.Read(ref _rejectedUntilUtcTicks)), TimeSpan.Zero);

    /// <summary>Until when the deployment is out of rotation because its provider refused its key or model (401/403/404), if it is.</summary>
    public DateTimeOffset? RejectedUntil => Volatile.Read(ref _rejectedUntilUtcTicks) is var t and > 0 ? new DateTimeOffset(t, TimeSpan.Zero) : null;

    /// <summary>The provider's answer that took the deployment out of rotation (status and message, secrets redacted).</summary>
    public string? RejectedBecause { get; private set; }

    internal bool IsRejected(DateTimeOffset now) => now.UtcTicks < Volatile.Read(ref _rejectedUntilUtcTicks);

    /// <summary>
    /// The provider refused this deployment's key or model: out of rotation until <paramref name="until"/>. Returns
    /// true when it was in rotation until now (so the transition is logged once).
    /// </summary>
    internal bool OnRejected(DateTimeOffset now, DateTimeOffset until, string? because)
    {
        lock (_gate)
        {
            var was = IsRejected(now);
            if (until.UtcTicks > _rejectedUntilUtcTicks)
            {
                Volatile.Write(ref _rejectedUntilUtcTicks, until.UtcTicks);
            }

            RejectedBecause = because ?? RejectedBecause;
            ReleaseProbe();
            return !was;
        }
    }

    internal void Enter() => Interlocked.Increment(ref _inFlight);

    internal void Exit() => Interlocked.Decrement(ref _inFlight);

    internal void RecordLatency(double ms, DateTimeOffset now, double smoothing)
    {
        var current = Volatile.Read(ref _latencyMs);
        Volatile.Write(ref _latencyMs, double.IsNaN(current) ? ms : current + (smoothing * (ms - current)));
        Volatile.Write(ref _lastSampleUtcTicks, now.UtcTicks);
    }

    /// <summary>True when the deployment has no recent latency sample and no probe was claimed lately.</summary>
    internal bool DueForProbe(DateTimeOffset now, TimeSpan interval)
    {
        var last = Volatile.Read(ref _lastSampleUtcTicks);
        if (last > 0 && now.UtcTicks - last < interval.Ticks)
        {
            return false;
        }

        // One probe per interval: do not send every concurrent request to an unmeasured deployment.
        var claim = Volatile.Read(ref _probeClaimUtcTicks);
        return claim == 0 || now.UtcTicks - claim >= Math.Min(interval.Ticks, TimeSpan.FromSeconds(5).Ticks);
    }

    internal bool TryClaimProbe(DateTimeOffset now)
    {
        var claim = Volatile.Read(ref _probeClaimUtcTicks);
        return Interlocked.CompareExchange(ref _probeClaimUtcTicks, now.UtcTicks, claim) == claim;
    }

    // ------------------------------------------------------------- circuit

    /// <summary>Whether routing may consider this deployment now (closed and not cooling, or due a half-open probe).</summary>
    internal bool IsSelectable(DateTimeOffset now)
    {
        var ticks = now.UtcTicks;
        if (ticks < Volatile.Read(ref _coolUntilUtcTicks) || ticks < Volatile.Read(ref _rejectedUntilUtcTicks))
        {
            return false;
        }

        return (CircuitState)Volatile.Read(ref _circuit) switch
        {
            CircuitState.Closed => true,
            CircuitState.Open => ticks >= Volatile.Read(ref _openUntilUtcTicks) && Volatile.Read(ref _probeInFlight) == 0,
            _ => false, // half-open: its one probe is out
        };
    }

    /// <summary>Takes the right to send a request: always when closed; the single probe when open and due.</summary>
    internal bool TryAcquire(DateTimeOffset now)
    {
        if (!IsSelectable(now))
        {
            return false;
        }

        if ((CircuitState)Volatile.Read(ref _circuit) == CircuitState.Closed)
        {
            return true;
        }

        if (Interlocked.CompareExchange(ref _probeInFlight, 1, 0) != 0)
        {
            return false;
        }

        Volatile.Write(ref _circuit, (int)CircuitState.HalfOpen);
        return true;
    }

    internal void OnSuccess(DateTimeOffset now, HealthOptions options)
    {
        Record(now, options, failed: false);
        if (Volatile.Read(ref _consecutiveFailures) != 0)
        {
            Volatile.Write(ref _consecutiveFailures, 0);
        }

        if (Volatile.Read(ref _circuit) != (int)CircuitState.Closed)
        {
            lock (_gate)
            {
                Volatile.Write(ref _circuit, (int)CircuitState.Closed);
                _opens = 0;
                Volatile.Write(ref _probeInFlight, 0);
            }
        }
    }

    /// <summary>A 5xx, timeout or broken stream: counts toward opening the circuit; a failed probe re-opens it longer.</summary>
    internal void OnFailure(DateTimeOffset now, HealthOptions options)
    {
        Record(now, options, failed: true);
        var consecutive = Interlocked.Increment(ref _consecutiveFailures);
        lock (_gate)
        {
            var circuit = (CircuitState)_circuit;
            if (circuit == CircuitState.HalfOpen)
            {
                Open(now, options);
                return;
            }

            if (circuit == CircuitState.Closed && (consecutive >= options.ConsecutiveFailures || RateExceeded(now, options)))
            {
                Open(now, options);
            }
        }
    }

    /// <summary>A 429: no new requests until Retry-After (or the configured cooldown).</summary>
    internal void OnRateLimited(DateTimeOffset now, TimeSpan? retryAfter, HealthOptions options)
    {
        var until = (now + (retryAfter ?? options.RateLimitCooldown)).UtcTicks;
        lock (_gate)
        {
            if (until > _coolUntilUtcTicks)
            {
                Volatile.Write(ref _coolUntilUtcTicks, until);
            }

            ReleaseProbe();
        }
    }

    /// <summary>Another instance saw a 429: stay away until <paramref name="until"/>.</summary>
    internal void ApplyCooldown(DateTimeOffset until)
    {
        lock (_gate)
        {
            if (until.UtcTicks > _coolUntilUtcTicks)
            {
                Volatile.Write(ref _coolUntilUtcTicks, until.UtcTicks);
            }
        }
    }

    /// <summary>Another instance opened the circuit: open it here too until <paramref name="until"/>, then probe.</summary>
    internal void ApplyOpen(DateTimeOffset until)
    {
        lock (_gate)
        {
            // A probe of this instance's own is already deciding; leave it to finish.
            if ((CircuitState)_circuit == CircuitState.HalfOpen || until.UtcTicks <= _openUntilUtcTicks && (CircuitState)_circuit == CircuitState.Open)
            {
                return;
            }

            Volatile.Write(ref _openUntilUtcTicks, until.UtcTicks);
            Volatile.Write(ref _circuit, (int)CircuitState.Open);
            Volatile.Write(ref _probeInFlight, 0);
        }
    }

    /// <summary>An outcome that says nothing about health (a 400, a cancellation): a probe may go again.</summary>
    internal void OnNeutral()
    {
        if (Volatile.Read(ref _circuit) == (int)CircuitState.HalfOpen)
        {
            lock (_gate)
            {
                ReleaseProbe();
            }
        }
    }

    private void ReleaseProbe()
    {
        if (_circuit == (int)CircuitState.HalfOpen)
        {
            // Back to open with the cooldown already over: the next request may probe.
            Volatile.Write(ref _circuit, (int)CircuitState.Open);
        }

        Volatile.Write(ref _probeInFlight, 0);
    }

    private void Open(DateTimeOffset now, HealthOptions options)
    {
        var factor = Math.Pow(2, Math.Min(_opens, 20));
        var cooldown = TimeSpan.FromTicks((long)Math.Min(options.MaxCooldown.Ticks, options.Cooldown.Ticks * factor));
        _opens++;
        Volatile.Write(ref _openUntilUtcTicks, (now + cooldown).UtcTicks);
        Volatile.Write(ref _circuit, (int)CircuitState.Open);
        Volatile.Write(ref _probeInFlight, 0);
    }

    // Ten buckets over the window; a bucket is reset the first time it is written in a new period.
    private void Record(DateTimeOffset now, HealthOptions options, bool failed)
    {
        var width = Math.Max(1, options.Window.Ticks / Buckets);
        var epoch = now.UtcTicks / width;
        var i = (int)(epoch % Buckets);
        if (Volatile.Read(ref _bucketEpoch[i]) != epoch)
        {
            lock (_bucketEpoch)
            {
                if (_bucketEpoch[i] != epoch)
                {
                    Volatile.Write(ref _bucketTotal[i], 0);
                    Volatile.Write(ref _bucketFailed[i], 0);
                    Volatile.Write(ref _bucketEpoch[i], epoch);
                }
            }
        }

        Interlocked.Increment(ref _bucketTotal[i]);
        if (failed)
        {
            Interlocked.Increment(ref _bucketFailed[i]);
        }
    }

    private bool RateExceeded(DateTimeOffset now, HealthOptions options)
    {
        var width = Math.Max(1, options.Window.Ticks / Buckets);
        var current = now.UtcTicks / width;
        long total = 0, failed = 0;
        for (var i = 0; i < Buckets; i++)
        {
            var e = Volatile.Read(ref _bucketEpoch[i]);
            if (e > current - Buckets && e <= current)
            {
                total += Volatile.Read(ref _bucketTotal[i]);
                failed += Volatile.Read(ref _bucketFailed[i]);
            }
        }

        return total >= options.MinimumRequests && (double)failed / total >= options.FailureRate;
    }
}
