using BenchmarkDotNet.Attributes;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;
using PipelineGateway.Sqlite;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// The request log's writer side: committing a batch of rows to SQLite (WAL, one transaction, prepared insert) on a
/// temporary file. Reported per row (OperationsPerInvoke = the batch size): the writer keeps up with R requests a second
/// while a row costs under 1/R of a second of its one thread (10,000 req/s: 100 µs a row).
/// </summary>
[MemoryDiagnoser]
public class RequestLogWriteBenchmarks
{
    private const int Batch = 2_000;
    private string _dir = null!;
    private SqliteRequestLogStore _store = null!;
    private RequestRecord[] _rows = null!;

    [GlobalSetup]
    public async Task Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "pgw-bench-log-" + Guid.NewGuid().ToString("N"));
        var options = new GatewayOptions();
        options.RequestLog.Path = Path.Combine(_dir, "gateway.db");
        _store = new SqliteRequestLogStore(Options.Create(options));
        await _store.InitializeAsync(CancellationToken.None);
        var now = DateTimeOffset.UtcNow;
        _rows = [.. Enumerable.Range(0, Batch).Select(i => new RequestRecord
        {
            Timestamp = now,
            RequestId = $"req_bench_{i}",
            KeyId = "team-" + (i % 16),
            Model = "gpt-4o-mini",
            Provider = "openai",
            ProviderModel = "gpt-4o-mini-2024-07-18",
            Status = 200,
            PromptTokens = 120,
            CompletionTokens = 48,
            Cost = 0.0000468m,
            LatencyMs = 412.5,
            Attempts = """[{"provider":"openai","model":"gpt-4o-mini-2024-07-18","outcome":"Success","latency_ms":410.2}]""",
        })];
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _store.Dispose();
        SqliteConnection.ClearAllPools();
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public ValueTask CommitBatchOf2000() => _store.WriteAsync(_rows, CancellationToken.None);
}

/// <summary>
/// What the log adds to a request in-process: SubmitAsync through the whole pipeline with the SQLite log on and off
/// (zero-latency provider, concurrency 64; the writer runs on its own thread, so this is the caller-side cost plus
/// the writer's share of the two cores).
/// </summary>
[MemoryDiagnoser]
public class RequestLogPipelineBenchmarks
{
    private const int Total = 4096;
    private Gateway _gateway = null!;
    private ChatCompletionRequest _request = null!;
    private string _dir = null!;

    [Params(false, true)]
    public bool Logged { get; set; }

    [GlobalSetup]
    public async Task Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "pgw-bench-log-" + Guid.NewGuid().ToString("N"));
        _request = new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("Hello!")] };
        var builder = new GatewayBuilder()
            .AddProvider(new InstantProvider("instant"), workers: Environment.ProcessorCount * 2, queueCapacity: 1024)
            .AddModel("m", "instant")
            .Configure(o =>
            {
                o.Pipeline.MaxInFlight = 2048;
                o.Pipeline.AdmissionQueueCapacity = 2048;
                o.Fairness.MaxQueuedPerKey = 2048;
                o.RequestLog.Path = Path.Combine(_dir, "gateway.db");
                o.RequestLog.Enabled = Logged;
            });
        _gateway = await builder.AddSqliteRequestLog().StartAsync();
    }

    [GlobalCleanup]
    public async Task Cleanup()
    {
        await _gateway.DisposeAsync();
        SqliteConnection.ClearAllPools();
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Benchmark(OperationsPerInvoke = Total)]
    public Task SubmitThroughPipeline()
    {
        var tasks = new Task[64];
        for (var c = 0; c < tasks.Length; c++)
        {
            tasks[c] = Task.Run(async () =>
            {
                for (var i = 0; i < Total / 64; i++)
                {
                    await _gateway.SubmitAsync(_request);
                }
            });
        }

        return Task.WhenAll(tasks);
    }
}
