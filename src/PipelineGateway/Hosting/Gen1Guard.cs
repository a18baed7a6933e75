using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Hosting;

/// <summary>
/// Keeps dead requests from piling up in the GC's generation 1 while the runtime is still tuning its budgets
/// (<see cref="GatewayServiceCollectionExtensions.AddGatewayGcGen1Guard"/>; on by default in the HTTP server,
/// <c>Gateway:Server:GcGen1GuardMiB</c>). Under load from a cold start, .NET's server GC (with DATAS) collects
/// only gen0 for the first ~10–20 s: each collection promotes the requests in flight at that moment into gen1, and
/// gen1's first budget is large enough that 15–25 MB of long-dead requests accumulate there before the first gen1
/// collection re-tunes it — the warm-up's peak of resident memory (docs/benchmarks.md, issue 21). The runtime's own
/// cap, <c>DOTNET_GCGen1MaxBudget</c>, is read from the environment only (a process cannot ship it in its
/// runtimeconfig), so the guard looks after each collection instead: when gen1 holds more than the limit and more
/// than <see cref="SurvivorMultiple"/> times what that collection promoted, it asks for one gen1 collection. The second
/// condition leaves alone a gen1 that is large only because many requests were in flight at the last collection (it
/// promoted them all): it takes a pile of older survivors — in a gateway, requests long answered — to trigger it.
/// </summary>
internal sealed partial class Gen1Guard : IHostedService, IDisposable
{
    /// <summary>How often the guard looks (it does nothing when no collection happened since it last looked).</summary>
    internal static readonly TimeSpan Period = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// Gen1 must hold more than this many times what the latest collection promoted. With a 1 s upstream and 3,000
    /// connections (a collection every ~3 s, each promoting ~20 MB of requests in flight) 2 kept the peak ~40 MiB lower
    /// than 4 (docs/benchmarks.md); the runtime's own cap, 4 MiB per heap, is stricter than either.
    /// </summary>
    internal const int SurvivorMultiple = 2;

    private readonly long _limitBytes;
    private readonly GcProbe _probe;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private ITimer? _timer;
    private int _checking;

    public Gen1Guard(Limit limit, TimeProvider time, ILogger<Gen1Guard> logger, GcProbe? probe = null)
    {
        _limitBytes = (long)limit.MiB << 20;
        _time = time;
        _logger = logger;
        _probe = probe ?? new GcProbe();
    }

    /// <summary>Gen1 collections the guard asked for.</summary>
    public int Collections { get; private set; }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (_limitBytes > 0)
        {
            _timer = _time.CreateTimer(static s => ((Gen1Guard)s!).Check(), this, Period, Period);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        Dispose();
        return Task.CompletedTask;
    }

    /// <summary>One look: after a new collection, collects gen1 if it holds a pile of older survivors.</summary>
    internal void Check()
    {
        if (Interlocked.Exchange(ref _checking, 1) == 1)
        {
            return; // the previous look is still collecting
        }

        try
        {
            if (_probe.AfterNewCollection() is not { } last
                || last.Gen1Bytes <= _limitBytes
                || last.Gen1Bytes <= SurvivorMultiple * last.PromotedBytes)
            {
                return;
            }

            _probe.CollectGen1();
            Collections++;
            LogCollected(_logger, last.Gen1Bytes >> 20, last.PromotedBytes >> 10);
        }
        finally
        {
            Volatile.Write(ref _checking, 0);
        }
    }

    public void Dispose()
    {
        _timer?.Dispose();
        _timer = null;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "GC gen1 guard: gen1 held {Gen1MiB} MiB after a collection that promoted {PromotedKiB} KiB; collected gen1")]
    private static partial void LogCollected(ILogger logger, long gen1MiB, long promotedKiB);

    /// <summary>What the guard reads of the GC, and the collection it asks for (tests replace both).</summary>
    internal class GcProbe
    {
        private int _seen = -1;

        /// <summary>Gen1's size and the bytes promoted by the latest collection, or null when none happened since the last call.</summary>
        public virtual Sample? AfterNewCollection()
        {
            // A counter read first: GetGCMemoryInfo allocates, and most looks find no new collection on an idle server.
            var count = GC.CollectionCount(0);
            if (count == _seen)
            {
                return null;
            }

            _seen = count;
            var info = GC.GetGCMemoryInfo(GCKind.Any);
            return new Sample(info.GenerationInfo[1].SizeAfterBytes, info.PromotedBytes);
        }

        public virtual void CollectGen1() => GC.Collect(1, GCCollectionMode.Forced, blocking: true);
    }

    internal readonly record struct Sample(long Gen1Bytes, long PromotedBytes);

    /// <summary>The guard's limit in MiB (0: it never looks).</summary>
    internal sealed record Limit(int MiB);
}
