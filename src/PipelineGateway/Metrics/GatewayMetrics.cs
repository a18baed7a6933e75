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
internal sealed partial class GatewayMetrics : IGatewayMetrics, ICompletionListener
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

    /// <summary>Keys counted on their own, at most (<c>Fairness:MaxTenants</c>); later ones share <see cref="OtherKeys"/>.</summary>
    private readonly int _maxKeys;
    private int _keyCount;
    private readonly ModelStats _otherKeys = new();

    /// <summary>The snapshot's name for the keys past <c>Fairness:MaxTenants</c>, counted together.</summary>
    internal const string OtherKeys = "(other keys)";

    public GatewayMetrics(ProviderPools pools, Cost.PricingTable pricing, GatewayInstruments instruments, Microsoft.Extensions.Options.IOptions<Hosting.GatewayOptions> options)
    {
        _maxKeys = options.Value.Fairness.MaxTenants;
        _pricing = pricing;
        _instruments = instruments;
        _pools = pools;
        _providers = pools.All.ToFrozenDictionary(p => p.Name, _ => new ProviderStats(), StringComparer.Ordinal);
    }

    /// <summary>
    /// A key's counters. A library caller's <c>RateLimitKey</c> can be anything (an end user's id, say), so the keys
    /// counted on their own are bounded like the door's tenants; the rest are counted together, never dropped.
    /// </summary>
    private ModelStats KeyStats(string key)
    {
        if (_keys.TryGetValue(key, out var stats))
        {
            return stats;
        }

        if (Volatile.Read(ref _keyCount) >= _maxKeys)
        {
            return _otherKeys;
        }

        var fresh = new ModelStats();
        if (_keys.TryAdd(key, fresh))
        {
            Interlocked.Increment(ref _keyCount);
            return fresh;
        }

        return _keys.TryGetValue(key, out stats) ? stats : _otherKeys;
    }

    private Func<IEnumerable<Deployment>> _deployments = static () => [];
    private TimeProvider _time = TimeProvider.System;

    /// <param name="deployments">Every deployment at the moment asked (a wildcard makes groups as names come).</param>
    internal void Attach(Func<QueueDepths> depths, Func<IEnumerable<Deployment>> deployments, TimeProvider time)
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
            () => deployments().Where(static dep => dep.Owner.Established).Select(dep => new System.Diagnostics.Metrics.Measurement<int>((int)dep.State.Circuit, new KeyValuePair<string, object?>("pgw.deployment", dep.Id), new KeyValuePair<string, object?>("pgw.provider", dep.ProviderName))));
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

    private RequestLog.RequestLogWriter? _requestLog;

    internal void AttachRequestLog(RequestLog.RequestLogWriter log) => _requestLog = log;

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
        if (attempt.NotSent)
        {
            return; // nothing reached the provider: neither its requests nor the deployment's success rate
        }

        if (attempt.Outcome != AttemptOutcome.Cancelled)
        {
            attempt.Deployment?.Counters.Record(attempt.Outcome == AttemptOutcome.Success);
        }

        if (_providers.TryGetValue(attempt.Provider, out var stats))
        {
            stats.Record(attempt);
        }

        if (_instruments.AttemptCount.Enabled)
        {
            _instruments.Totals.Attempt(_systems.GetValueOrDefault(attempt.Provider, attempt.Provider), attempt.Provider, attempt.Outcome, attempt.Deployment?.MetricId, attempt.StatusCode);
        }
    }

    private readonly System.Collections.Concurrent.ConcurrentQueue<RecentFailure> _recentFailures = new();

    private static GatewayAttempt? LastSuccess(IReadOnlyList<GatewayAttempt> attempts)
    {
        for (var i = attempts.Count - 1; i >= 0; i--)
        {
            if (attempts[i].Outcome == AttemptOutcome.Success)
            {
                return attempts[i];
            }
        }

        return null;
    }

    /// <summary>The last 20 failures (not cancellations), newest last: for the dashboard.</summary>
    internal IReadOnlyList<RecentFailure> RecentFailures() => [.. _recentFailures];

    /// <summary>Called exactly once per request, when it ends.</summary>
    public void OnCompleted(in Completion completion)
    {
        var (item, response, error, latency) = completion;
        Interlocked.Increment(ref _total);
        if (error is not null and not OperationCanceledException)
        {
            var (status, e, _) = OpenAIErrorMapping.Map(error);
            _recentFailures.Enqueue(new RecentFailure(_time.GetUtcNow(), item.RequestId, item.Request.Model, status, e.Code ?? e.Type ?? "error", Providers.SecretRedactor.RedactAndTrim(e.Message, 160)));
            while (_recentFailures.Count > 20 && _recentFailures.TryDequeue(out _))
            {
            }
        }

        var info = response?.Gateway;

        // Only the request that made the upstream call is charged its usage and cost (docs/metrics.md, "accounting"):
        // a cache hit or a coalesced request costs nothing, and what it avoided goes to cost_saved. A stream cut after
        // its content reached the caller is charged what it consumed.
        var usage = completion.Billed ? response!.Usage : completion.Consumed?.TotalUsage;
        var cost = completion.BilledCost;
        var costNano = cost == 0 ? 0 : Cost.NanoUsd.From(cost); // once, for every figure below
        _models.GetOrAdd(item.RootGroup.StatsName, static _ => new ModelStats()).Record(error is null, usage, costNano);
        KeyStats(item.Request.Gateway?.RateLimitKey ?? string.Empty).Record(error is null, usage, costNano);
        var charged = completion.Consumed?.Deployment ?? (cost != 0 ? LastSuccess(info!.Attempts)?.Deployment : null);
        var hedge = completion.Consumed?.Hedge; // a hedged attempt's second leg: its cost to its own deployment
        var own = cost - (hedge?.Cost ?? 0);
        var ownNano = hedge is null ? costNano : Cost.NanoUsd.From(own);
        if (own != 0 && charged is not null)
        {
            charged.Counters.AddCost(ownNano);
        }

        if (own != 0 && _providers.TryGetValue(charged?.ProviderName ?? info!.Provider, out var served))
        {
            served.AddCost(ownNano);
        }

        if (hedge is { Cost: not 0 })
        {
            var legNano = Cost.NanoUsd.From(hedge.Cost);
            hedge.Deployment.Counters.AddCost(legNano);
            if (_providers.TryGetValue(hedge.Deployment.ProviderName, out var leg))
            {
                leg.AddCost(legNano);
            }
        }

        if (usage is not null)
        {
            Interlocked.Add(ref _promptTokens, usage.PromptTokens);
            Interlocked.Add(ref _completionTokens, usage.CompletionTokens);
        }

        RecordInstruments(item, response, info, error, latency, hedge is null ? usage : completion.Consumed!.Usage, ownNano, completion.Consumed?.Deployment, hedge);

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
                Interlocked.Add(ref _costSavedNanoUsd, Cost.NanoUsd.From(saving.CostSaved));
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

}

/// <summary>A failed request, as the dashboard lists it.</summary>
internal sealed record RecentFailure(DateTimeOffset Time, string RequestId, string Model, int Status, string Code, string Message);
