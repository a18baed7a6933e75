using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// The admission waiting room's door. A request is <i>inside</i> from the moment it is accepted until it holds an
/// in-flight slot (or ends before): queued for the admission stage, waiting for a rate-limit permit or a store's
/// decision, or waiting for a slot. At most <c>Pipeline:AdmissionQueueCapacity</c> requests are inside. Each tenant's
/// share is <c>Fairness:MaxQueuedPerKey</c>; past it, a tenant may use more of the room only while more than a share of
/// it stays free — the last <c>MaxQueuedPerKey</c> places are kept for tenants within their share. So one tenant's burst
/// with the gateway otherwise idle is not refused at its share (3,000 connections opening at once put more than 256 of
/// one tenant inside for an instant, with every worker free), and another tenant still always finds its share's worth of room.
/// </summary>
/// <remarks>
/// A request that finds no room is refused at once (<see cref="SubmitMode.FailFast"/>) or its caller waits at the
/// door (<see cref="SubmitMode.Wait"/>) — before any pipeline item exists for it, so a waiting caller costs the
/// gateway one small waiter, and no stage ever waits for room. Waiters are let in per tenant in arrival order; when
/// room frees, a tenant with room in its own share goes next, in turn with the others.
/// </remarks>
internal sealed class AdmissionGate : IDisposable
{
    private readonly object _lock = new();
    private readonly Dictionary<string, Tenant> _tenants = new(StringComparer.Ordinal);
    private readonly Queue<Tenant> _turns = new();
    private readonly int _capacity;
    private readonly int _perKey;
    private readonly int _maxTenants;
    private readonly FairnessOptions _fairness;
    private readonly TimeProvider _time;
    private readonly PriorityQueue<Waiter, long> _deadlines = new();
    private readonly ITimer _deadlineTimer;
    private long _timerDue = long.MaxValue;
    private int _inside;
    private int _waiters;
    private bool _closed;

    public AdmissionGate(IOptions<GatewayOptions> options, TimeProvider time)
    {
        var o = options.Value;
        _capacity = o.Pipeline.AdmissionQueueCapacity;
        _perKey = Math.Min(o.Fairness.MaxQueuedPerKey, _capacity);
        _maxTenants = o.Fairness.MaxTenants;
        _fairness = o.Fairness;
        _time = time;

        // One timer for every waiter's deadline (a heap by deadline), not one per waiter: a crowd at the door costs
        // O(log n) per caller and nothing per tick.
        _deadlineTimer = time.CreateTimer(static s => ((AdmissionGate)s!).ExpireWaiters(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    public void Dispose() => _deadlineTimer.Dispose();

    /// <summary>Requests inside the waiting room now.</summary>
    public int Inside => Volatile.Read(ref _inside);

    /// <summary>Callers waiting at the door (no pipeline item yet).</summary>
    public int Waiting => Volatile.Read(ref _waiters);

    /// <summary>Tenants known now (inside, or waiting at the door).</summary>
    public int TenantCount
    {
        get
        {
            lock (_lock)
            {
                return _tenants.Count;
            }
        }
    }

    /// <summary>Lets the request in if its tenant's share and the room allow; null when it must wait or be refused.</summary>
    public Tenant? TryEnter(string key)
    {
        lock (_lock)
        {
            if (_closed)
            {
                return null;
            }

            var tenant = Find(key);
            if (tenant is null)
            {
                return null;
            }

            if (tenant.WaiterCount > 0 || !HasRoom(tenant))
            {
                Forget(tenant);
                return null;
            }

            Admit(tenant);
            return tenant;
        }
    }

    /// <summary>
    /// Waits at the door until the tenant may enter. Fails with the request's deadline (<paramref name="timeout"/>),
    /// the caller's cancellation, or <see cref="GatewayUnavailableException"/> when the gateway stops accepting.
    /// </summary>
    public Task<Tenant> WaitAsync(string key, TimeSpan timeout, CancellationToken cancellationToken)
    {
        Waiter waiter;
        lock (_lock)
        {
            if (_closed)
            {
                return Task.FromException<Tenant>(new GatewayUnavailableException("The gateway is not accepting requests (shutting down)."));
            }

            var tenant = Find(key);
            if (tenant is null)
            {
                return Task.FromException<Tenant>(TooManyTenants());
            }

            if (tenant.WaiterCount == 0 && HasRoom(tenant))
            {
                Admit(tenant);
                return Task.FromResult(tenant);
            }

            waiter = new Waiter(this, tenant, timeout);
            if (tenant.WaiterCount == 0)
            {
                _turns.Enqueue(tenant);
            }

            tenant.Waiters.AddLast(waiter);
            tenant.Live++;
            _waiters++;
            WatchDeadline(waiter, timeout);
        }

        waiter.Arm(cancellationToken);
        return waiter.Task;
    }

    private void WatchDeadline(Waiter waiter, TimeSpan timeout)
    {
        var now = _time.GetUtcNow();
        var due = timeout >= DateTimeOffset.MaxValue - now ? DateTimeOffset.MaxValue.UtcTicks : (now + timeout).UtcTicks;
        if (_deadlines.Count > (2 * _waiters) + 64)
        {
            // Waiters let in or gone stay in the heap until their deadline; rebuild it when they outnumber the rest.
            var live = _deadlines.UnorderedItems.Where(e => !e.Element.Task.IsCompleted).ToList();
            _deadlines.Clear();
            _deadlines.EnqueueRange(live);
        }

        _deadlines.Enqueue(waiter, due);
        if (due < _timerDue)
        {
            _timerDue = due;
            _deadlineTimer.Change(TimeSpan.FromTicks(Math.Max(0, due - now.UtcTicks)), Timeout.InfiniteTimeSpan);
        }
    }

    private void ExpireWaiters()
    {
        List<Waiter>? expired = null;
        lock (_lock)
        {
            var now = _time.GetUtcNow().UtcTicks;
            while (_deadlines.TryPeek(out var waiter, out var due) && (due <= now || waiter.Task.IsCompleted))
            {
                _deadlines.Dequeue();
                if (!waiter.Task.IsCompleted)
                {
                    (expired ??= []).Add(waiter);
                }
            }

            _timerDue = _deadlines.TryPeek(out _, out var next) ? next : long.MaxValue;
            if (_timerDue != long.MaxValue)
            {
                _deadlineTimer.Change(TimeSpan.FromTicks(Math.Max(0, _timerDue - now)), Timeout.InfiniteTimeSpan);
            }
        }

        foreach (var w in expired ?? [])
        {
            w.Expire();
        }
    }

    /// <summary>The request left the waiting room (it holds a slot now, or it ended): room for the next.</summary>
    public void Leave(Tenant tenant)
    {
        List<Waiter>? admitted = null;
        lock (_lock)
        {
            tenant.Inside--;
            _inside--;
            LetIn(tenant, ref admitted);
            Forget(tenant);
        }

        Release(admitted);
    }

    /// <summary>Stops letting anyone in: every caller waiting at the door is answered with <paramref name="error"/>.</summary>
    public int Close(Func<Exception> error)
    {
        List<Waiter> waiting = [];
        lock (_lock)
        {
            _closed = true;
            foreach (var tenant in _turns)
            {
                while (tenant.WaiterCount > 0)
                {
                    waiting.Add(tenant.Waiters.RemoveFirst());
                }
            }

            _turns.Clear();
            _waiters = 0;
            foreach (var tenant in _tenants.Values)
            {
                tenant.Live = 0;
            }
        }

        foreach (var w in waiting)
        {
            w.TrySetException(error());
        }

        return waiting.Count;
    }

    /// <summary>Why a request found no room: the tenant table is full, or the waiting room (or the tenant's share) is.</summary>
    public QueueFullException Refusal(string key, TimeSpan retryAfter)
    {
        lock (_lock)
        {
            if (!_tenants.ContainsKey(key) && _tenants.Count >= _maxTenants)
            {
                return TooManyTenants();
            }

            return _inside >= _capacity || !_tenants.TryGetValue(key, out var tenant) || tenant.Inside < _perKey
                ? new QueueFullException(retryAfter)
                : new QueueFullException(retryAfter, $"This tenant already has {tenant.Inside} requests waiting in the gateway, past its share (Fairness:MaxQueuedPerKey = {_perKey}), and the rest of the room is kept for other tenants; retry after {retryAfter.TotalSeconds:F3} s.");
        }
    }

    private QueueFullException TooManyTenants() =>
        new(TimeSpan.FromSeconds(1), $"The gateway is tracking {_maxTenants} tenants, its configured maximum (Fairness:MaxTenants); retry shortly.");

    /// <summary>
    /// Within its share a tenant enters while the room has a place; past it, only while more than a share's worth of
    /// places stays free (borrowed room, for a burst while others are quiet; never the reserve other tenants need).
    /// </summary>
    private bool HasRoom(Tenant tenant) => _inside < (tenant.Inside < _perKey ? _capacity : _capacity - _perKey);

    private void Admit(Tenant tenant)
    {
        tenant.Inside++;
        _inside++;
    }

    /// <summary>Lets waiting callers in while there is room: the leaving tenant's own first, then the others in turn.</summary>
    private void LetIn(Tenant leaving, ref List<Waiter>? admitted)
    {
        if (leaving.WaiterCount > 0 && HasRoom(leaving))
        {
            TakeFirst(leaving, ref admitted);
        }

        // Each tenant with waiters gets one look per round; one with no room (its share used, no room to borrow) waits
        // for its own leave or for the room to empty.
        for (var n = _turns.Count; n > 0 && _inside < _capacity; n--)
        {
            var tenant = _turns.Dequeue();
            if (tenant.WaiterCount == 0)
            {
                continue;
            }

            if (HasRoom(tenant))
            {
                TakeFirst(tenant, ref admitted);
            }

            if (tenant.WaiterCount > 0)
            {
                _turns.Enqueue(tenant);
            }
        }
    }

    private void TakeFirst(Tenant tenant, ref List<Waiter>? admitted)
    {
        while (tenant.WaiterCount > 0)
        {
            var waiter = tenant.Waiters.RemoveFirst();
            if (waiter.Task.IsCompleted)
            {
                continue; // gave up (cancelled or timed out) while waiting: counted out already
            }

            _waiters--;
            tenant.Live--;
            waiter.Picked = true;
            Admit(tenant);
            (admitted ??= []).Add(waiter);
            return;
        }
    }

    private static void Release(List<Waiter>? admitted)
    {
        if (admitted is null)
        {
            return;
        }

        foreach (var w in admitted)
        {
            if (!w.TrySetResult(w.Tenant))
            {
                // Gave up between the pick and now: pass the room on.
                w.Gate.Leave(w.Tenant);
            }
        }
    }

    private Tenant? Find(string key)
    {
        if (_tenants.TryGetValue(key, out var tenant))
        {
            return tenant;
        }

        if (_tenants.Count >= _maxTenants)
        {
            return null;
        }

        tenant = new Tenant(key, _fairness.WeightOf(key));
        _tenants.Add(key, tenant);
        return tenant;
    }

    private void Forget(Tenant tenant)
    {
        if (tenant.Inside == 0 && tenant.WaiterCount == 0)
        {
            _tenants.Remove(tenant.Key);
        }
    }

    private void OnWaiterGaveUp(Waiter waiter)
    {
        lock (_lock)
        {
            var tenant = waiter.Tenant;
            if (_closed || waiter.Picked)
            {
                return; // counted out already (shut, or let in just as it gave up: its room is passed on)
            }

            _waiters--;
            tenant.Live--;
            if (tenant.Live == 0)
            {
                // Every waiter of the tenant gave up: drop the dead ones now, and the tenant if nothing else keeps it.
                while (tenant.WaiterCount > 0)
                {
                    tenant.Waiters.RemoveFirst();
                }

                Forget(tenant);
            }
        }
    }

    /// <summary>One tenant at the door: how many of its requests are inside, and its callers waiting to enter.</summary>
    internal sealed class Tenant(string key, double weight)
    {
        public string Key { get; } = key;

        public double Weight { get; } = weight;

        public int Inside { get; set; }

        /// <summary>Waiters at the door that have not given up.</summary>
        public int Live { get; set; }

        private Deque<Waiter>? _waiters;

        /// <summary>Made when the tenant's first caller has to wait: most tenants come and go without one.</summary>
        public Deque<Waiter> Waiters => _waiters ??= new();

        public int WaiterCount => _waiters?.Count ?? 0;
    }

    /// <summary>A caller waiting at the door, with its deadline and cancellation.</summary>
    internal sealed class Waiter(AdmissionGate gate, Tenant tenant, TimeSpan timeout) : TaskCompletionSource<Tenant>(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        private CancellationTokenRegistration _registration;

        public AdmissionGate Gate { get; } = gate;

        /// <summary>Set under the gate's lock when it was let in (it may still give up before it hears so).</summary>
        public bool Picked { get; set; }

        public Tenant Tenant { get; } = tenant;

        public void Arm(CancellationToken cancellationToken)
        {
            if (!cancellationToken.CanBeCanceled)
            {
                return;
            }

            _registration = cancellationToken.UnsafeRegister(static (s, ct) => ((Waiter)s!).GiveUp(new RequestCancelledException([], ct)), this);

            // Last, so a waiter let in (or given up) while this ran is disarmed after it was armed.
            _ = Task.ContinueWith(static (_, s) => ((Waiter)s!)._registration.Dispose(), this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        /// <summary>Its deadline passed at the door (the gate's deadline timer says so).</summary>
        public void Expire() => GiveUp(new DeadlineExceededException(timeout, [], $"The request waited at the gateway's door for its whole deadline of {timeout.TotalMilliseconds:F0} ms: the waiting room stayed full."));

        private void GiveUp(Exception error)
        {
            if (TrySetException(error))
            {
                Gate.OnWaiterGaveUp(this);
            }
        }
    }
}
