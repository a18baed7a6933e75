using BenchmarkDotNet.Running;
using PipelineGateway.Benchmarks;

// `--loop [concurrency] [seconds]`: SubmitAsync through the pipeline as PipelineBenchmarks does, for a fixed time and
// without BenchmarkDotNet's process around it — for a profiler (perf record, dotnet-trace) to sample the in-process path.
if (args is ["--loop", ..])
{
    await PipelineLoop.RunAsync(args.Length > 1 ? int.Parse(args[1]) : 64, args.Length > 2 ? int.Parse(args[2]) : 20);
    return;
}

BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
