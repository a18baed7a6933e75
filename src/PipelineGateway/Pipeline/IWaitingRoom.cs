namespace PipelineGateway.Pipeline;

/// <summary>
/// A place where a request waits without a stage looking at it: a rate-limit partition's queue, the queue for an
/// in-flight slot, a provider's queue, the room of requests parked for a full provider queue. A request that ends while
/// it waits (its caller gave up, its deadline passed) is taken out at once — so it neither keeps its place nor holds
/// its tenant's share of the waiting room until its turn would have come.
/// </summary>
internal interface IWaitingRoom
{
    /// <summary>Takes the request out if it is still waiting here (true: the caller now owns it and lets go of it).</summary>
    bool TryRemove(WorkItem item);
}
