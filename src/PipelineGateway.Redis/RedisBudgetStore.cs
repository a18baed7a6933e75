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
    // ARGV: estimate, then per account: limit, lifetime ms. Returns {refusing account index or -1, its spent+reserved}.
    private const string ReserveScript = """
        local est = tonumber(ARGV[1])
        for i = 1, #KEYS do
          local v = redis.call('HMGET', KEYS[i], 's', 'r')
          local used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
          if used + est > tonumber(ARGV[2 * i]) then return {i - 1, used} end
        end
        for i = 1, #KEYS do
          redis.call('HINCRBY', KEYS[i], 'r', est)
          redis.call('PEXPIRE', KEYS[i], ARGV[2 * i + 1])
        end
        return {-1, 0}
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
        var args = new RedisValue[1 + (accounts.Count * 2)];
        args[0] = estimateNanoUsd;
        for (var i = 0; i < accounts.Count; i++)
        {
            args[1 + (2 * i)] = accounts[i].LimitNanoUsd;
            args[2 + (2 * i)] = (long)accounts[i].Lifetime.TotalMilliseconds;
        }

        try
        {
            var values = (long[])(await redis.Database.ScriptEvaluateAsync(ReserveScript, Keys(accounts), args).ConfigureAwait(false))!;
            return values[0] < 0
                ? new BudgetReservationResult { Reserved = true }
                : new BudgetReservationResult { RefusedBy = (int)values[0], SpentAndReservedNanoUsd = values[1] };
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

    internal RedisKey[] Keys(IReadOnlyList<BudgetAccountRef> accounts)
    {
        var keys = new RedisKey[accounts.Count];
        for (var i = 0; i < accounts.Count; i++)
        {
            keys[i] = _prefix + accounts[i].Id + ":" + accounts[i].Period;
        }

        return keys;
    }
}
