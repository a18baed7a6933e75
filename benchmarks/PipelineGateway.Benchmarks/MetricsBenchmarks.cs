using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// The metrics sink's cost per finished request (counters, histograms, per-model and per-key totals, and the
/// GenAI instruments with no listener), single-threaded and from 64 threads. Baseline: one Interlocked.Increment
/// on a shared counter, the least any shared count can cost. One operation = 1,024 requests.
/// </summary>
[MemoryDiagnoser]
public class MetricsSinkBenchmarks
{
    private const int PerOp = 1024;
    private Gateway _gateway = null!;
    private GatewayMetrics _metrics = null!;
    private WorkItem _item = null!;
    private ChatCompletionResponse _response = null!;
    private long _counter;

    [Params(1, 64)]
    public int Threads { get; set; }

    [GlobalSetup]
    public async Task Setup()
    {
        _gateway = await new GatewayBuilder().AddProvider(new InstantProvider("p")).AddModel("m", "p").StartAsync();
        _metrics = _gateway.Services.GetRequiredService<GatewayMetrics>();
        var group = _gateway.Services.GetRequiredService<ModelCatalog>().Groups[0];
        _item = new WorkItem(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("hi")] }, group, false, TimeSpan.FromMinutes(1), new Pipeline.Deadlines(TimeProvider.System), CancellationToken.None);
        _response = new ChatCompletionResponse
        {
            Model = "m",
            Usage = TokenUsage.Of(12, 30),
            Gateway = new GatewayResponseInfo { Provider = "p", ProviderModel = "m", Attempts = [], Cost = 0.0001m },
        };
    }

    [GlobalCleanup]
    public async Task Cleanup() => await _gateway.DisposeAsync();

    [Benchmark(Baseline = true, OperationsPerInvoke = PerOp)]
    public void InterlockedIncrement() => Run(() => Interlocked.Increment(ref _counter));

    [Benchmark(OperationsPerInvoke = PerOp)]
    public void OnCompleted() => Run(() => _metrics.OnCompleted(new Completion(_item, _response, null, TimeSpan.FromMilliseconds(42))));

    private void Run(Action record) => Threaded.Run(Threads, PerOp, _ => record());
}
