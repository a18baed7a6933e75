using System.Threading.Tasks.Sources;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Pipeline;

/// <summary>Where the request is tried: its group's fallback chain, the deployment it is at, and every attempt with its outcome.</summary>
internal sealed partial class WorkItem
{
    private int _fallbackPosition = -1;
    private int _contextFallbackPosition = -1;

    /// <summary>Moves to the next group of the root group's fallback chain, if there is one.</summary>
    public bool TryAdvanceFallback()
    {
        var chain = RootGroup.Fallbacks;
        if (_fallbackPosition + 1 >= chain.Count)
        {
            return false;
        }

        Group = chain[++_fallbackPosition];
        return true;
    }

    /// <summary>Moves to the next larger-context group, used only after a context-length error.</summary>
    public bool TryAdvanceContextFallback()
    {
        var chain = RootGroup.ContextWindowFallbacks;
        if (_contextFallbackPosition + 1 >= chain.Count)
        {
            return false;
        }

        Group = chain[++_contextFallbackPosition];
        return true;
    }


    private Deployment? _current;
    private Deployment? _entered;

    /// <summary>The deployment chosen by the router for the current attempt; counted in its in-flight load until the attempt ends.</summary>
    public Deployment? Current
    {
        get
        {
            Live();
            return _current;
        }

        set
        {
            ReleaseDeployment();
            _current = value;
            if (value is not null)
            {
                value.State.Enter();
                Volatile.Write(ref _entered, value);
            }
        }
    }

    /// <summary>
    /// Takes the request out of its deployment's in-flight count, once. Called as soon as the attempt's outcome is
    /// known — before the caller is answered, so a caller that immediately sends again sees the load as it is.
    /// </summary>
    public bool ReleaseDeployment()
    {
        Live();
        var entered = Interlocked.Exchange(ref _entered, null);
        entered?.State.Exit();
        return entered is not null;
    }

    /// <summary>The failure of the last attempt, read by the dead-letter stage.</summary>
    public ProviderFailure? LastFailure
    {
        get
        {
            Live();
            return field;
        }

        set;
    }

    public IReadOnlyList<GatewayAttempt> Attempts => (IReadOnlyList<GatewayAttempt>?)Volatile.Read(ref _attempts) ?? [];

    public int AttemptCount => Volatile.Read(ref _attempts)?.Length ?? 0;

    public bool HasTried(Deployment deployment)
    {
        var attempts = Volatile.Read(ref _attempts);
        if (attempts is null)
        {
            return false;
        }

        foreach (var a in attempts)
        {
            if (ReferenceEquals(a.Deployment, deployment))
            {
                return true;
            }
        }

        return false;
    }

    public void AddAttempt(Deployment deployment, GatewayAttempt attempt)
    {
        // Only the owning stage adds attempts. The array is never written once published: each attempt publishes a new
        // one a slot longer, so a snapshot taken by a cancellation callback on another thread is the array it reads, with
        // no lock and no list (a request makes one attempt, rarely more than three; a list and its array were 72 B per
        // request against 32 for one array of one).
        Live();
        attempt.Deployment = deployment;
        var attempts = _attempts;
        GatewayAttempt[] grown;
        if (attempts is null)
        {
            grown = [attempt];
        }
        else
        {
            grown = new GatewayAttempt[attempts.Length + 1];
            attempts.CopyTo(grown, 0);
            grown[^1] = attempt;
        }

        Volatile.Write(ref _attempts, grown);
    }

    private Deployment? _sentTo;
    private long _sentAt;
    private int _sentIndex;
    private Deployment? _hedgeTo;
    private long _hedgeAt;
    private int _hedgeIndex;

    /// <summary>
    /// An attempt leaves for <paramref name="deployment"/> at <paramref name="at"/> (a timestamp): it is recorded when it
    /// ends, which a cancellation does not wait for (see <see cref="AttemptsWithUnrecorded"/>). A hedged attempt's first
    /// leg too; its second is <see cref="SendingHedge"/>.
    /// </summary>
    public void Sending(Deployment deployment, long at)
    {
        _sentIndex = AttemptCount;
        _sentAt = at;
        Volatile.Write(ref _sentTo, deployment);
    }

    /// <summary>A hedged attempt's second leg leaves for <paramref name="deployment"/> (both legs are recorded together, when both ended).</summary>
    public void SendingHedge(Deployment deployment, long at)
    {
        _hedgeIndex = AttemptCount;
        _hedgeAt = at;
        Volatile.Write(ref _hedgeTo, deployment);
    }

    /// <summary>
    /// The attempts with the one in flight when it is not recorded yet — a cancellation answers the caller before the
    /// attempt's worker unwinds and records it (<see cref="Cancel"/>; every other end of a sent attempt is recorded by its
    /// worker first) — as the worker will record it: cancelled, its time so far. Null when nothing is missing. One
    /// snapshot is both checked and listed, since the worker may record its attempt at any moment. A hedged attempt's two
    /// legs, both.
    /// </summary>
    public IReadOnlyList<GatewayAttempt>? AttemptsWithUnrecorded(TimeProvider time)
    {
        var recorded = SnapshotAttempts();
        if (Volatile.Read(ref _sentTo) is not { } deployment)
        {
            return null;
        }

        // A second leg of this attempt (one of an earlier attempt was recorded with it: its index is older).
        var hedge = Volatile.Read(ref _hedgeTo) is { } h && _hedgeIndex == _sentIndex ? h : null;
        var reason = Reason.ToString().ToLowerInvariant();
        if (recorded.Count == _sentIndex)
        {
            var sent = Unrecorded(deployment, _sentAt);
            return hedge is null ? [.. recorded, sent] : [.. recorded, sent, Unrecorded(hedge, _hedgeAt)];
        }

        // The legs are recorded one after the other as their worker unwinds (the one that ended first, then the other):
        // caught between the two, the one not recorded yet is listed as it will be.
        if (hedge is not null && recorded.Count == _sentIndex + 1)
        {
            var first = recorded[_sentIndex].Deployment;
            return ReferenceEquals(first, hedge) ? [.. recorded, Unrecorded(deployment, _sentAt)]
                : ReferenceEquals(first, deployment) ? [.. recorded, Unrecorded(hedge, _hedgeAt)]
                : null;
        }

        return null;

        GatewayAttempt Unrecorded(Deployment to, long at) =>
            new(to.ProviderName, to.Model, AttemptOutcome.Cancelled, time.GetElapsedTime(at), null, reason) { Deployment = to };
    }

    /// <summary>
    /// Where the last attempt went when it was in flight as the request was given up on — not recorded yet (a cancellation
    /// answers the caller before the attempt's worker unwinds: see <see cref="AttemptsWithUnrecorded"/>), or recorded since
    /// as cancelled — else null.
    /// </summary>
    public Deployment? InFlightTo
    {
        get
        {
            if (Volatile.Read(ref _sentTo) is not { } deployment)
            {
                return null;
            }

            var recorded = SnapshotAttempts();
            return recorded.Count == _sentIndex
                || (recorded.Count == _sentIndex + 1 && recorded[_sentIndex].Outcome == AttemptOutcome.Cancelled)
                || LegsCancelled(recorded) ? deployment : null;
        }
    }

    /// <summary>
    /// The second leg of the hedged attempt in flight as the request was given up on (see <see cref="InFlightTo"/>): not
    /// recorded yet, or recorded since — both legs together — as cancelled; else null.
    /// </summary>
    public Deployment? HedgeInFlightTo
    {
        get
        {
            if (Volatile.Read(ref _sentTo) is null || Volatile.Read(ref _hedgeTo) is not { } hedge || _hedgeIndex != _sentIndex)
            {
                return null;
            }

            var recorded = SnapshotAttempts();
            return recorded.Count == _sentIndex || LegsCancelled(recorded) ? hedge : null;
        }
    }

    /// <summary>
    /// A hedged attempt's legs recorded since, one or both (each as its worker unwinds), and every one recorded as
    /// cancelled: the request was given up on with both in flight.
    /// </summary>
    private bool LegsCancelled(IReadOnlyList<GatewayAttempt> recorded)
    {
        if (Volatile.Read(ref _hedgeTo) is null || _hedgeIndex != _sentIndex || recorded.Count <= _sentIndex || recorded.Count > _sentIndex + 2)
        {
            return false;
        }

        for (var i = _sentIndex; i < recorded.Count; i++)
        {
            if (recorded[i].Outcome != AttemptOutcome.Cancelled)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The attempts once the item is answered (no further attempt can be added): the array itself.</summary>
    public IReadOnlyList<GatewayAttempt> FinalAttempts => (IReadOnlyList<GatewayAttempt>?)Volatile.Read(ref _attempts) ?? [];

    /// <summary>The attempts so far, from any thread: the published array is never written again, so it is its own snapshot.</summary>
    public IReadOnlyList<GatewayAttempt> SnapshotAttempts() => FinalAttempts;
}
