namespace PipelineGateway.Tests.Support;

/// <summary>
/// Tests that measure the process's retained memory (<see cref="GC.GetTotalMemory(bool)"/>) run alone, after the parallel
/// ones: another test allocating meanwhile is counted too (a per-waiter bound failed by ~13% that way under the full
/// suite while it held alone).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MemoryMeasured
{
    public const string Name = "memory measured";
}
