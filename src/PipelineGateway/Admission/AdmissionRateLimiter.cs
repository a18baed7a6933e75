using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>
/// The chained, partitioned limits of the admission stage, on requests and on tokens.
/// </summary>
/// <remarks>
/// Hand-written rather than built on System.Threading.RateLimiting, deliberately:
/// (1) its token bucket and sliding window replenish from their own timer and clock, with no
/// <see cref="TimeProvider"/> seam, so limits could not be tested to the request without sleeping;
/// (2) its chained limiter acquires one limiter after another, and a token-bucket lease gives nothing
/// back when disposed, so a refusal by the per-hour limit would still consume the per-minute permit —
/// here every rule of a chain is checked first and charged only if all admit;
/// (3) its sliding window counts whole segments, which lets up to twice the limit through around a
/// segment edge; the window here keeps a log and is exact;
/// (4) a token charge must be corrected after the answer (estimated → actual usage), which its leases cannot do.
/// Each partition has its own lock, so one tenant's traffic never contends with another's.
/// </remarks>
internal sealed partial class AdmissionRateLimiter : IDisposable, Pipeline.ICompletionListener
{
    private readonly RateLimitRule[] _rules;
    private readonly AdmissionOptions _options;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<string, Partition> _partitions = new(StringComparer.Ordinal);
    private readonly IDistributedRateLimitStore? _store;
    private readonly ILogger _logger;
    private readonly ITimer? _sweeper;
    private long _lastFullSweep = long.MinValue;
    private int _storeDown;

    /// <summary>How often partitions back at rest are forgotten.</summary>
    internal static readonly TimeSpan SweepInterval = TimeSpan.FromMinutes(1);

    public AdmissionRateLimiter(IOptions<GatewayOptions> options, TimeProvider time, ILogger<AdmissionRateLimiter>? logger = null, IDistributedRateLimitStore? store = null)
    {
        _options = options.Value.Admission;
        _rules = [.. _options.RateLimits];
        _time = time;
        _store = store;
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        CountsTokens = _rules.Any(r => r.Unit == RateLimitUnit.Tokens);
        if (_rules.Length > 0)
        {
            _sweeper = time.CreateTimer(static s => ((AdmissionRateLimiter)s!).Sweep(), this, SweepInterval, SweepInterval);
        }
    }

    public void Dispose() => _sweeper?.Dispose();

    /// <summary>Rate-limit partitions held now (tenants with recent traffic).</summary>
    public int PartitionCount => _partitions.Count;

    internal IEnumerable<string> PartitionKeys => _partitions.Keys;

    /// <summary>
    /// Forgets every partition that is back at rest (its limits as if new) and has no waiter: recreating it later
    /// behaves exactly the same, so this loses nothing. Returns how many were forgotten.
    /// </summary>
    internal int Sweep()
    {
        var now = _time.GetTimestamp();
        var frequency = _time.TimestampFrequency;
        var forgotten = 0;
        foreach (var (key, partition) in _partitions)
        {
            lock (partition)
            {
                if (partition.Waiters.Count > 0 || !partition.AtRest(now, frequency))
                {
                    continue;
                }

                // Marked under its lock: a caller that looked it up just before sees the mark and looks up again.
                partition.Evicted = true;
                partition.Timer?.Dispose();
            }

            _partitions.TryRemove(new KeyValuePair<string, Partition>(key, partition));
            forgotten++;
        }

        return forgotten;
    }

    /// <summary>The partition of a key, made if new — unless <c>Admission:MaxPartitions</c> are held and none can be forgotten.</summary>
    private Partition? PartitionFor(string key)
    {
        if (_partitions.TryGetValue(key, out var existing))
        {
            return existing;
        }

        if (_partitions.Count >= _options.MaxPartitions)
        {
            // Full: forget those at rest, at most once a second (a sweep walks them all).
            var now = _time.GetTimestamp();
            var last = Interlocked.Read(ref _lastFullSweep);
            if (last == long.MinValue || _time.GetElapsedTime(last, now) >= TimeSpan.FromSeconds(1))
            {
                Interlocked.Exchange(ref _lastFullSweep, now);
                Sweep();
            }

            if (_partitions.Count >= _options.MaxPartitions)
            {
                return null;
            }
        }

        return _partitions.GetOrAdd(key, static (_, rules) => new Partition(rules), _rules);
    }

    /// <summary>True when the limits are shared through a distributed store.</summary>
    public bool IsDistributed => _store is not null && _rules.Length > 0;

    /// <summary>Called when a request starts waiting for a permit (for the metrics).</summary>
    public Action? OnWaitStarted { get; set; }

    public bool IsEnabled => _rules.Length > 0;

    /// <summary>True when some rule is on tokens: only then is the prompt counted at admission.</summary>
    public bool CountsTokens { get; }

    /// <summary>Called with a waiting request once it is admitted, or refused (the item then carries its failure).</summary>
    public Action<WorkItem, RateLimitedException?>? OnWaitOver { get; set; }

    /// <summary>Admits (charging every rule), parks a waiting caller, or refuses without charging any rule.</summary>
    public AdmissionDecision TryAdmit(WorkItem item, out RateLimitedException? refusal)
    {
        refusal = null;
        if (_rules.Length == 0)
        {
            return AdmissionDecision.Admitted;
        }

        if (_store is not null)
        {
            // The decision needs a round trip to the store: it comes back through OnWaitOver, like a waiter's.
            _ = AcquireDistributedAsync(item);
            return AdmissionDecision.Pending;
        }

        return TryAdmitLocal(item, out refusal);
    }

    private AdmissionDecision TryAdmitLocal(WorkItem item, out RateLimitedException? refusal)
    {
        refusal = null;
        var key = PartitionKey(item.Request);
        var tokens = CountsTokens ? item.EstimatedTokens : 0;
        while (true)
        {
            var partition = PartitionFor(key);
            if (partition is null)
            {
                refusal = new RateLimitedException("rate-limit partitions", TimeSpan.FromSeconds(1),
                    $"The gateway holds {_options.MaxPartitions} rate-limit partitions, its configured maximum (Admission:MaxPartitions), and none is idle; retry shortly.");
                return AdmissionDecision.Refused;
            }

            var now = _time.GetTimestamp();
            lock (partition)
            {
                if (partition.Evicted)
                {
                    continue; // forgotten as it was looked up: look up again
                }

                // Waiters go first, in arrival order: a newcomer never jumps the queue, and its wait counts every
                // waiter ahead of it (not just the first).
                var wait = partition.Waiters.Count > 0
                    ? partition.WaitBehindWaiters(tokens, out var limitName)
                    : partition.TimeUntilAvailable(now, tokens, _time.TimestampFrequency, out limitName);
                if (wait == TimeSpan.Zero)
                {
                    item.RateLimitCharge = partition.Charge(now, tokens);
                    return AdmissionDecision.Admitted;
                }

                var nowUtc = _time.GetUtcNow();
                var giveUpAt = Min(nowUtc + _options.MaxWait, item.Deadline);
                if (item.Mode == SubmitMode.Wait && wait != TimeSpan.MaxValue && nowUtc + wait <= giveUpAt)
                {
                    item.NeverReuse(); // the permit's timer and shutdown reach it from other threads
                    partition.Park(new Waiter(item, tokens, giveUpAt));
                    if (partition.Waiters.Count == 1)
                    {
                        Schedule(partition, wait);
                    }

                    return AdmissionDecision.Parked;
                }

                refusal = new RateLimitedException(limitName, wait == TimeSpan.MaxValue ? _rules[0].Window : wait,
                    wait == TimeSpan.MaxValue ? $"The request ({tokens} estimated tokens) is larger than the limit '{limitName}' allows at all." : null);
                return AdmissionDecision.Refused;
            }
        }
    }

    /// <summary>
    /// A request ended: its token charge becomes the upstream usage — what an interrupted stream consumed, nothing for
    /// any other failure, a hit or a coalesced request; a billed answer that reported no usage keeps its estimate.
    /// </summary>
    public void OnCompleted(in Pipeline.Completion completion)
    {
        if (completion.BilledUsage is { } usage)
        {
            Settle(completion.Item, usage.TotalTokens);
        }
        else if (!completion.Billed)
        {
            Settle(completion.Item, 0);
        }
    }

    /// <summary>Corrects a token charge to the actual usage (0 when no answer came, or it came from the cache).</summary>
    public void Settle(WorkItem item, long actualTokens)
    {
        if (item.DistributedCharge is { } shared)
        {
            item.DistributedCharge = null;
            if (CountsTokens && actualTokens != shared.Tokens)
            {
                _ = _store!.AdjustAsync(shared, actualTokens - shared.Tokens, CancellationToken.None).AsTask();
            }

            return;
        }

        if (item.RateLimitCharge is not { } charge || !CountsTokens)
        {
            return;
        }

        item.RateLimitCharge = null;
        lock (charge.Partition)
        {
            // A partition forgotten meanwhile was at rest: the charge had left every window, nothing to correct.
            if (!charge.Partition.Evicted)
            {
                charge.Partition.Adjust(charge, actualTokens - charge.Tokens);
            }
        }
    }

    /// <summary>What is left of each rule for a request's partition (for x-ratelimit-* headers).</summary>
    public IReadOnlyList<RateLimitStatus> GetStatus(ChatCompletionRequest request)
    {
        var key = PartitionKey(request);
        if (!_partitions.TryGetValue(key, out var partition))
        {
            return [.. _rules.Select(r => new RateLimitStatus(r.DisplayName, r.Limit, r.Burst ?? r.Limit, TimeSpan.Zero) { Unit = r.Unit })];
        }

        var now = _time.GetTimestamp();
        lock (partition)
        {
            return [.. _rules.Select((r, i) => partition.Limits[i].Status(r.DisplayName, r.Limit, now, _time.TimestampFrequency) with { Unit = r.Unit })];
        }
    }

    public string PartitionKey(ChatCompletionRequest request)
    {
        var by = _options.PartitionBy;
        if (by == RateLimitPartition.None)
        {
            return string.Empty;
        }

        var key = (by & RateLimitPartition.Key) != 0 ? request.Gateway?.RateLimitKey ?? string.Empty : string.Empty;
        if ((by & RateLimitPartition.User) != 0)
        {
            key = key + "\u001fu:" + request.AccountedUser; // the user it names by any of its names, cut as budgets cut it
        }

        if ((by & RateLimitPartition.Model) != 0)
        {
            key = key + "\u001fm:" + (request.RoutedModel ?? request.Model); // the model, not its spelling: a caller varying case or alias is one partition
        }

        return key;
    }
}

internal enum AdmissionDecision
{
    Admitted,
    Parked,
    Refused,

    /// <summary>Asked a distributed store; the answer comes back through the wait-over callback.</summary>
    Pending,
}

/// <summary>What admission charged a request, kept so the charge can be corrected to actual usage.</summary>
internal sealed record RateLimitCharge(AdmissionRateLimiter.Partition Partition, long Tokens, long[] Handles);

/// <summary>A rule's state for one partition, at a moment.</summary>
internal readonly record struct RateLimitStatus(string Name, long Limit, long Remaining, TimeSpan ResetAfter)
{
    public RateLimitUnit Unit { get; init; }
}
