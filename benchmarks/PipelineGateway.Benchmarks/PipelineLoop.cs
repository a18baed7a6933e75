using System.Diagnostics;

namespace PipelineGateway.Benchmarks;

/// <summary>The in-process path under a profiler: PipelineBenchmarks' gateway and callers, looping for a fixed time (after 5 s not counted).</summary>
internal static class PipelineLoop
{
    public static async Task RunAsync(int concurrency, int seconds)
    {
        var bench = new PipelineBenchmarks { Concurrency = concurrency };
        await bench.Setup();
        var warm = Stopwatch.StartNew();
        while (warm.Elapsed.TotalSeconds < 5)
        {
            await bench.SubmitThroughPipeline(); // tiered compilation settles first; not counted
        }

        var stop = Stopwatch.StartNew();
        long operations = 0;
        while (stop.Elapsed.TotalSeconds < seconds)
        {
            await bench.SubmitThroughPipeline();
            operations++;
        }

        var perRequest = stop.Elapsed.TotalMicroseconds / (operations * PipelineBenchmarks.TotalPerOperation);
        Console.WriteLine($"{operations * PipelineBenchmarks.TotalPerOperation:N0} requests at concurrency {concurrency} in {stop.Elapsed.TotalSeconds:F1} s: {perRequest:F3} us each");
        await bench.Cleanup();
    }
}
