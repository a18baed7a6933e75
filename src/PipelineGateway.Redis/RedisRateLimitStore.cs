using System.Globalization;
using System.IO.Hashing;
using System.Text;
using PipelineGateway.Admission;
using StackExchange.Redis;

namespace PipelineGateway.Redis;

/// <summary>
/// Fleet-wide admission limits in Redis. One Lua script evaluates every rule of a partition atomically on the
/// server's clock (instances' clocks never matter): all rules admit and are charged together, or none is
/// charged and the longest wait comes back. Token bucket state is a hash (tokens, last refill); the sliding
/// window is an exact log (a sorted set of charges scored by time, plus their running sum). Every key of a
/// partition carries the same hash tag, so on Redis Cluster they sit in one slot and the script can touch them
/// all. There is no local fast path: any local pre-admission could over-admit across instances.
/// </summary>
internal sealed class RedisRateLimitStore(RedisConnection redis) : IDistributedRateLimitStore
{
    // KEYS: two per rule (state, sum). ARGV: rule count, member id, then per rule: algorithm (0 bucket, 1 window),
    // limit, window ms, burst, cost. Returns {wait ms (0 admitted, -1 never fits), blocking rule index, now ms}.
    private const string AcquireScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local n = tonumber(ARGV[1])
        local id = ARGV[2]
        local maxwait, blocking = 0, -1
        local buckets = {}
        for i = 1, n do
          local b = 2 + (i - 1) * 5
          local algo, limit, window, burst, cost = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
          local key, sumkey = KEYS[2 * i - 1], KEYS[2 * i]
          local wait = 0
          if algo == 0 then
            local rate = limit / window
            local st = redis.call('HMGET', key, 't', 'ts')
            local tokens = tonumber(st[1]) or burst
            local ts = tonumber(st[2]) or now
            tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
            buckets[i] = tokens
            if cost > burst then wait = -1 elseif tokens < cost then wait = math.ceil((cost - tokens) / rate) end
          else
            local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now - window)
            if #expired > 0 then
              local freed = 0
              for _, m in ipairs(expired) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
              redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
              redis.call('DECRBY', sumkey, freed)
            end
            local sum = tonumber(redis.call('GET', sumkey) or '0')
            if cost > limit then
              wait = -1
            elseif sum + cost > limit then
              local need = sum + cost - limit
              local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
              local freed = 0
              wait = 1
              for j = 1, #entries, 2 do
                freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
                if freed >= need then wait = math.max(1, tonumber(entries[j + 1]) + window - now + 1); break end
              end
            end
          end
          if wait < 0 then return {-1, i - 1, now} end
          if wait > maxwait then maxwait, blocking = wait, i - 1 end
        end
        if maxwait > 0 then return {maxwait, blocking, now} end
        for i = 1, n do
          local b = 2 + (i - 1) * 5
          local algo, limit, window, burst, cost = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
          local key, sumkey = KEYS[2 * i - 1], KEYS[2 * i]
          if algo == 0 then
            redis.call('HSET', key, 't', tostring(buckets[i] - cost), 'ts', now)
            redis.call('PEXPIRE', key, math.ceil(burst / (limit / window)) + 1000)
          else
            redis.call('ZADD', key, now, id .. ':' .. cost)
            redis.call('INCRBY', sumkey, cost)
            redis.call('PEXPIRE', key, window + 1000)
            redis.call('PEXPIRE', sumkey, window + 1000)
          end
        end
        return {0, -1, now}
        """;

    // Corrects token-rule charges. ARGV: rule count, member id, charged-at ms, then per rule: algorithm, burst,
    // old cost, new cost (-1 for rules on requests). A window entry that has already expired is left alone.
    private const string AdjustScript = """
        local n, id, at = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
        for i = 1, n do
          local b = 3 + (i - 1) * 4
          local algo, burst, old, new = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
          local key, sumkey = KEYS[2 * i - 1], KEYS[2 * i]
          if new >= 0 and new ~= old then
            if algo == 0 then
              local tokens = tonumber(redis.call('HGET', key, 't'))
              if tokens then redis.call('HSET', key, 't', tostring(math.min(burst, tokens - (new - old)))) end
            elseif redis.call('ZREM', key, id .. ':' .. old) == 1 then
              redis.call('ZADD', key, at, id .. ':' .. new)
              redis.call('INCRBY', sumkey, new - old)
            end
          end
        end
        return 1
        """;

    private readonly string _prefix = redis.Options.KeyPrefix;

    public bool FailOpen => redis.Options.FailureMode == RedisFailureMode.FailOpen;

    public async ValueTask<DistributedLimitDecision> TryAcquireAsync(string partition, IReadOnlyList<RateLimitRule> rules, long tokens, string requestId, CancellationToken cancellationToken)
    {
        var keys = Keys(partition, rules);
        var args = new RedisValue[2 + (rules.Count * 5)];
        args[0] = rules.Count;
        args[1] = requestId;
        for (var i = 0; i < rules.Count; i++)
        {
            var r = rules[i];
            var b = 2 + (i * 5);
            args[b] = r.Algorithm == RateLimitAlgorithm.TokenBucket ? 0 : 1;
            args[b + 1] = r.Limit;
            args[b + 2] = (long)r.Window.TotalMilliseconds;
            args[b + 3] = r.Burst ?? r.Limit;
            args[b + 4] = Cost(r, tokens);
        }

        RedisResult result;
        try
        {
            result = await redis.Database.ScriptEvaluateAsync(AcquireScript, keys, args).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            return new DistributedLimitDecision { Outcome = DistributedLimitOutcome.Unavailable, Error = ex.GetType().Name + ": " + ex.Message };
        }

        var values = (long[])result!;
        var wait = values[0];
        return wait switch
        {
            0 => new DistributedLimitDecision { Outcome = DistributedLimitOutcome.Admitted, Charge = new DistributedLimitCharge(partition, rules, tokens, requestId, values[2]) },
            < 0 => new DistributedLimitDecision { Outcome = DistributedLimitOutcome.TooLarge, BlockingRule = (int)values[1] },
            _ => new DistributedLimitDecision { Outcome = DistributedLimitOutcome.Wait, RetryAfter = TimeSpan.FromMilliseconds(wait), BlockingRule = (int)values[1] },
        };
    }

    public async ValueTask AdjustAsync(DistributedLimitCharge charge, long delta, CancellationToken cancellationToken)
    {
        var rules = charge.Rules;
        var args = new RedisValue[3 + (rules.Count * 4)];
        args[0] = rules.Count;
        args[1] = charge.RequestId;
        args[2] = charge.ChargedAtMs;
        for (var i = 0; i < rules.Count; i++)
        {
            var r = rules[i];
            var b = 3 + (i * 4);
            args[b] = r.Algorithm == RateLimitAlgorithm.TokenBucket ? 0 : 1;
            args[b + 1] = r.Burst ?? r.Limit;
            args[b + 2] = Cost(r, charge.Tokens);
            args[b + 3] = r.Unit == RateLimitUnit.Tokens ? Math.Max(0, charge.Tokens + delta) : -1;
        }

        try
        {
            await redis.Database.ScriptEvaluateAsync(AdjustScript, Keys(charge.Partition, rules), args).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            // A lost correction leaves the estimate charged: conservative, never over-admits.
        }
    }

    /// <summary>
    /// <c>PREFIX:{p:HASH}:rl:RULE:s|n</c>. The partition is hashed (tenant ids may hold any character and any
    /// length); the braces are the hash tag that keeps a partition's keys in one Cluster slot. The rule part
    /// names its parameters, so a changed rule starts from fresh state instead of reading an old one's.
    /// </summary>
    internal RedisKey[] Keys(string partition, IReadOnlyList<RateLimitRule> rules)
    {
        var tag = XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(partition)).ToString("x16", CultureInfo.InvariantCulture);
        var keys = new RedisKey[rules.Count * 2];
        for (var i = 0; i < rules.Count; i++)
        {
            var r = rules[i];
            var rule = string.Create(CultureInfo.InvariantCulture, $"{_prefix}:{{p:{tag}}}:rl:{i}-{(r.Algorithm == RateLimitAlgorithm.TokenBucket ? "tb" : "sw")}-{r.Unit.ToString().ToLowerInvariant()}-{r.Limit}-{(long)r.Window.TotalMilliseconds}-{r.Burst ?? r.Limit}");
            keys[2 * i] = rule + ":s";
            keys[(2 * i) + 1] = rule + ":n";
        }

        return keys;
    }

    private static long Cost(RateLimitRule rule, long tokens) => rule.Unit == RateLimitUnit.Tokens ? tokens : 1;
}
