using Microsoft.Extensions.DependencyInjection.Extensions;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;

namespace PipelineGateway.Sqlite;

public static class SqliteRequestLogExtensions
{
    /// <summary>
    /// Keeps the request log in a SQLite file (<c>Gateway:RequestLog:Path</c>, default <c>pgw-data/gateway.db</c>):
    /// one row per request, budgets restored from it at start, queried by <c>/v1/gateway/logs</c>,
    /// <c>/v1/gateway/spend</c> and <c>pgw usage</c>. Nothing is written when <c>Gateway:RequestLog:Enabled</c> is false.
    /// </summary>
    public static TBuilder AddSqliteRequestLog<TBuilder>(this TBuilder builder)
        where TBuilder : IGatewayBuilder
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.TryAddSingleton<IRequestLogStore, SqliteRequestLogStore>();
        return builder;
    }

    /// <summary>
    /// Opens a request log file for reading (what <c>pgw usage</c> does): the same queries, no writer, the file opened
    /// read-only and never changed — a log the caller may not write can be read.
    /// </summary>
    public static async Task<IRequestLogStore> OpenRequestLogAsync(string path, CancellationToken cancellationToken = default)
    {
        var options = new GatewayOptions();
        options.RequestLog.Path = path;
        if (!File.Exists(Path.GetFullPath(path)))
        {
            throw new FileNotFoundException($"No request log at '{Path.GetFullPath(path)}' (pgw serve and pgw batch write one at Gateway:RequestLog:Path, default pgw-data/gateway.db beside the config).", path);
        }

        var store = new SqliteRequestLogStore(Microsoft.Extensions.Options.Options.Create(options), readOnly: true);
        await store.InitializeAsync(cancellationToken).ConfigureAwait(false);
        return store;
    }
}
