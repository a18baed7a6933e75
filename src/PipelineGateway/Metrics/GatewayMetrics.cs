using System.Collections.Frozen;
using PipelineGateway.Dispatch;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Metrics;

/// <summary>What callers can read about the gateway's traffic.</summary>
public interface IGatewayMetrics
{
    GatewayMetricsSnapshot GetSnapshot();
}

/// <summary>
/// The metrics sink: every stage reports here. Counters are interlocked fields and histograms are
/// lock-free, so recording takes no lock shared by requests.
/// </summary>
internal sealed class GatewayMetrics : IGatewayMetrics
{
    private readonly FrozenDictionary<string, ProviderStats> _providers;
    private readonly LatencyHistogram _latency = new();
    private readonly ProviderPools _pools;
    private Func<QueueDepths>? _depths;
    private long _submitted;
    private long _total;
    private long _succeeded;
    private long _cached;
    private long _failed;
    private long _cancelled;
    private long _deadline;
    private long _rateLimited;
    private long _rateLimitWaits;
    private long _shed;
    private long _cacheLookups;
    private long _retries;
    private long _fallbacks;
    private long _groupFallbacks;
    private long _hedges;
    private long _promptTokens;
    private long _completionTokens;

    public GatewayMetrics(ProviderPools pools)
    {
        _pools = pools;
        _providers = pools.All.ToFrozenDictionary(p => p.Name, _ => new ProviderStats(), StringComparer.Ordinal);
    }

    private IReadOnlyList<Deployment> _deployments = [];
    private TimeProvider _time = TimeProvider.System;

    internal void Attach(Func<QueueDepths> depths, IReadOnlyList<Deployment> deployments, TimeProvider time)
    {
        _depths = depths;
        _deployments = deployments;
        _time = time;
    }

    public void OnSubmitted() => Interlocked.Increment(ref _submitted);

    public void OnCacheHit(decimal saved)
    {
        Interlocked.Increment(ref _cacheLookups);
        Interlocked.Increment(ref _cached);
        if (saved != 0)
        {
            lock (_savedLock)
            {
                _costSaved += saved;
            }
        }
    }

    public void OnCoalesced() => Interlocked.Increment(ref _coalesced);

    private readonly object _savedLock = new();
    private decimal _costSaved;
    private long _coalesced;
    private Caching.ResponseCache? _cache;

    internal void AttachCache(Caching.ResponseCache cache) => _cache = cache;

    public void OnCacheMiss() => Interlocked.Increment(ref _cacheLookups);

    public void OnRateLimited() => Interlocked.Increment(ref _rateLimited);

    public void OnRateLimitWait() => Interlocked.Increment(ref _rateLimitWaits);

    public void OnShed() => Interlocked.Increment(ref _shed);

    public void OnRetry(bool fallback)
    {
        Interlocked.Increment(ref _retries);
        if (fallback)
        {
            Interlocked.Increment(ref _fallbacks);
        }
    }

    /// <summary>A request moved along its model group's fallback chain (or to a larger-context group).</summary>
    public void OnFallback() => Interlocked.Increment(ref _groupFallbacks);

    /// <summary>A hedged second attempt was sent.</summary>
    public void OnHedge() => Interlocked.Increment(ref _hedges);

    /// <summary>Called by a worker for each attempt it finishes.</summary>
    public void OnAttempt(GatewayAttempt attempt)
    {
        if (_providers.TryGetValue(attempt.Provider, out var stats))
        {
            stats.Record(attempt);
        }
    }

    /// <summary>Called exactly once per request, when it ends.</summary>
    public void OnCompleted(WorkItem item, ChatCompletionResponse? response, Exception? error, TimeSpan latency)
    {
        Interlocked.Increment(ref _total);

        if (error is null)
        {
            Interlocked.Increment(ref _succeeded);
            _latency.Record(latency);
            if (response?.Usage is { } usage)
            {
                Interlocked.Add(ref _promptTokens, usage.PromptTokens);
                Interlocked.Add(ref _completionTokens, usage.CompletionTokens);
            }

            return;
        }

        Interlocked.Increment(ref _failed);
        switch (error)
        {
            case OperationCanceledException:
                Interlocked.Increment(ref _cancelled);
                break;
            case DeadlineExceededException:
                Interlocked.Increment(ref _deadline);
                break;
        }
    }

    public GatewayResponseInfo Describe(WorkItem item, Deployment deployment, TokenUsage? usage) => new()
    {
        Provider = deployment.ProviderName,
        ProviderModel = deployment.Model,
        Attempts = item.FinalAttempts,
        Latency = item.Observer?.Time.GetElapsedTime(item.StartTimestamp) ?? TimeSpan.Zero,
        RequestSequence = item.Sequence,
        Cost = usage is null ? 0 : Price(deployment, usage),
    };

    /// <summary>USD for a usage on a deployment, from its configured prices (0 when unpriced).</summary>
    public static decimal Price(Deployment deployment, TokenUsage usage) =>
        (((deployment.InputPricePerMillion ?? 0) * usage.PromptTokens) + ((deployment.OutputPricePerMillion ?? 0) * usage.CompletionTokens)) / 1_000_000m;

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
        foreach (var d in _deployments)
        {
            var state = d.State;
            var latency = state.LatencyMs;
            var remaining = state.AvailableAt - now;
            deployments[d.Id] = new DeploymentHealthSnapshot
            {
                HealthState = Name(state.Circuit),
                ConsecutiveFailures = state.ConsecutiveFailures,
                CooldownRemainingMs = remaining > TimeSpan.Zero ? Math.Round(remaining.TotalMilliseconds, 3) : 0,
                LatencyMs = double.IsNaN(latency) ? null : Math.Round(latency, 3),
                InFlight = state.InFlight,
            };
            if (providers.TryGetValue(d.ProviderName, out var p))
            {
                providers[d.ProviderName] = p with
                {
                    HealthState = Worse(p.HealthState, Name(state.Circuit)),
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
            CacheHitRate = lookups == 0 ? 0 : Math.Round((double)Interlocked.Read(ref _cached) / lookups, 4),
            AvgLatencyMs = Math.Round(_latency.MeanMs, 3),
            P50LatencyMs = _latency.PercentileMs(0.50),
            P95LatencyMs = _latency.PercentileMs(0.95),
            P99LatencyMs = _latency.PercentileMs(0.99),
            Retries = Interlocked.Read(ref _retries),
            Fallbacks = Interlocked.Read(ref _fallbacks),
            GroupFallbacks = Interlocked.Read(ref _groupFallbacks),
            Hedges = Interlocked.Read(ref _hedges),
            PromptTokens = Interlocked.Read(ref _promptTokens),
            CompletionTokens = Interlocked.Read(ref _completionTokens),
            TotalCost = providers.Values.Sum(p => p.TotalCost),
            InFlight = depths?.InFlight ?? 0,
            CacheMisses = lookups - Interlocked.Read(ref _cached),
            CoalescedRequests = Interlocked.Read(ref _coalesced),
            CacheEntries = _cache?.Count ?? 0,
            CacheBytes = _cache?.Bytes ?? 0,
            CacheEvictions = _cache?.Evictions ?? 0,
            CostSaved = CostSaved(),
            QueueDepths = queueDepths,
            Providers = providers,
            Deployments = deployments,
        };
    }

    private decimal CostSaved()
    {
        lock (_savedLock)
        {
            return _costSaved;
        }
    }

    private static string Name(Routing.Health.CircuitState state) => state switch
    {
        Routing.Health.CircuitState.Open => "open",
        Routing.Health.CircuitState.HalfOpen => "half_open",
        _ => "closed",
    };

    private static string Worse(string a, string b) => Rank(b) > Rank(a) ? b : a;

    private static int Rank(string s) => s switch { "open" => 2, "half_open" => 1, _ => 0 };

    private sealed class ProviderStats
    {
        private readonly LatencyHistogram _latency = new();
        private long _requests;
        private long _failures;

        public void Record(GatewayAttempt attempt)
        {
            if (attempt.Outcome == AttemptOutcome.Cancelled)
            {
                // The caller gave up (or the deadline passed): not the provider's failure.
                return;
            }

            Interlocked.Increment(ref _requests);
            if (attempt.Outcome == AttemptOutcome.Success)
            {
                _latency.Record(attempt.Latency);
            }
            else
            {
                Interlocked.Increment(ref _failures);
            }
        }

        public ProviderMetricsSnapshot Snapshot(ProviderWorkerPool pool)
        {
            var requests = Interlocked.Read(ref _requests);
            var failures = Interlocked.Read(ref _failures);
            return new ProviderMetricsSnapshot
            {
                Requests = requests,
                Successes = requests - failures,
                Failures = failures,
                SuccessRate = requests == 0 ? 1 : Math.Round((double)(requests - failures) / requests, 4),
                AvgLatencyMs = Math.Round(_latency.MeanMs, 3),
                P95LatencyMs = _latency.PercentileMs(0.95),
                InFlight = pool.InFlight,
                QueueDepth = pool.QueueDepth,
            };
        }
    }
}
