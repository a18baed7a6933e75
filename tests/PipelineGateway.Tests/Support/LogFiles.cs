using Microsoft.Data.Sqlite;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// A temporary directory for request logs (<see cref="Db"/>: <c>data/gateway.db</c> in it): SQLite's pooled
/// connections are closed before the directory is removed.
/// </summary>
public sealed class LogFiles : IDisposable
{
    private readonly BatchFiles _files = new();

    public string Dir => _files.Dir;

    public string Db => Path.Combine(_files.Dir, "data", "gateway.db");

    /// <summary>
    /// The requests table as schema 1 made it — a log an earlier build wrote — with <paramref name="more"/> (a later
    /// schema's columns, each after a comma) at its end.
    /// </summary>
    public static string OldRequestsTable(string more = "") => $"""
        CREATE TABLE requests (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, request_id TEXT NOT NULL, key_id TEXT NOT NULL,
            model TEXT NOT NULL, provider TEXT, provider_model TEXT, status INTEGER NOT NULL, error_code TEXT, error_type TEXT,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost_nano INTEGER NOT NULL, cost_saved_nano INTEGER NOT NULL,
            cached INTEGER NOT NULL, coalesced INTEGER NOT NULL, stream INTEGER NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL,
            priority TEXT NOT NULL, attempts TEXT, prompt TEXT, answer TEXT, upstream_ms REAL{more});
        """;

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        _files.Dispose();
    }
}
