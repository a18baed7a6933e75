using BenchmarkDotNet.Attributes;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;
using PipelineGateway.Sqlite;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// The request log's writer side: committing rows to SQLite (WAL, a prepared insert) on a temporary file, in
/// transactions of 256 rows as the writer's loop commits them (<see cref="RequestLogOptions.MaxBatch"/>). Reported per
/// row: the writer keeps up with R requests a second while a row costs under 1/R of a second of its one thread. Each
/// iteration's rows are built before it with timestamps after the previous iteration's, as a running gateway's are
/// (rows that went back in time would land inside the table's time order and the key-and-time index instead of at
/// their ends: ~5× the cost per row).
/// </summary>
[MemoryDiagnoser]
public class RequestLogWriteBenchmarks
{
    private const int Transaction = 256;
    private const int Rows = Transaction * 40;
    private string _dir = null!;
    private SqliteRequestLogStore _store = null!;
    private RequestRecord[] _rows = null!;
    private DateTimeOffset _clock;
    private long _sequence = 1_000_000;

    /// <summary>
    /// "Server": rows shaped as the gateway builds them (a sequence-numbered request id, the one successful attempt as a
    /// list); "Texts": the id and the attempts as strings, as a library host's own records are. Sixteen keys, one model.
    /// </summary>
    [Params("Server", "Texts")]
    public string Shape { get; set; } = "Server";

    /// <summary>
    /// "Shipped": the schema as shipped (schema 4: rows in time order by their id, the key-and-time index only);
    /// "TimeIndex": with the index on <c>ts</c> made again after the schema is — the write as schema 3 paid it.
    /// </summary>
    [Params("Shipped", "TimeIndex")]
    public string Indexes { get; set; } = "Shipped";

    [GlobalSetup]
    public async Task Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "pgw-bench-log-" + Guid.NewGuid().ToString("N"));
        var options = new GatewayOptions();
        options.RequestLog.Path = Path.Combine(_dir, "gateway.db");
        _store = new SqliteRequestLogStore(Options.Create(options));
        await _store.InitializeAsync(CancellationToken.None);
        if (Indexes == "TimeIndex")
        {
            await using var connection = new SqliteConnection($"Data Source={options.RequestLog.Path}");
            await connection.OpenAsync();
            await using var create = connection.CreateCommand();
            create.CommandText = "CREATE INDEX requests_ts ON requests (ts);";
            await create.ExecuteNonQueryAsync();
        }

        _clock = DateTimeOffset.UtcNow;
    }

    [IterationSetup]
    public void NextRows()
    {
        _rows = [.. Enumerable.Range(0, Rows).Select(Shape == "Server" ? (Func<int, RequestRecord>)ServerRow : TextRow)];
        _clock = _clock.AddTicks(Rows * 1_000L);
        _sequence += Rows;
    }

    private RequestRecord ServerRow(int i) => new()
    {
        Timestamp = _clock.AddTicks(i * 1_000L),
        RequestSequence = _sequence + i,
        KeyId = "team-" + (i % 16),
        Model = "gpt-4o-mini",
        Provider = "openai",
        ProviderModel = "gpt-4o-mini-2024-07-18",
        Status = 200,
        PromptTokens = 100 + (i % 50),
        CompletionTokens = 40 + (i % 30),
        Cost = 0.0000468m + (i % 7) * 0.0000001m,
        LatencyMs = 412.5 + (i % 100) * 0.01,
        AttemptList = [new GatewayAttempt("openai", "gpt-4o-mini-2024-07-18", AttemptOutcome.Success, TimeSpan.FromMilliseconds(410.2 + (i % 100) * 0.01))],
    };

    private RequestRecord TextRow(int i) => new()
    {
        Timestamp = _clock.AddTicks(i * 1_000L),
        RequestId = $"req_bench_{_sequence + i}",
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
    };

    [GlobalCleanup]
    public void Cleanup()
    {
        _store.Dispose();
        SqliteConnection.ClearAllPools();
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark(OperationsPerInvoke = Rows)]
    public async Task Commit256RowTransactions()
    {
        for (var start = 0; start < Rows; start += Transaction)
        {
            await _store.WriteAsync(new ArraySegment<RequestRecord>(_rows, start, Transaction), CancellationToken.None);
        }
    }
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
