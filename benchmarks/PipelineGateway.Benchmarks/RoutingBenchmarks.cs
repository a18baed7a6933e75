using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// One routing decision as the router makes it (health filter, strategy, acquire) for a group of 2, 16 or 128
/// deployments, per strategy. Baseline: picking index 0 of the same span (the loop overhead alone).
/// </summary>
[MemoryDiagnoser]
public class RoutingBenchmarks
{
    private Gateway _gateway = null!;
    private DeploymentSelector _selector = null!;
    private WorkItem _item = null!;
    private ModelGroup _group = null!;
    private Deployment[] _scratch = new Deployment[256];

    [Params(2, 16, 128)]
    public int Deployments { get; set; }

    [Params("RoundRobin", "LowestLatency", "CostOptimized", "Priority", "Weighted", "LeastBusy")]
    public string Strategy { get; set; } = "RoundRobin";

    [GlobalSetup]
    public async Task Setup()
    {
        _gateway = await new GatewayBuilder()
            .AddProvider(new InstantProvider("p"))
            .Configure(o =>
            {
                var group = new ModelGroupOptions { Name = "m", Strategy = Strategy };
                for (var i = 0; i < Deployments; i++)
                {
                    group.Deployments.Add(new DeploymentOptions { Provider = "p", Model = "model-" + i, Priority = i, Weight = 1 + (i % 3), InputPricePerMillion = 1 + (i % 7), OutputPricePerMillion = 2 + (i % 5) });
                }

                o.Models.Add(group);
            })
            .StartAsync();
        _selector = _gateway.Services.GetRequiredService<DeploymentSelector>();
        _group = _gateway.Services.GetRequiredService<ModelCatalog>().Groups[0];
        var now = DateTimeOffset.UtcNow;
        for (var i = 0; i < _group.Deployments.Count; i++)
        {
            _group.Deployments[i].State.RecordLatency(10 + (i * 7 % 50), now, 0.3);
        }

        var request = new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("Hello, how are you today?")] };
        _item = new WorkItem(request, _group, stream: false, TimeSpan.FromMinutes(1), new Pipeline.Deadlines(TimeProvider.System), CancellationToken.None);
    }

    [GlobalCleanup]
    public async Task Cleanup() => await _gateway.DisposeAsync();

    [Benchmark]
    public Deployment? Select() => _selector.Select(_item, _group, ref _scratch);
}
