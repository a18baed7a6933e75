using PipelineGateway.Cost;
using StackExchange.Redis;

namespace PipelineGateway.Redis;

/// <summary>
/// Budget accounts shared by the fleet: one hash per account and period (<c>s</c> spent, <c>r</c> reserved, in
/// nano-dollars), reserved all-or-nothing by one Lua script and settled with the actual cost by another. All
/// budget keys carry one hash tag (<c>{b}</c>), so a request's accounts are in one Cluster slot; budgets are few
/// and small, so that slot stays light. Keys expire a day after their period ends.
/// </summary>
internal sealed class RedisBudgetStore(RedisConnection redis) : IDistributedBudgetStore
{
    // KEYS: the accounts, then per account its budget's set of users (or the account again, unused). ARGV: estimate, then
    // per account: limit, lifetime ms, the most users (0: not a budget for every user). Returns {refusing account index
    // or -1, its spent+reserved, 1 when refused as a new user past the bound}. A budget for every user keeps its users'
    // accounts in a set per period, so a new one past MaxUsers is refused across the fleet (the set and the accounts
    // expire with the period).
    private const string ReserveScript = """
        local n = #KEYS / 2
        local est = tonumber(ARGV[1])
        for i = 1, n do
          local v = redis.call('HMGET', KEYS[i], 's', 'r')
          local used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
          if used + est > tonumber(ARGV[3 * i - 1]) then return {i - 1, used, 0} end
          local max = tonumber(ARGV[3 * i + 1])
          if max > 0 and not v[1] and not v[2] and redis.call('SISMEMBER', KEYS[n + i], KEYS[i]) == 0
            and redis.call('SCARD', KEYS[n + i]) >= max then return {i - 1, 0, 1} end
        end
        for i = 1, n do
          redis.call('HINCRBY', KEYS[i], 'r', est)
          redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
          if tonumber(ARGV[3 * i + 1]) > 0 then
            redis.call('SADD', KEYS[n + i], KEYS[i])
            redis.call('PEXPIRE', KEYS[n + i], ARGV[3 * i])
          end
        end
        return {-1, 0, 0}
        """;

    // ARGV: estimate, actual.
    private const string SettleScript = """
        for i = 1, #KEYS do
          redis.call('HINCRBY', KEYS[i], 'r', -tonumber(ARGV[1]))
          redis.call('HINCRBY', KEYS[i], 's', tonumber(ARGV[2]))
        end
        return 1
        """;

    private readonly string _prefix = redis.Options.KeyPrefix + ":{b}:";

    public bool FailOpen => redis.Options.FailureMode == RedisFailureMode.FailOpen;

    public async ValueTask<BudgetReservationResult> TryReserveAsync(IReadOnlyList<BudgetAccountRef> accounts, long estimateNanoUsd, CancellationToken cancellationToken)
    {
        var args = new RedisValue[1 + (accounts.Count * 3)];
        args[0] = estimateNanoUsd;
        for (var i = 0; i < accounts.Count; i++)
        {
            args[1 + (3 * i)] = accounts[i].LimitNanoUsd;
            args[2 + (3 * i)] = (long)accounts[i].Lifetime.TotalMilliseconds;
            args[3 + (3 * i)] = accounts[i].MaxUsers;
        }

        try
        {
            var values = (long[])(await redis.Database.ScriptEvaluateAsync(ReserveScript, Keys(accounts, withUsers: true), args).ConfigureAwait(false))!;
            return values[0] < 0
                ? new BudgetReservationResult { Reserved = true }
                : new BudgetReservationResult { RefusedBy = (int)values[0], SpentAndReservedNanoUsd = values[1], NoRoomForUser = values[2] == 1 };
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            return new BudgetReservationResult { Unavailable = true };
        }
    }

    public async Task SettleAsync(IReadOnlyList<BudgetAccountRef> accounts, long estimateNanoUsd, long actualNanoUsd)
    {
        try
        {
            await redis.Database.ScriptEvaluateAsync(SettleScript, Keys(accounts), [estimateNanoUsd, actualNanoUsd]).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            // Lost: the estimate stays reserved until the period's key expires (conservative: never overspends).
        }
    }

    public async ValueTask<(long SpentNanoUsd, long ReservedNanoUsd)?> ReadAsync(BudgetAccountRef account, CancellationToken cancellationToken)
    {
        try
        {
            var values = await redis.Database.HashGetAsync(Keys([account])[0], ["s", "r"]).ConfigureAwait(false);
            return ((long?)values[0] ?? 0, (long?)values[1] ?? 0);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            return null;
        }
    }

    /// <param name="withUsers">Each account's set of users after the accounts (the reservation's), the account again when it has none.</param>
    internal RedisKey[] Keys(IReadOnlyList<BudgetAccountRef> accounts, bool withUsers = false)
    {
        var n = accounts.Count;
        var keys = new RedisKey[withUsers ? 2 * n : n];
        for (var i = 0; i < n; i++)
        {
            keys[i] = _prefix + accounts[i].Id + ":" + accounts[i].Period;
            if (withUsers)
            {
                keys[n + i] = accounts[i].UsersId is { } users ? _prefix + users + ":" + accounts[i].Period : keys[i];
            }
        }

        return keys;
    }
}
