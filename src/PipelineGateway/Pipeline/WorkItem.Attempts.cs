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
        get => _current;
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
        var entered = Interlocked.Exchange(ref _entered, null);
        entered?.State.Exit();
        return entered is not null;
    }

    /// <summary>The failure of the last attempt, read by the dead-letter stage.</summary>
    public ProviderFailure LastFailure { get; set; }

    public IReadOnlyList<GatewayAttempt> Attempts => (IReadOnlyList<GatewayAttempt>?)_attempts ?? [];

    public int AttemptCount => _attempts?.Count ?? 0;

    /// <summary>True when this request already made an attempt at the deployment.</summary>
    public bool HasTried(Deployment deployment)
    {
        var attempts = _attempts;
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
        // Only the owning stage adds attempts; the list's own lock guards against a concurrent snapshot taken by a
        // cancellation callback on another thread (the list is the lock: no lock object per request, and no lock on
        // the item that outside code could also take).
        attempt.Deployment = deployment;
        var attempts = Volatile.Read(ref _attempts) ?? Interlocked.CompareExchange(ref _attempts, new List<GatewayAttempt>(2), null) ?? _attempts!;
        lock (attempts)
        {
            attempts.Add(attempt);
        }
    }

    /// <summary>
    /// The attempt list itself, for a request that just succeeded: nothing appends to it after that,
    /// so no copy is needed on the hot path.
    /// </summary>
    public IReadOnlyList<GatewayAttempt> FinalAttempts => (IReadOnlyList<GatewayAttempt>?)_attempts ?? [];

    /// <summary>A copy of the attempt list that later attempts cannot change.</summary>
    public IReadOnlyList<GatewayAttempt> SnapshotAttempts()
    {
        if (Volatile.Read(ref _attempts) is not { } attempts)
        {
            return [];
        }

        lock (attempts)
        {
            return attempts.ToArray();
        }
    }
}
