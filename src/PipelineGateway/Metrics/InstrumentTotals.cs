using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace PipelineGateway.Metrics;

/// <summary>
/// The totals behind the counting instruments (<c>pgw.requests</c>, <c>pgw.cache.hits</c>, <c>pgw.cost</c>,
/// <c>pgw.attempts</c>): kept here, one series per tag set, and handed to the listener when it collects (observable
/// counters), instead of a measurement per counter per request. Why not plain counters: the OpenTelemetry SDK looks
/// each measurement's tag set up again (hashing every key and value) — with six measurements a request the instruments
/// were ~2% of the gateway's CPU per request in a paired profile against YARP (issue 21, docs/benchmarks.md). A request
/// now costs one lookup here for all three of its counters, and the SDK records only the histograms (duration, tokens),
/// which cannot be observed. A listener reads the same totals: cumulative per series, as the SDK's counters were.
/// <para>
/// Series are kept while the gateway runs. Their tag values are bounded by the labels' own rules (model names, the
/// response model's labels, error types); past <see cref="MaxSeries"/> tag sets an instrument folds new ones into one
/// series tagged <c>otel.metric.overflow</c>, as the SDK does past its cardinality limit.
/// </para>
/// </summary>
internal sealed class InstrumentTotals(string providerAttribute)
{
    /// <summary>Tag sets kept per instrument family before new ones fold into the overflow series.</summary>
    internal const int MaxSeries = 10_000;

    private static readonly KeyValuePair<string, object?>[] OverflowTags = [new("otel.metric.overflow", true)];

    private readonly ConcurrentDictionary<RequestKey, RequestSeries> _requests = new();
    private readonly ConcurrentDictionary<AttemptKey, AttemptSeries> _attempts = new();
    private readonly RequestSeries _requestOverflow = new(OverflowTags);
    private readonly AttemptSeries _attemptOverflow = new(OverflowTags);
    private int _requestSeries;
    private int _attemptSeries;

    /// <summary>The series of one finished operation's standard attributes (those of <see cref="GatewayInstruments.Tags"/>).</summary>
    public RequestSeries Request(string operation, string system, string requestModel, string? responseModel, string? errorType)
    {
        var key = new RequestKey(operation, system, requestModel, responseModel, errorType);
        return _requests.TryGetValue(key, out var series) ? series : Add(_requests, key, ref _requestSeries, _requestOverflow, k => new RequestSeries(k.Tags(providerAttribute)));
    }

    /// <summary>Counts one attempt sent upstream.</summary>
    public void Attempt(string system, string provider, AttemptOutcome outcome, string? deployment, int? status)
    {
        var key = new AttemptKey(system, provider, outcome, deployment, status);
        var series = _attempts.TryGetValue(key, out var found) ? found : Add(_attempts, key, ref _attemptSeries, _attemptOverflow, k => new AttemptSeries(k.Tags(providerAttribute)));
        Interlocked.Increment(ref series.Count);
    }

    private static TSeries Add<TKey, TSeries>(ConcurrentDictionary<TKey, TSeries> map, TKey key, ref int count, TSeries overflow, Func<TKey, TSeries> make)
        where TKey : notnull
    {
        if (Interlocked.Increment(ref count) > MaxSeries)
        {
            Interlocked.Decrement(ref count);
            return map.TryGetValue(key, out var kept) ? kept : overflow;
        }

        var made = make(key);
        var added = map.GetOrAdd(key, made);
        if (!ReferenceEquals(added, made))
        {
            Interlocked.Decrement(ref count); // another request added it first
        }

        return added;
    }

    /// <summary><c>pgw.requests</c>: each series' count per outcome that happened.</summary>
    public IEnumerable<Measurement<long>> Requests()
    {
        foreach (var series in Series(_requests, _requestOverflow))
        {
            for (var outcome = 0; outcome < RequestSeries.Outcomes.Length; outcome++)
            {
                if (Volatile.Read(ref series.Ended[outcome]) is var n and > 0)
                {
                    yield return new Measurement<long>(n, series.WithOutcome[outcome]);
                }
            }
        }
    }

    /// <summary><c>pgw.cache.hits</c>.</summary>
    public IEnumerable<Measurement<long>> CacheHits()
    {
        foreach (var series in Series(_requests, _requestOverflow))
        {
            if (Volatile.Read(ref series.CacheHits) is var n and > 0)
            {
                yield return new Measurement<long>(n, series.Tags);
            }
        }
    }

    /// <summary><c>pgw.cost</c>, in USD (kept as whole nano-dollars: the sum is exact, as the metrics snapshot's).</summary>
    public IEnumerable<Measurement<double>> Cost()
    {
        foreach (var series in Series(_requests, _requestOverflow))
        {
            if (Volatile.Read(ref series.CostNano) is var nano and > 0)
            {
                yield return new Measurement<double>(nano / 1e9, series.Tags);
            }
        }
    }

    /// <summary><c>pgw.attempts</c>.</summary>
    public IEnumerable<Measurement<long>> Attempts()
    {
        foreach (var series in Series(_attempts, _attemptOverflow))
        {
            if (Volatile.Read(ref series.Count) is var n and > 0)
            {
                yield return new Measurement<long>(n, series.Tags);
            }
        }
    }

    /// <summary>The series kept, then the overflow's: the dictionary enumerated as it stands (no lock taken, unlike its <c>Values</c>, which would hold every request's lookup while a scrape copies).</summary>
    private static IEnumerable<TSeries> Series<TKey, TSeries>(ConcurrentDictionary<TKey, TSeries> kept, TSeries overflow)
        where TKey : notnull
    {
        foreach (var pair in kept)
        {
            yield return pair.Value;
        }

        yield return overflow;
    }

    /// <summary>One finished operation's tag set and its totals.</summary>
    internal sealed class RequestSeries
    {
        public const int Success = 0, Cached = 1, Coalesced = 2, Failure = 3;

        /// <summary>The <c>pgw.outcome</c> values, indexed by <see cref="Success"/>, <see cref="Cached"/>, <see cref="Coalesced"/> and <see cref="Failure"/>.</summary>
        internal static readonly string[] Outcomes = ["success", "cached", "coalesced", "failure"];

        public RequestSeries(KeyValuePair<string, object?>[] tags)
        {
            Tags = tags;
            WithOutcome = [.. Outcomes.Select(o => (KeyValuePair<string, object?>[])[.. tags, new("pgw.outcome", o)])];
        }

        public KeyValuePair<string, object?>[] Tags { get; }

        public KeyValuePair<string, object?>[][] WithOutcome { get; }

        public readonly long[] Ended = new long[Outcomes.Length];
        public long CacheHits;
        public long CostNano;

        /// <summary>A request ended: <paramref name="outcome"/> indexes <see cref="Outcomes"/>.</summary>
        public void End(int outcome, bool cacheHit)
        {
            Interlocked.Increment(ref Ended[outcome]);
            if (cacheHit)
            {
                Interlocked.Increment(ref CacheHits);
            }
        }

        public void AddCost(long nanoUsd) => Interlocked.Add(ref CostNano, nanoUsd);
    }

    internal sealed class AttemptSeries(KeyValuePair<string, object?>[] tags)
    {
        public KeyValuePair<string, object?>[] Tags { get; } = tags;

        public long Count;
    }

    private readonly record struct RequestKey(string Operation, string System, string RequestModel, string? ResponseModel, string? ErrorType)
    {
        /// <summary>The attributes, in the order <see cref="GatewayInstruments.Tags"/> gives them.</summary>
        public KeyValuePair<string, object?>[] Tags(string providerAttribute)
        {
            var tags = new List<KeyValuePair<string, object?>>(5)
            {
                new("gen_ai.operation.name", Operation),
                new(providerAttribute, System),
                new("gen_ai.request.model", RequestModel),
            };
            if (ResponseModel is not null)
            {
                tags.Add(new("gen_ai.response.model", ResponseModel));
            }

            if (ErrorType is not null)
            {
                tags.Add(new("error.type", ErrorType));
            }

            return [.. tags];
        }
    }

    private readonly record struct AttemptKey(string System, string Provider, AttemptOutcome Outcome, string? Deployment, int? Status)
    {
        public KeyValuePair<string, object?>[] Tags(string providerAttribute)
        {
            var tags = new List<KeyValuePair<string, object?>>(5)
            {
                new(providerAttribute, System),
                new("pgw.provider", Provider),
                new("pgw.outcome", GatewayInstruments.OutcomeLabel(Outcome)),
            };
            if (Deployment is not null)
            {
                tags.Add(new("pgw.deployment", Deployment));
            }

            if (Status is { } status)
            {
                tags.Add(new("http.response.status_code", status));
            }

            return [.. tags];
        }
    }
}
