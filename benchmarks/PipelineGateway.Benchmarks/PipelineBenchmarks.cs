using BenchmarkDotNet.Attributes;
using PipelineGateway.Hosting;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// SubmitAsync through the whole pipeline (admission → cache → router → worker pool → completion) with a
/// zero-latency in-process provider, against calling that provider directly, at several concurrencies.
/// One benchmark operation = <see cref="Concurrency"/> callers each completing <see cref="PerCaller"/> requests;
/// per-request figures are the reported ones divided by <see cref="OperationsPerInvoke"/>.
/// </summary>
[MemoryDiagnoser]
[ThreadingDiagnoser]
public class PipelineBenchmarks
{
    internal const int TotalPerOperation = 4096;
    private const int OperationsPerInvoke = TotalPerOperation;

    private Gateway _gateway = null!;
    private InstantProvider _provider = null!;
    private ChatCompletionRequest _request = null!;

    [Params(1, 64, 1024)]
    public int Concurrency { get; set; }

    /// <summary>`Pipeline:ReuseWorkItems` (on as shipped): off measures what reusing the work item saves, in the same run.</summary>
    [Params(true, false)]
    public bool ReuseWorkItems { get; set; } = true;

    private int PerCaller => TotalPerOperation / Concurrency;

    [GlobalSetup]
    public async Task Setup()
    {
        _provider = new InstantProvider("instant");
        _request = new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("Hello!")] };
        _gateway = await new GatewayBuilder()
            .AddProvider(_provider, workers: Environment.ProcessorCount * 2, queueCapacity: 1024)
            .AddModel("m", "instant")
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 2048;
                o.Pipeline.ReuseWorkItems = ReuseWorkItems;
                o.Pipeline.AdmissionQueueCapacity = 2048;
                o.Fairness.MaxQueuedPerKey = 2048; // one tenant: its share is the whole waiting room
            })
            .StartAsync();
    }

    [GlobalCleanup]
    public async Task Cleanup() => await _gateway.DisposeAsync();

    [Benchmark(Baseline = true, OperationsPerInvoke = OperationsPerInvoke)]
    public Task DirectProviderCall() => RunCallers(static async (self, n) =>
    {
        for (var i = 0; i < n; i++)
        {
            await self._provider.CompleteAsync(new Providers.ProviderRequest(self._request, "m"), CancellationToken.None);
        }
    });

    [Benchmark(OperationsPerInvoke = OperationsPerInvoke)]
    public Task SubmitThroughPipeline() => RunCallers(static async (self, n) =>
    {
        for (var i = 0; i < n; i++)
        {
            await self._gateway.SubmitAsync(self._request);
        }
    });

    private Task RunCallers(Func<PipelineBenchmarks, int, Task> caller)
    {
        if (Concurrency == 1)
        {
            return caller(this, PerCaller);
        }

        var tasks = new Task[Concurrency];
        for (var c = 0; c < Concurrency; c++)
        {
            tasks[c] = Task.Run(() => caller(this, PerCaller));
        }

        return Task.WhenAll(tasks);
    }
}
