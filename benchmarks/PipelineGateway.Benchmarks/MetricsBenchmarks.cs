using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// The metrics sink's cost per finished request (counters, histograms, per-model and per-key totals, and the
/// GenAI instruments with no listener, or with the OpenTelemetry SDK aggregating them as <c>pgw serve</c> does for its
/// Prometheus endpoint), single-threaded and from 64 threads. Baseline: one Interlocked.Increment on a shared counter,
/// the least any shared count can cost. One operation = 1,024 requests.
/// </summary>
[MemoryDiagnoser]
public class MetricsSinkBenchmarks
{
    private const int PerOp = 1024;
    private Gateway _gateway = null!;
    private GatewayMetrics _metrics = null!;
    private WorkItem _item = null!;
    private ChatCompletionResponse _response = null!;
    private GatewayAttempt _attempt = null!;
    private long _counter;

    private MeterProvider? _otel;

    [Params(1, 64)]
    public int Threads { get; set; }

    /// <summary>The OpenTelemetry SDK listening (a cumulative reader, as the Prometheus exporter's) or nobody.</summary>
    [Params(false, true)]
    public bool OpenTelemetry { get; set; }

    [GlobalSetup]
    public async Task Setup()
    {
        if (OpenTelemetry)
        {
            // Aggregation happens as each measurement is recorded; the reader only collects (never here).
            _otel = Sdk.CreateMeterProviderBuilder()
                .AddMeter(GatewayTelemetry.MeterName)
                .AddReader(new BaseExportingMetricReader(new NoExport()) { TemporalityPreference = MetricReaderTemporalityPreference.Cumulative })
                .Build();
        }

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
        _attempt = new GatewayAttempt("p", "m", AttemptOutcome.Success, TimeSpan.FromMilliseconds(40)) { Deployment = group.Deployments[0] };
    }

    [GlobalCleanup]
    public async Task Cleanup()
    {
        await _gateway.DisposeAsync();
        _otel?.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = PerOp)]
    public void InterlockedIncrement() => Run(() => Interlocked.Increment(ref _counter));

    [Benchmark(OperationsPerInvoke = PerOp)]
    public void OnCompleted() => Run(() => _metrics.OnCompleted(new Completion(_item, _response, null, TimeSpan.FromMilliseconds(42))));

    /// <summary>A request's whole share: its one attempt (<c>pgw.attempts</c>, the deployment's and provider's counts), then its end.</summary>
    [Benchmark(OperationsPerInvoke = PerOp)]
    public void AttemptAndCompleted() => Run(() =>
    {
        _metrics.OnAttempt(_attempt);
        _metrics.OnCompleted(new Completion(_item, _response, null, TimeSpan.FromMilliseconds(42)));
    });

    private void Run(Action record) => Threaded.Run(Threads, PerOp, _ => record());

    private sealed class NoExport : BaseExporter<Metric>
    {
        public override ExportResult Export(in Batch<Metric> batch) => ExportResult.Success;
    }
}
