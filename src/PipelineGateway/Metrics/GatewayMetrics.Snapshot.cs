using PipelineGateway.Dispatch;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Metrics;

/// <summary>The snapshot read by /v1/gateway/metrics, the CLI summary and tests: counters, per-provider health, per-model and per-key figures.</summary>
internal sealed partial class GatewayMetrics
{
    public GatewayMetricsSnapshot GetSnapshot()
    {
        var depths = _depths?.Invoke();
        var lookups = Interlocked.Read(ref _cacheLookups);
        var providers = new Dictionary<string, ProviderMetricsSnapshot>(_providers.Count, StringComparer.Ordinal);
        foreach (var pool in _pools.All)
        {
            providers[pool.Name] = _providers[pool.Name].Snapshot(pool);
        }

        var now = _time.GetUtcNow();
        var deployments = new Dictionary<string, DeploymentHealthSnapshot>(StringComparer.Ordinal);
        foreach (var d in _deployments())
        {
            var state = d.State;
            var latency = state.LatencyMs;
            var remaining = state.AvailableAt - now;
            var rejected = state.IsRejected(now);
            deployments[d.Id] = new DeploymentHealthSnapshot
            {
                HealthState = rejected ? "rejected" : Name(state.Circuit),
                RejectedBecause = rejected ? state.RejectedBecause : null,
                ConsecutiveFailures = state.ConsecutiveFailures,
                CooldownRemainingMs = remaining > TimeSpan.Zero ? Math.Round(remaining.TotalMilliseconds, 3) : 0,
                LatencyMs = double.IsNaN(latency) ? null : Math.Round(latency, 3),
                InFlight = state.InFlight,
                Requests = d.Counters.Attempts,
                SuccessRate = d.Counters.Attempts == 0 ? 1 : Math.Round((double)d.Counters.Successes / d.Counters.Attempts, 4),
                TotalCost = d.Counters.Cost,
            };
            if (providers.TryGetValue(d.ProviderName, out var p))
            {
                providers[d.ProviderName] = p with
                {
                    HealthState = Worse(p.HealthState, rejected ? "rejected" : Name(state.Circuit)),
                    ConsecutiveFailures = Math.Max(p.ConsecutiveFailures, state.ConsecutiveFailures),
                };
            }
        }

        var queueDepths = new Dictionary<string, int>(StringComparer.Ordinal);
        if (depths is not null)
        {
            queueDepths["admission"] = depths.Admission;
            queueDepths["cache"] = depths.Cache;
            queueDepths["router"] = depths.Router;
            queueDepths["dead_letter"] = depths.DeadLetter;
            foreach (var (name, depth) in depths.Providers)
            {
                queueDepths["provider:" + name] = depth;
            }
        }

        return new GatewayMetricsSnapshot
        {
            Submitted = Interlocked.Read(ref _submitted),
            TotalRequests = Interlocked.Read(ref _total),
            SuccessfulRequests = Interlocked.Read(ref _succeeded),
            CachedRequests = Interlocked.Read(ref _cached),
            FailedRequests = Interlocked.Read(ref _failed),
            CancelledRequests = Interlocked.Read(ref _cancelled),
            DeadlineExceededRequests = Interlocked.Read(ref _deadline),
            RateLimitedRequests = Interlocked.Read(ref _rateLimited),
            RateLimitWaits = Interlocked.Read(ref _rateLimitWaits),
            ShedRequests = Interlocked.Read(ref _shed),
            OverloadedRequests = Interlocked.Read(ref _overloaded),
            ParkedRequests = Interlocked.Read(ref _parked),
            CacheHitRate = Interlocked.Read(ref _total) is var total and > 0 ? Math.Round((double)Interlocked.Read(ref _cached) / total, 4) : 0,
            CacheLookupHitRate = lookups == 0 ? 0 : Math.Round((double)Interlocked.Read(ref _cacheHits) / lookups, 4),
            AvgLatencyMs = Math.Round(_latency.MeanMs, 3),
            P50LatencyMs = _latency.PercentileMs(0.50),
            P95LatencyMs = _latency.PercentileMs(0.95),
            P99LatencyMs = _latency.PercentileMs(0.99),
            P50TimeToFirstTokenMs = _ttft.PercentileMs(0.50),
            P95TimeToFirstTokenMs = _ttft.PercentileMs(0.95),
            P99TimeToFirstTokenMs = _ttft.PercentileMs(0.99),
            BudgetExceededRequests = Interlocked.Read(ref _budgetExceeded),
            Keys = KeysSnapshot(),
            Retries = Interlocked.Read(ref _retries),
            Fallbacks = Interlocked.Read(ref _fallbacks),
            GroupFallbacks = Interlocked.Read(ref _groupFallbacks),
            Hedges = Interlocked.Read(ref _hedges),
            PromptTokens = Interlocked.Read(ref _promptTokens),
            CompletionTokens = Interlocked.Read(ref _completionTokens),
            TotalCost = providers.Values.Sum(p => p.TotalCost),
            InFlight = depths?.InFlight ?? 0,
            CacheLookups = lookups,
            CacheMisses = lookups - Interlocked.Read(ref _cacheHits),
            CoalescedRequests = Interlocked.Read(ref _coalesced),
            CacheEntries = _cache?.Count ?? 0,
            CacheBytes = _cache?.Bytes ?? 0,
            CacheEvictions = _cache?.Evictions ?? 0,
            CostSaved = CostSaved(),
            RequestLog = _requestLog?.Stats ?? new RequestLog.RequestLogStats(),
            QueueDepths = queueDepths,
            Models = _models.ToDictionary(kv => kv.Key, kv => kv.Value.Snapshot(), StringComparer.Ordinal),
            Providers = providers,
            Deployments = deployments,
        };
    }


    private decimal CostSaved() => Cost.NanoUsd.ToUsd(Interlocked.Read(ref _costSavedNanoUsd));

    private static string Name(Routing.Health.CircuitState state) => state switch
    {
        Routing.Health.CircuitState.Open => "open",
        Routing.Health.CircuitState.HalfOpen => "half_open",
        _ => "closed",
    };

    private static string Worse(string a, string b) => Rank(b) > Rank(a) ? b : a;

    private static int Rank(string s) => s switch { "rejected" => 3, "open" => 2, "half_open" => 1, _ => 0 };

    private Dictionary<string, ModelMetricsSnapshot> KeysSnapshot()
    {
        var keys = _keys.ToDictionary(kv => kv.Key.Length == 0 ? "(no key)" : kv.Key, kv => kv.Value.Snapshot(), StringComparer.Ordinal);
        if (_otherKeys.Snapshot() is { Requests: > 0 } others)
        {
            keys[OtherKeys] = others;
        }

        return keys;
    }
}
