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

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        _files.Dispose();
    }
}
