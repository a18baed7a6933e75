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
        Admission = new StageChannel(Bounded(p.AdmissionQueueCapacity), p.PassThroughIdleStages);

        // Deadlock freedom: at most MaxInFlight items exist past admission (each holds a slot until it is retired).
        // The cache, router and dead-letter channels hold MaxInFlight each, so a write to them can never find them
        // full: every stage uses TryWrite and never waits, which also breaks the router → provider queue →
        // dead-letter → router cycle.
        // A write may be handled by an idle reading stage on the writer's thread (StageChannel): it then never
        // enters the channel, so the argument only gets stronger.
        CacheLookup = new StageChannel(Bounded(MaxInFlight), p.PassThroughIdleStages);
        Routing = new StageChannel(Bounded(MaxInFlight), p.PassThroughIdleStages);
        DeadLetter = new StageChannel(Bounded(MaxInFlight), p.PassThroughIdleStages);
    }

    public int MaxInFlight { get; }

    /// <summary>Submitted requests, read by the admission stage.</summary>
    public StageChannel Admission { get; }

    /// <summary>Requests holding a slot, read by the cache stage.</summary>
    public StageChannel CacheLookup { get; }

    /// <summary>Requests to place at a provider (cache misses, retries, fallbacks), read by the router.</summary>
    public StageChannel Routing { get; }

    /// <summary>Failed attempts, read by the dead-letter stage.</summary>
    public StageChannel DeadLetter { get; }

    private static BoundedChannelOptions Bounded(int capacity) => new(capacity)
    {
        FullMode = BoundedChannelFullMode.Wait,
        SingleReader = true,
        SingleWriter = false,
        AllowSynchronousContinuations = false,
    };
}
