using System.Collections.Concurrent;
using System.ComponentModel.DataAnnotations;
using System.Globalization;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Cost;

public enum BudgetScope
{
    /// <summary>One budget for all traffic.</summary>
    Global,

    /// <summary>One budget per gateway key (<see cref="GatewayRequestOptions.RateLimitKey"/>), or for one key when <see cref="BudgetOptions.Key"/> is set.</summary>
    Key,

    /// <summary>
    /// One budget per end user — the user a request names (OpenAI's <c>user</c> or <c>safety_identifier</c>, Anthropic's
    /// <c>metadata.user_id</c>) — or for one user when <see cref="BudgetOptions.User"/> is set; a request that names none
    /// is not under it. With <see cref="BudgetOptions.Key"/> set, only that key's users.
    /// </summary>
    User,
}

public enum BudgetPeriod
{
    Day,
    Month,
}

/// <summary>A spending limit in USD per UTC day or month (section <c>Gateway:Budgets</c>).</summary>
public sealed class BudgetOptions
{
    public string? Name { get; set; }

    public BudgetScope Scope { get; set; } = BudgetScope.Global;

    /// <summary>With Scope Key: only this key's budget (otherwise every key gets its own of this size). With Scope User: only this key's users.</summary>
    public string? Key { get; set; }

    /// <summary>With Scope User: only this end user's budget (otherwise every user gets its own of this size).</summary>
    public string? User { get; set; }

    /// <summary>
    /// With Scope User and no <see cref="User"/>: how many users' accounts this instance keeps in a period (a caller
    /// chooses the names: one per request would otherwise grow without bound). A request naming a user past it is
    /// refused with the budget's error. Not applied to accounts kept in Redis (they expire with their period).
    /// </summary>
    [Range(1, 100_000_000)]
    public int MaxUsers { get; set; } = 100_000;

    public BudgetPeriod Period { get; set; } = BudgetPeriod.Month;

    [Range(0.0, 1_000_000_000.0)]
    public decimal LimitUsd { get; set; }

    public string DisplayName => Name ?? $"{Scope switch
    {
        BudgetScope.Global => "global",
        BudgetScope.User => User is null ? (Key is null ? "per-user" : $"{Key} per-user") : "user",
        _ => Key ?? "per-key",
    }} {(Period == BudgetPeriod.Day ? "daily" : "monthly")} ${LimitUsd}";
}

/// <summary>
/// Budgets: admission reserves a request's estimated cost (its token estimate at the dearest price among the
/// group's deployments), the actual cost settles it. A request is refused when spent + reserved + its estimate
/// would pass the limit, so concurrent requests can overspend by at most what they were reserved for and
/// then exceeded. Amounts are whole nano-dollars under a lock per budget partition (not shared by all requests).
/// </summary>
internal sealed class BudgetTracker(IOptions<GatewayOptions> options, PricingTable pricing, TimeProvider time, IDistributedBudgetStore? store = null) : Pipeline.ICompletionListener, IGatewayBudgets
{
    private readonly BudgetOptions[] _budgets = [.. options.Value.Budgets];
    private readonly ConcurrentDictionary<(int Budget, string Key), Account> _accounts = new();

    public bool IsEnabled => _budgets.Length > 0;

    /// <summary>True when the accounts are shared through a distributed store (reservation is then asynchronous).</summary>
    public bool IsDistributed => store is not null && _budgets.Length > 0;

    /// <summary>
    /// Reserves in the shared store: all accounts or none. Throws <see cref="BudgetExceededException"/> on a
    /// refusal; with the store unreachable, fails open to the local accounts or refuses, as configured.
    /// </summary>
    public async ValueTask ReserveSharedAsync(WorkItem item)
    {
        var estimate = ToNano(Estimate(item));
        var key = item.Request.Gateway?.RateLimitKey ?? string.Empty;
        var user = item.Request.AccountedUser;
        var now = time.GetUtcNow();
        var refs = new List<BudgetAccountRef>(_budgets.Length);
        foreach (var i in Applicable(key, user))
        {
            refs.Add(SharedRef(i, key, user, now).Ref);
        }

        if (refs.Count == 0)
        {
            item.BudgetReservation = NoReservation;
            return;
        }

        var result = await store!.TryReserveAsync(refs, estimate, CancellationToken.None).ConfigureAwait(false);
        if (!result.Reserved && !result.Unavailable && !_settling.IsEmpty)
        {
            // Refused while this instance's settlements are still on their way (they are sent after the answer): a
            // caller that asked again the moment its answer came would find its last estimate still reserved. Once
            // they landed, asked once more — nothing is added to a reservation that is not refused.
            await Task.WhenAll(_settling.Keys).ConfigureAwait(false);
            result = await store.TryReserveAsync(refs, estimate, CancellationToken.None).ConfigureAwait(false);
        }

        if (result.Unavailable)
        {
            if (store.FailOpen)
            {
                Reserve(item); // this instance's own accounts stand in
                return;
            }

            var first = refs[0];
            throw new BudgetExceededException(first.DisplayName, FromNano(first.LimitNanoUsd), 0m,
                "The shared budget store is unreachable and the gateway is configured to fail closed, so spending cannot be checked; retry shortly.");
        }

        if (!result.Reserved)
        {
            var refused = refs[Math.Clamp(result.RefusedBy, 0, refs.Count - 1)];
            if (result.NoRoomForUser)
            {
                throw NoRoomForUser(refused.DisplayName, FromNano(refused.LimitNanoUsd), refused.MaxUsers, "across the fleet");
            }

            throw Exceeded(refused.DisplayName, FromNano(refused.LimitNanoUsd), FromNano(result.SpentAndReservedNanoUsd), estimate);
        }

        item.SharedBudgetReservation = new SharedReservation(refs, estimate);
    }

    /// <summary>A new user past a budget's <see cref="BudgetOptions.MaxUsers"/> (<paramref name="where"/>: this instance's, or the fleet's in Redis).</summary>
    private static BudgetExceededException NoRoomForUser(string budget, decimal limit, int maxUsers, string where) =>
        new(budget, limit, 0m, $"Budget '{budget}' keeps the accounts of at most {maxUsers} users in a period {where}, and this request names a user it has no room for; a user it already keeps is served.");

    /// <summary>This instance's settlements sent to the shared store and not landed yet.</summary>
    private readonly ConcurrentDictionary<Task, byte> _settling = new();

    /// <summary>One budget's account in the shared store for a key and user now, and when its period ends.</summary>
    private (BudgetAccountRef Ref, DateTimeOffset End) SharedRef(int i, string key, string? user, DateTimeOffset now)
    {
        var b = _budgets[i];
        var (period, end) = b.Period == BudgetPeriod.Day
            ? ("d" + now.UtcDateTime.ToString("yyyyMMdd", CultureInfo.InvariantCulture), new DateTimeOffset(now.UtcDateTime.Date.AddDays(1), TimeSpan.Zero))
            : ("m" + now.UtcDateTime.ToString("yyyyMM", CultureInfo.InvariantCulture), new DateTimeOffset(now.Year, now.Month, 1, 0, 0, 0, TimeSpan.Zero).AddMonths(1));
        var everyUser = b.Scope == BudgetScope.User && b.User is null; // the users are the callers' to name: bounded
        return (new BudgetAccountRef($"{i}:{AccountKey(b, key, user)}", period, ToNano(b.LimitUsd), end - now + TimeSpan.FromDays(1), b.DisplayName)
        {
            MaxUsers = everyUser ? b.MaxUsers : 0,
            UsersId = everyUser ? $"users:{i}" : null,
        }, end);
    }

    /// <inheritdoc />
    public async ValueTask<IReadOnlyList<BudgetStanding>> GetStandingAsync(string? key, string? user, CancellationToken cancellationToken = default) =>
        await StandingAsync(key ?? string.Empty, user, cancellationToken).ConfigureAwait(false)
        ?? throw new GatewayUnavailableException("The shared budget store (Redis) cannot be reached, so the fleet's spend cannot be read; retry shortly.");

    /// <summary>
    /// Where a request by gateway key <paramref name="key"/> naming end user <paramref name="user"/> stands in every
    /// budget it would be charged in now: spent and reserved this period, when the period ends — the fleet's accounts
    /// in Redis when budgets are shared there (null when it cannot be reached), else this instance's. Read only: no
    /// account is made.
    /// </summary>
    public async ValueTask<IReadOnlyList<BudgetStanding>?> StandingAsync(string key, string? user, CancellationToken cancellationToken)
    {
        user = ChatCompletionRequest.AccountedAs(user);
        var now = time.GetUtcNow();
        var standing = new List<BudgetStanding>();
        foreach (var i in Applicable(key, user))
        {
            var b = _budgets[i];
            var (shared, end) = SharedRef(i, key, user, now);
            long spent = 0, reserved = 0;
            if (IsDistributed)
            {
                if (await store!.ReadAsync(shared, cancellationToken).ConfigureAwait(false) is not { } read)
                {
                    return null;
                }

                (spent, reserved) = read;
            }
            else if (_accounts.TryGetValue((i, AccountKey(b, key, user)), out var account))
            {
                (spent, reserved) = account.Standing(now);
            }

            standing.Add(new BudgetStanding(b, FromNano(spent), FromNano(reserved), end));
        }

        return standing;
    }

    /// <summary>Reserves the estimate in every budget that applies, or throws without reserving any.</summary>
    public void Reserve(WorkItem item)
    {
        if (_budgets.Length == 0)
        {
            return;
        }

        var estimate = ToNano(Estimate(item));
        var key = item.Request.Gateway?.RateLimitKey ?? string.Empty;
        var user = item.Request.AccountedUser;
        var period = time.GetUtcNow();
        ForgetEndedPeriods(period);
        while (!TryReserveAll(item, key, user, estimate, period))
        {
            // An account was forgotten between its lookup and the reservation: look it up again (a fresh one).
        }
    }

    /// <summary>Reserves in every account that applies, or throws without reserving any; false when one was forgotten meanwhile.</summary>
    private bool TryReserveAll(WorkItem item, string key, string? user, long estimate, DateTimeOffset period)
    {
        var accounts = new List<Account>(_budgets.Length);
        foreach (var i in Applicable(key, user))
        {
            var b = _budgets[i];
            accounts.Add(AccountFor(i, AccountKey(b, key, user)) ?? throw NoRoomForUser(b.DisplayName, b.LimitUsd, b.MaxUsers, "on this instance"));
        }

        // All or nothing, in a fixed order so two requests never hold locks crosswise.
        var taken = new List<Account>(accounts.Count);
        foreach (var account in accounts)
        {
            var result = account.TryReserve(estimate, period, out var spent);
            if (result != Account.Reserved)
            {
                foreach (var t in taken)
                {
                    t.Release(estimate);
                }

                if (result == Account.Forgotten)
                {
                    return false;
                }

                throw Exceeded(account.Options.DisplayName, account.Options.LimitUsd, FromNano(spent), estimate);
            }

            taken.Add(account);
        }

        item.BudgetReservation = new Reservation([.. taken], estimate);
        return true;
    }

    private long _sweptDay;

    /// <summary>
    /// Once a UTC day, forgets the accounts of ended periods with nothing reserved: a library caller's keys can be one
    /// per end user, and an account per key and budget kept forever would grow without bound. A key seen again gets a
    /// fresh account, which is what a new period starts from anyway. The sweep runs on the thread pool, not on the
    /// request that noticed the new day (it visits every account: a request a day waited on it); a reservation meanwhile
    /// looks an account up again when it was forgotten under it.
    /// </summary>
    private void ForgetEndedPeriods(DateTimeOffset now)
    {
        var day = now.UtcDateTime.Date.Ticks;
        if (Volatile.Read(ref _sweptDay) == day || Interlocked.Exchange(ref _sweptDay, day) == day)
        {
            return;
        }

        ThreadPool.UnsafeQueueUserWorkItem(static s => s.Tracker.Sweep(s.Now), (Tracker: this, Now: now), preferLocal: false);
    }

    /// <summary>Forgets the accounts whose period ended before <paramref name="now"/>'s with nothing reserved (internal: tests run a late one).</summary>
    internal void Sweep(DateTimeOffset now)
    {
        foreach (var entry in _accounts)
        {
            if (entry.Value.TryForget(now) && _accounts.TryRemove(entry) && _users is not null && _budgets[entry.Key.Budget] is { Scope: BudgetScope.User, User: null })
            {
                Interlocked.Decrement(ref _users[entry.Key.Budget]);
            }
        }
    }

    /// <summary>Accounts held now (tests: ended periods are forgotten).</summary>
    internal int AccountCount => _accounts.Count;

    /// <summary>
    /// The users a budget for every user counts toward its <see cref="BudgetOptions.MaxUsers"/> now (tests: a sweep
    /// removes an account, then gives its place back — a moment apart, so a test waits for this, not for <see cref="AccountCount"/>).
    /// </summary>
    internal int UsersKept(int budget) => _users is null ? 0 : Volatile.Read(ref _users[budget]);

    /// <summary>
    /// A request ended: its reservation becomes the billed cost — nothing for a failure, a cache hit or a coalesced
    /// request (the one that made the call pays once), so budgets and metrics add up to the same total.
    /// </summary>
    public void OnCompleted(in Pipeline.Completion completion) => Settle(completion.Item, completion.BilledCost);

    /// <summary>Replaces the reservation with the actual cost (0 for a failure or a cache hit).</summary>
    public void Settle(WorkItem item, decimal actual)
    {
        if (item.SharedBudgetReservation is { } shared)
        {
            item.SharedBudgetReservation = null;
            var settling = store!.SettleAsync(shared.Accounts, shared.Estimate, ToNano(actual));
            if (!settling.IsCompleted && _settling.TryAdd(settling, 0))
            {
                // Kept until it lands, for a refusal meanwhile to wait on (above); never faults (the store's contract).
                settling.ContinueWith(static (t, s) => ((ConcurrentDictionary<Task, byte>)s!).TryRemove(t, out _), _settling, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }

            return;
        }

        if (item.BudgetReservation is not { } r)
        {
            return;
        }

        item.BudgetReservation = null;
        foreach (var account in r.Accounts)
        {
            account.Settle(r.Estimate, ToNano(actual));
        }
    }

    /// <summary>
    /// Restores what was spent in the current day and month (read back from the request log at start), so a restart
    /// changes no budget. Called before the gateway accepts requests.
    /// </summary>
    public void Restore(IReadOnlyList<RequestLog.DailySpend> spend, DateTimeOffset now)
    {
        var today = DateOnly.FromDateTime(now.UtcDateTime);
        foreach (var row in spend)
        {
            var user = ChatCompletionRequest.AccountedAs(row.User);
            foreach (var i in Applicable(row.KeyId, user))
            {
                var b = _budgets[i];
                if (b.Period == BudgetPeriod.Day && row.Day != today)
                {
                    continue;
                }

                if (row.Day.Year != today.Year || row.Day.Month != today.Month)
                {
                    continue;
                }

                // A user past the budget's bound is not restored (a request naming it is refused, as before the restart).
                AccountFor(i, AccountKey(b, row.KeyId, user))?.Restore(ToNano(row.Cost), now);
            }
        }
    }

    /// <summary>Spent and reserved in USD, per budget and key (for metrics and tests).</summary>
    public IReadOnlyDictionary<string, (decimal Spent, decimal Reserved)> Balances() =>
        _accounts.ToDictionary(kv => $"{kv.Value.Options.DisplayName}{(kv.Key.Key.Length > 0 ? ":" + kv.Key.Key : string.Empty)}", kv => kv.Value.Balance());

    /// <summary>The refusal, saying what the request may cost: a budget with room left refuses a request dearer than that room.</summary>
    private static BudgetExceededException Exceeded(string budget, decimal limit, decimal spent, long estimate) => new(budget, limit, spent,
        $"Budget '{budget}' of ${limit} cannot take this request: it may cost up to ${FromNano(estimate)}, and ${spent} is spent or reserved.");

    private decimal Estimate(WorkItem item)
    {
        var completion = item.Request.Operation is not null ? 0 : item.Request.CompletionTokensAsked(item.Group.ExpectedCompletionTokens);
        var tokens = item.EstimatedTokensIfCounted ?? (TokenEstimate.Approximate(item.Request) + completion);
        var prompt = Math.Max(0, tokens - completion);
        var usage = TokenUsage.Of((int)Math.Min(int.MaxValue, prompt), (int)Math.Min(int.MaxValue, completion));
        item.Request.Operation?.KnownCost(usage); // images, minutes of audio: known before the answer
        var dearest = 0m;
        foreach (var d in item.RootGroup.Deployments)
        {
            dearest = Math.Max(dearest, pricing.Cost(d, usage));
        }

        return dearest;
    }

    /// <summary>The indexes of the budgets that apply to a gateway key and the end user its request names (null: none).</summary>
    private IEnumerable<int> Applicable(string key, string? user)
    {
        for (var i = 0; i < _budgets.Length; i++)
        {
            var b = _budgets[i];
            var applies = b.Scope switch
            {
                BudgetScope.Global => true,
                BudgetScope.Key => b.Key is null || b.Key == key,
                _ => user is not null && (b.Key is null || b.Key == key) && (b.User is null || b.User == user),
            };
            if (applies)
            {
                yield return i;
            }
        }
    }

    /// <summary>The account of one budget a request is charged in: one for all, one per key, one per end user.</summary>
    private static string AccountKey(BudgetOptions budget, string key, string? user) => budget.Scope switch
    {
        BudgetScope.Global => string.Empty,
        BudgetScope.Key => key,
        _ => user ?? string.Empty,
    };

    /// <summary>Accounts held per budget with Scope User and no User set (the others are bounded by their configuration).</summary>
    private readonly int[]? _users = options.Value.Budgets.Any(static b => b.Scope == BudgetScope.User && b.User is null) ? new int[options.Value.Budgets.Count] : null;

    /// <summary>The budget's account under <paramref name="accountKey"/>, made when new — null when it is a new user past the budget's <see cref="BudgetOptions.MaxUsers"/>.</summary>
    private Account? AccountFor(int budget, string accountKey)
    {
        var b = _budgets[budget];
        if (_accounts.TryGetValue((budget, accountKey), out var account))
        {
            return account;
        }

        if (_users is null || b is not { Scope: BudgetScope.User, User: null })
        {
            return _accounts.GetOrAdd((budget, accountKey), static (_, b) => new Account(b), b);
        }

        // Counted before it is added, so concurrent new users cannot pass the bound together.
        if (Interlocked.Increment(ref _users[budget]) > b.MaxUsers)
        {
            Interlocked.Decrement(ref _users[budget]);
            return _accounts.TryGetValue((budget, accountKey), out account) ? account : null;
        }

        var made = new Account(b);
        var kept = _accounts.GetOrAdd((budget, accountKey), made);
        if (!ReferenceEquals(kept, made))
        {
            Interlocked.Decrement(ref _users[budget]); // another request added it first
        }

        return kept;
    }

    private static long ToNano(decimal usd) => NanoUsd.From(usd);

    private static decimal FromNano(long nano) => NanoUsd.ToUsd(nano);

    internal sealed record Reservation(Account[] Accounts, long Estimate);

    internal sealed record SharedReservation(IReadOnlyList<BudgetAccountRef> Accounts, long Estimate);

    /// <summary>A request no budget applies to.</summary>
    internal static readonly Reservation NoReservation = new([], 0);

    internal sealed class Account(BudgetOptions options)
    {
        private readonly long _limit = ToNano(options.LimitUsd);
        private long _periodIndex = -1;
        private long _spent;
        private long _reserved;

        public BudgetOptions Options { get; } = options;

        public const int Reserved = 0;
        public const int Refused = 1;
        public const int Forgotten = 2;

        private bool _forgotten;

        /// <summary><see cref="Reserved"/>, <see cref="Refused"/> (past the limit), or <see cref="Forgotten"/> (no longer the key's account).</summary>
        public int TryReserve(long estimate, DateTimeOffset now, out long spentAndReserved)
        {
            lock (this)
            {
                spentAndReserved = 0;
                if (_forgotten)
                {
                    return Forgotten;
                }

                var index = PeriodIndex(now);
                if (index != _periodIndex)
                {
                    _periodIndex = index;
                    _spent = 0; // a new day or month starts from nothing; reservations in flight stay
                }

                spentAndReserved = _spent + _reserved;
                if (_spent + _reserved + estimate > _limit)
                {
                    return Refused;
                }

                _reserved += estimate;
                return Reserved;
            }
        }

        /// <summary>
        /// Marks the account forgotten when its period has ended and nothing is reserved in it (none will settle here).
        /// Ended: before <paramref name="now"/>'s — a sweep that runs late, with the time it was started at, must not
        /// forget an account a request has already carried into the new period (its spend would be lost).
        /// </summary>
        public bool TryForget(DateTimeOffset now)
        {
            lock (this)
            {
                if (_reserved == 0 && PeriodIndex(now) > _periodIndex)
                {
                    _forgotten = true;
                }

                return _forgotten;
            }
        }

        private long PeriodIndex(DateTimeOffset now) => Options.Period == BudgetPeriod.Day ? now.UtcDateTime.Date.Ticks : (now.Year * 12L) + now.Month;

        public void Restore(long spent, DateTimeOffset now)
        {
            lock (this)
            {
                var index = PeriodIndex(now);
                if (index != _periodIndex)
                {
                    _periodIndex = index;
                    _spent = 0;
                }

                _spent += spent;
            }
        }

        public void Release(long estimate)
        {
            lock (this)
            {
                _reserved -= estimate;
            }
        }

        public void Settle(long estimate, long actual)
        {
            lock (this)
            {
                _reserved -= estimate;
                _spent += actual;
            }
        }

        /// <summary>Spent this period (0 when the account's period has ended) and reserved, in nano-dollars.</summary>
        public (long Spent, long Reserved) Standing(DateTimeOffset now)
        {
            lock (this)
            {
                return (PeriodIndex(now) == _periodIndex ? _spent : 0, _reserved);
            }
        }

        public (decimal Spent, decimal Reserved) Balance()
        {
            lock (this)
            {
                return (FromNano(_spent), FromNano(_reserved));
            }
        }
    }
}

/// <summary>
/// Reads where requests stand in the budgets (<c>Gateway:Budgets</c>): resolve it from the gateway's services
/// (<c>gateway.Services.GetRequiredService&lt;IGatewayBudgets&gt;()</c>). The server's <c>GET /v1/gateway/budgets</c> reads it.
/// </summary>
public interface IGatewayBudgets
{
    /// <summary>
    /// Every budget a request by gateway key <paramref name="key"/> (<see cref="GatewayRequestOptions.RateLimitKey"/>;
    /// null: none) naming end user <paramref name="user"/> (null: none, so no per-user budget) would be charged in now,
    /// with what is spent and reserved this period, what is left and when the period ends: the fleet's accounts when
    /// budgets are shared in Redis, else this instance's. Read only: asking makes no account.
    /// </summary>
    /// <exception cref="GatewayUnavailableException">Budgets are shared in Redis and it cannot be reached.</exception>
    ValueTask<IReadOnlyList<BudgetStanding>> GetStandingAsync(string? key, string? user, CancellationToken cancellationToken = default);
}

/// <summary>Where a key's or end user's requests stand in one budget now (<see cref="IGatewayBudgets.GetStandingAsync"/>).</summary>
/// <param name="Budget">The budget, as configured.</param>
/// <param name="Spent">Billed this period, in USD.</param>
/// <param name="Reserved">Held for requests in flight, in USD.</param>
/// <param name="PeriodEnd">When the period ends (UTC midnight, or the first of the next month) and the budget starts from nothing.</param>
public sealed record BudgetStanding(BudgetOptions Budget, decimal Spent, decimal Reserved, DateTimeOffset PeriodEnd)
{
    /// <summary>What a request may still be reserved: the limit less what is spent and reserved, never below 0.</summary>
    public decimal Remaining => Math.Max(0m, Budget.LimitUsd - Spent - Reserved);
}
