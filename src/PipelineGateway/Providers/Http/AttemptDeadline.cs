namespace PipelineGateway.Providers.Http;

/// <summary>
/// One upstream attempt's cancellation: the caller's token and a time limit on the injected clock, in one
/// <see cref="CancellationTokenSource"/>. The limit can be restarted (a stream's idle timeout after every chunk).
/// </summary>
/// <remarks>
/// This replaces Microsoft.Extensions.Http.Resilience's handler with a Polly timeout, deliberately: on a real socket
/// every await in that handler completes asynchronously, and its layers (resilience context, timeout strategy, pooled
/// timer source, their boxed state machines) allocated 1.27 KB of the gateway's 12 KB per request and took 2.6% of
/// its CPU at saturation (docs/benchmarks.md, "The upstream HTTP stack"). A canned-handler microbenchmark, where
/// every await completes at once, had shown only 0.26 µs and 150 B. Nothing else of Polly was in use: retries and
/// fallback belong to the dead-letter stage.
/// </remarks>
internal sealed class AttemptDeadline : IDisposable
{
    private readonly CancellationToken _caller;

    /// <summary>Null when the caller's own deadline comes first: the caller's token is then the attempt's.</summary>
    private readonly CancellationTokenSource? _source;

    /// <summary>For a clock other than the system's (tests' FakeTimeProvider); the system clock uses the source's own timer.</summary>
    private readonly ITimer? _timer;

    /// <param name="callerDeadline">
    /// When <paramref name="caller"/> fires by itself (the request's timeout), if known. When it comes before this
    /// attempt's limit — always, with the default 60 s request timeout and 120 s attempt timeout — the limit could
    /// never end the attempt, and no linked source and timer are made for it: a source, a timer and two callback
    /// registrations fewer per request. Not for a limit that is restarted (streams).
    /// </param>
    public AttemptDeadline(TimeProvider time, TimeSpan limit, CancellationToken caller, DateTimeOffset? callerDeadline = null)
    {
        _caller = caller;
        if (callerDeadline is { } until && caller.CanBeCanceled && until - time.GetUtcNow() <= limit)
        {
            return;
        }

        _source = CancellationTokenSource.CreateLinkedTokenSource(caller);
        if (ReferenceEquals(time, TimeProvider.System))
        {
            _source.CancelAfter(limit);
        }
        else
        {
            _timer = time.CreateTimer(static s => Cancel((CancellationTokenSource)s!), _source, limit, Timeout.InfiniteTimeSpan);
        }
    }

    public CancellationToken Token => _source?.Token ?? _caller;

    /// <summary>True when the limit ran out (not the caller's cancellation).</summary>
    public bool TimedOut => _source is { IsCancellationRequested: true } && !_caller.IsCancellationRequested;

    /// <summary>Starts the limit again from now, with a new length (a deadline made with its own limit only).</summary>
    public void Restart(TimeSpan limit)
    {
        if (_source is null)
        {
            throw new InvalidOperationException("This attempt runs on its caller's deadline: it has no limit of its own to restart.");
        }

        if (_timer is null)
        {
            _source.CancelAfter(limit);
        }
        else
        {
            _timer.Change(limit, Timeout.InfiniteTimeSpan);
        }
    }

    public void Dispose()
    {
        _timer?.Dispose();
        _source?.Dispose();
    }

    private static void Cancel(CancellationTokenSource source)
    {
        try
        {
            source.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The attempt ended as the timer fired.
        }
    }
}
