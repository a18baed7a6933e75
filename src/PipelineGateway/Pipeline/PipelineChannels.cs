using System.Threading.Channels;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Pipeline;

/// <summary>
/// The bounded channels between the stages, sized in one place so the argument that no stage ever waits on the next
/// (and that the dead-letter → router cycle can never block) can be read here. Each stage is given only the reader it
/// consumes and the writer it feeds (see the registrations in <c>GatewayServiceCollectionExtensions</c>).
/// </summary>
internal sealed class PipelineChannels
{
    public PipelineChannels(IOptions<GatewayOptions> options)
    {
        var p = options.Value.Pipeline;
        MaxInFlight = p.MaxInFlight;

        // The admission gate lets at most AdmissionQueueCapacity requests in before they hold a slot, so the
        // admission channel can never be full when written to.
        Admission = Channel.CreateBounded<WorkItem>(Bounded(p.AdmissionQueueCapacity));

        // Deadlock freedom: at most MaxInFlight items exist past admission (each holds a slot until it is retired).
        // The cache, router and dead-letter channels hold MaxInFlight each, so a write to them can never find them
        // full: every stage uses TryWrite and never waits, which also breaks the router → provider queue →
        // dead-letter → router cycle.
        CacheLookup = Channel.CreateBounded<WorkItem>(Bounded(MaxInFlight));
        Routing = Channel.CreateBounded<WorkItem>(Bounded(MaxInFlight));
        DeadLetter = Channel.CreateBounded<WorkItem>(Bounded(MaxInFlight));
    }

    public int MaxInFlight { get; }

    /// <summary>Submitted requests, read by the admission stage.</summary>
    public Channel<WorkItem> Admission { get; }

    /// <summary>Requests holding a slot, read by the cache stage.</summary>
    public Channel<WorkItem> CacheLookup { get; }

    /// <summary>Requests to place at a provider (cache misses, retries, fallbacks), read by the router.</summary>
    public Channel<WorkItem> Routing { get; }

    /// <summary>Failed attempts, read by the dead-letter stage.</summary>
    public Channel<WorkItem> DeadLetter { get; }

    private static BoundedChannelOptions Bounded(int capacity) => new(capacity)
    {
        FullMode = BoundedChannelFullMode.Wait,
        SingleReader = true,
        SingleWriter = false,
        AllowSynchronousContinuations = false,
    };
}
