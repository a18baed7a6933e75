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
internal sealed class GatewayMetrics : IGatewayMetrics, ICompletionListener
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

    private readonly Cost.PricingTable _pricing;
    private readonly GatewayInstruments _instruments;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, ModelStats> _models = new(StringComparer.Ordinal);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, ModelStats> _keys = new(StringComparer.Ordinal);

    public GatewayMetrics(ProviderPools pools, Cost.PricingTable pricing, GatewayInstruments instruments)
    {
        _pricing = pricing;
        _instruments = instruments;
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
        _instruments.Observe(
            () =>
            {
                var d = depths();
                return
                [
                    new(d.Admission, new KeyValuePair<string, object?>("pgw.stage", "admission")),
                    new(d.Cache, new KeyValuePair<string, object?>("pgw.stage", "cache")),
                    new(d.Router, new KeyValuePair<string, object?>("pgw.stage", "router")),
                    new(d.DeadLetter, new KeyValuePair<string, object?>("pgw.stage", "dead_letter")),
                    .. d.Providers.Select(p => new System.Diagnostics.Metrics.Measurement<int>(p.Value, new KeyValuePair<string, object?>("pgw.stage", "provider"), new KeyValuePair<string, object?>("pgw.provider", p.Key))),
                ];
            },
            () => deployments.Select(dep => new System.Diagnostics.Metrics.Measurement<int>((int)dep.State.Circuit, new KeyValuePair<string, object?>("pgw.deployment", dep.Id), new KeyValuePair<string, object?>("pgw.provider", dep.ProviderName))));
    }

    public void OnSubmitted() => Interlocked.Increment(ref _submitted);

    public void OnCacheHit()
    {
        Interlocked.Increment(ref _cacheLookups);
        Interlocked.Increment(ref _cacheHits);
    }

    private long _cacheHits;

    public void OnCoalesced() => Interlocked.Increment(ref _coalesced);

    private long _costSavedNanoUsd;
    private long _coalesced;
    private Caching.ResponseCache? _cache;

    internal void AttachCache(Caching.ResponseCache cache) => _cache = cache;

    public void OnCacheMiss() => Interlocked.Increment(ref _cacheLookups);

    public void OnRateLimited() => Interlocked.Increment(ref _rateLimited);

    public void OnRateLimitWait() => Interlocked.Increment(ref _rateLimitWaits);

    public void OnBudgetExceeded() => Interlocked.Increment(ref _budgetExceeded);

    /// <summary>A stream's first chunk reached the caller.</summary>
    public void OnFirstToken(TimeSpan sinceAdmission) => _ttft.Record(sinceAdmission);

    private long _budgetExceeded;
    private readonly LatencyHistogram _ttft = new();

    public void OnShed() => Interlocked.Increment(ref _shed);

    /// <summary>A request was refused because every deployment's expected queue wait was too long.</summary>
    public void OnOverloaded() => Interlocked.Increment(ref _overloaded);

    private long _overloaded;
    private long _parked;

    /// <summary>A waiting caller's request was parked for room in a full provider queue.</summary>
    public void OnParked() => Interlocked.Increment(ref _parked);

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
    public void OnCompleted(in Completion completion) => OnCompleted(completion.Item, completion.Response, completion.Error, completion.Latency, completion.Billed);

    private void OnCompleted(WorkItem item, ChatCompletionResponse? response, Exception? error, TimeSpan latency, bool billed)
    {
        Interlocked.Increment(ref _total);
        var info = response?.Gateway;

        // Only the request that made the upstream call is charged its usage and cost (docs/metrics.md, "accounting"):
        // a cache hit or a coalesced request costs nothing, and what it avoided goes to cost_saved.
        var usage = billed ? response!.Usage : null;
        var cost = billed ? info!.Cost : 0;
        _models.GetOrAdd(item.RootGroup.Name, static _ => new ModelStats()).Record(error is null, usage, cost);
        _keys.GetOrAdd(item.Request.Gateway?.RateLimitKey ?? string.Empty, static _ => new ModelStats()).Record(error is null, usage, cost);
        if (cost != 0 && _providers.TryGetValue(info!.Provider, out var served))
        {
            served.AddCost(cost);
        }

        RecordInstruments(item, response, info, error, latency);

        if (error is null)
        {
            Interlocked.Increment(ref _succeeded);
            _latency.Record(latency);
            if (info is { Cached: true })
            {
                Interlocked.Increment(ref _cached);
            }

            if (info is { CostSaved: > 0 } saving)
            {
                Interlocked.Add(ref _costSavedNanoUsd, (long)decimal.Round(saving.CostSaved * 1_000_000_000m));
            }

            if (usage is not null)
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
            var rejected = state.IsRejected(now);
            deployments[d.Id] = new DeploymentHealthSnapshot
            {
                HealthState = rejected ? "rejected" : Name(state.Circuit),
                RejectedBecause = rejected ? state.RejectedBecause : null,
                ConsecutiveFailures = state.ConsecutiveFailures,
                CooldownRemainingMs = remaining > TimeSpan.Zero ? Math.Round(remaining.TotalMilliseconds, 3) : 0,
                LatencyMs = double.IsNaN(latency) ? null : Math.Round(latency, 3),
                InFlight = state.InFlight,
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
            Keys = _keys.ToDictionary(kv => kv.Key.Length == 0 ? "(no key)" : kv.Key, kv => kv.Value.Snapshot(), StringComparer.Ordinal),
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
            QueueDepths = queueDepths,
            Models = _models.ToDictionary(kv => kv.Key, kv => kv.Value.Snapshot(), StringComparer.Ordinal),
            Providers = providers,
            Deployments = deployments,
        };
    }

    private void RecordInstruments(WorkItem item, ChatCompletionResponse? response, GatewayResponseInfo? info, Exception? error, TimeSpan latency)
    {
        var i = _instruments;
        if (!i.Duration.Enabled && !i.Tokens.Enabled && !i.RequestCount.Enabled && !i.Cost.Enabled && !i.CacheHitCount.Enabled)
        {
            return; // nobody listens: no tags built, nothing recorded
        }

        var system = info is null ? "pipelinegateway" : _systems.GetValueOrDefault(info.Provider, info.Provider);
        var tags = GatewayInstruments.Tags(system, item.Request.Model, response?.Model is { Length: > 0 } m ? m : info?.ProviderModel, error?.GetType().Name);
        i.Duration.Record(latency.TotalSeconds, tags);
        var outcome = tags;
        outcome.Add("pgw.outcome", error is not null ? "failure" : info?.Cached == true ? "cached" : info?.Coalesced == true ? "coalesced" : "success");
        i.RequestCount.Add(1, outcome);
        if (info?.Cached == true)
        {
            i.CacheHitCount.Add(1, tags);
        }

        if (info is not { Billed: true })
        {
            return; // a hit or a coalesced request used no tokens upstream and cost nothing
        }

        if (response?.Usage is { } usage)
        {
            var input = tags;
            input.Add("gen_ai.token.type", "input");
            i.Tokens.Record(usage.PromptTokens, input);
            var output = tags;
            output.Add("gen_ai.token.type", "output");
            i.Tokens.Record(usage.CompletionTokens, output);
        }

        if (info is { Cost: > 0 } priced)
        {
            i.Cost.Add((double)priced.Cost, tags);
        }
    }

    private System.Collections.Frozen.FrozenDictionary<string, string> _systems = System.Collections.Frozen.FrozenDictionary<string, string>.Empty;

    /// <summary>The gen_ai.system of each provider (openai, anthropic, az.ai.openai, or the provider's name).</summary>
    internal void SetSystems(IReadOnlyDictionary<string, string> systems) => _systems = systems.ToFrozenDictionary(StringComparer.Ordinal);

    private decimal CostSaved() => Interlocked.Read(ref _costSavedNanoUsd) / 1_000_000_000m;

    private static string Name(Routing.Health.CircuitState state) => state switch
    {
        Routing.Health.CircuitState.Open => "open",
        Routing.Health.CircuitState.HalfOpen => "half_open",
        _ => "closed",
    };

    private static string Worse(string a, string b) => Rank(b) > Rank(a) ? b : a;

    private static int Rank(string s) => s switch { "rejected" => 3, "open" => 2, "half_open" => 1, _ => 0 };

    private sealed class ProviderStats
    {
        private readonly LatencyHistogram _latency = new();
        private long _requests;
        private long _failures;
        private long _costNanoUsd; // money summed as whole nano-dollars: interlocked, no lock, exact to 1e-9 USD

        public void AddCost(decimal usd) => Interlocked.Add(ref _costNanoUsd, (long)decimal.Round(usd * 1_000_000_000m));

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
                TotalCost = Interlocked.Read(ref _costNanoUsd) / 1_000_000_000m,
                InFlight = pool.InFlight,
                QueueDepth = pool.QueueDepth,
                ExpectedWaitMs = Math.Round(pool.ExpectedWait.TotalMilliseconds, 3),
                ServiceTimeMs = Math.Round(pool.ServiceTime.TotalMilliseconds, 3),
                PausedMs = Math.Round(pool.PausedFor.TotalMilliseconds, 3),
                Parked = pool.Parked,
                QueueWaitP50Ms = pool.QueueWaits.P50Ms,
                QueueWaitP99Ms = pool.QueueWaits.P99Ms,
                QueueWaitMaxMs = Math.Round(pool.QueueWaits.MaxMs, 3),
            };
        }
    }

    private sealed class ModelStats
    {
        private long _requests;
        private long _failures;
        private long _promptTokens;
        private long _completionTokens;
        private long _costNanoUsd;

        public void Record(bool success, TokenUsage? usage, decimal cost)
        {
            Interlocked.Increment(ref _requests);
            if (!success)
            {
                Interlocked.Increment(ref _failures);
            }

            if (usage is not null)
            {
                Interlocked.Add(ref _promptTokens, usage.PromptTokens);
                Interlocked.Add(ref _completionTokens, usage.CompletionTokens);
            }

            if (cost != 0)
            {
                Interlocked.Add(ref _costNanoUsd, (long)decimal.Round(cost * 1_000_000_000m));
            }
        }

        public ModelMetricsSnapshot Snapshot() => new()
        {
            Requests = Interlocked.Read(ref _requests),
            Failures = Interlocked.Read(ref _failures),
            PromptTokens = Interlocked.Read(ref _promptTokens),
            CompletionTokens = Interlocked.Read(ref _completionTokens),
            TotalCost = Interlocked.Read(ref _costNanoUsd) / 1_000_000_000m,
        };
    }
}
