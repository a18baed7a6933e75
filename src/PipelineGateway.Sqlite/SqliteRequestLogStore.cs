using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;
using SQLitePCL;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;

namespace PipelineGateway.Sqlite;

/// <summary>
/// The request log in one SQLite file: WAL mode (readers never block the writer), <c>synchronous=NORMAL</c> (a committed
/// batch survives the process being killed), one transaction per batch with a prepared insert, and queries on their
/// own pooled connections. Costs are kept as whole nano-dollars so sums are exact. The schema is in
/// docs/observability.md.
/// </summary>
internal sealed class SqliteRequestLogStore : IRequestLogStore, IDisposable
{
    /// <summary>
    /// A row's id is its request's time: the millisecond shifted left by <see cref="TimeIdShift"/> bits, and a sequence
    /// in the bits below (<see cref="TimeId"/>). The table's own order is then the time order, and a time bound is an id
    /// bound — so the log needs no index on <c>ts</c>, which was a third B-tree to update for every row written: 15–45%
    /// of a row's write (RequestLogWriteBenchmarks, docs/benchmarks.md) and the largest single part of what the gateway
    /// spends per request beyond a plain proxy. Eleven bits (2,048 ids a millisecond) keep an id below 2^53 until the
    /// year 2109: ids and the paging cursor are JSON numbers, read as doubles by JavaScript (and jq 1.6), which lose
    /// integers past 2^53 — a 20-bit shift made cursors such readers handed back wrong.
    /// </summary>
    internal const int TimeIdShift = 11;

    /// <summary>
    /// A millisecond whose ids are all taken (more than 2,048 rows stamped with it: a frozen test clock) gives the rest
    /// SQLite's next id, a later millisecond's: an <c>until</c> bound and the retention look this far past their time
    /// for such rows (checking <c>ts</c> exactly), so they are still found and deleted by their own time.
    /// </summary>
    internal static readonly TimeSpan SpillMargin = TimeSpan.FromMinutes(1);

    /// <summary>
    /// Ids below this are a log's rows from before time ids (schema 3 and older: 1, 2, 3… in the order written, with the
    /// <c>requests_ts</c> index): while a log holds any, time bounds are read from <c>ts</c> through that index.
    /// </summary>
    internal const long TimeIdFloor = 1L << 40;

    private const string Columns = "ts, request_id, key_id, model, provider, provider_model, status, error_code, error_type, prompt_tokens, completion_tokens, cost_nano, cost_saved_nano, cached, coalesced, stream, latency_ms, ttft_ms, priority, attempts, prompt, answer, upstream_ms, usage_estimated, user_id";

    // A log of an older schema opened read-only (pgw usage) reads its missing columns as what that log could hold:
    // usage_estimated (schema 2) as the upstream's usage, user_id (schema 3) as no user named.
    private bool _hasEstimates = true;
    private bool _hasUsers = true;

    // True once the log holds no rows from before time ids: time bounds are then id bounds (TimeIdShift).
    private volatile bool _timeIds;

    /// <summary>Whether time bounds are read from ids (the log holds no rows from before time ids).</summary>
    internal bool TimeIds => _timeIds;

    // The low bits of the next row's id: from a random start, so processes writing one log (pgw batch workers beside a
    // gateway) rarely pick the same id in one millisecond — and one that is taken is passed over (WriteAsync).
    private long _sequence = Random.Shared.NextInt64(1L << TimeIdShift);

    // The last millisecond found with every id taken: its further rows go straight to SQLite's next id (Insert).
    private long _fullTime = -1;

    /// <summary>Tests: the sequence the next row's id takes (two writers made to pick the same one).</summary>
    internal long NextSequence
    {
        set => _sequence = value - 1;
    }

    private string ReadColumns => Columns
        .Replace("usage_estimated", _hasEstimates ? "usage_estimated" : "0", StringComparison.Ordinal)
        .Replace("user_id", _hasUsers ? "user_id" : "NULL", StringComparison.Ordinal);
    private readonly string _path;
    private SqliteConnection? _writer;
    private sqlite3_stmt? _insert;
    private readonly Bound[] _bound = new Bound[27];
    private byte[] _utf8 = new byte[1024];
    private readonly ArrayBufferWriter<byte> _json = new(1024);
    private Utf8JsonWriter? _jsonWriter;

    private readonly int _lockTimeoutMs;
    private readonly bool _readOnly;
    private string _connectionString;

    public SqliteRequestLogStore(IOptions<GatewayOptions> options)
        : this(options, readOnly: false)
    {
    }

    /// <param name="options">The log's path and lock timeout.</param>
    /// <param name="readOnly">
    /// Queries only (<c>pgw usage</c>): the file is opened read-only and never changed — no schema, no writer — so a
    /// log the reader may not write (another user's, a read-only mount, a copy kept immutable) can still be read.
    /// </param>
    internal SqliteRequestLogStore(IOptions<GatewayOptions> options, bool readOnly)
    {
        _readOnly = readOnly;
        _lockTimeoutMs = (int)Math.Clamp(options.Value.RequestLog.LockTimeout.TotalMilliseconds, 0, int.MaxValue);
        _path = System.IO.Path.GetFullPath(options.Value.RequestLog.Path);
        _connectionString = ConnectionString(_path, readOnly ? SqliteOpenMode.ReadOnly : SqliteOpenMode.ReadWriteCreate, options.Value.RequestLog.LockTimeout);
    }

    private static string ConnectionString(string dataSource, SqliteOpenMode mode, TimeSpan lockTimeout) => new SqliteConnectionStringBuilder
    {
        DataSource = dataSource,
        Mode = mode,
        Cache = SqliteCacheMode.Private,
        Pooling = true,
        DefaultTimeout = Math.Max(1, (int)Math.Ceiling(lockTimeout.TotalSeconds)),
    }.ToString();

    public string FilePath => _path;

    public async ValueTask InitializeAsync(CancellationToken cancellationToken)
    {
        if (_readOnly)
        {
            await CheckReadableAsync(cancellationToken).ConfigureAwait(false);
            return;
        }

        try
        {
            var dir = System.IO.Path.GetDirectoryName(_path);
            if (!string.IsNullOrEmpty(dir))
            {
                Directory.CreateDirectory(dir);
            }

            await OpenWriterAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SqliteException or IOException or UnauthorizedAccessException)
        {
            CloseWriter();
            throw new InvalidOperationException($"Gateway:RequestLog:Path '{_path}' cannot be used for the request log: {Reason(ex)} Fix the path or its permissions, or disable the log (Gateway:RequestLog:Enabled = false, or --no-log).", ex);
        }
    }

    /// <summary>
    /// A read-only store checks that the file is a request log it can read. A log in WAL mode is read through its
    /// <c>-shm</c> index, which a reader creates when it is missing (the writer removes it when it closes cleanly): in a
    /// directory the reader may not write, that fails, and the file is then read as immutable — safe, since no writer is
    /// active when there is no <c>-shm</c> to share with it.
    /// </summary>
    private async Task CheckReadableAsync(CancellationToken cancellationToken)
    {
        try
        {
            try
            {
                await CheckSchemaAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (SqliteException ex) when (ex.SqliteErrorCode is 14 or 8 && !File.Exists(_path + "-shm"))
            {
                _connectionString = ConnectionString(new Uri(_path).AbsoluteUri + "?immutable=1", SqliteOpenMode.ReadOnly, TimeSpan.FromMilliseconds(_lockTimeoutMs));
                await CheckSchemaAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch (SqliteException ex)
        {
            throw new InvalidOperationException($"The request log '{_path}' cannot be read: {Reason(ex)}", ex);
        }
    }

    private async Task CheckSchemaAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenReaderAsync(cancellationToken).ConfigureAwait(false);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'";
        if (Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), CultureInfo.InvariantCulture) == 0)
        {
            throw new InvalidOperationException($"'{_path}' is a SQLite database but not a request log (it has no requests table).");
        }

        _hasEstimates = await HasColumnAsync(connection, "usage_estimated", cancellationToken).ConfigureAwait(false);
        _hasUsers = await HasColumnAsync(connection, "user_id", cancellationToken).ConfigureAwait(false);
        _timeIds = !await HasRowsBeforeTimeIdsAsync(connection, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Whether the log holds rows from before time ids (a probe of the table's own B-tree: cheap at any size).</summary>
    private static async Task<bool> HasRowsBeforeTimeIdsAsync(SqliteConnection connection, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = $"SELECT EXISTS (SELECT 1 FROM requests WHERE id < {TimeIdFloor})";
        return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), CultureInfo.InvariantCulture) != 0;
    }

    /// <summary>The id a row written now at <paramref name="timestamp"/> gets (before its sequence): see <see cref="TimeIdShift"/>.</summary>
    internal static long TimeId(DateTimeOffset timestamp) => TimeId(timestamp.ToUnixTimeMilliseconds());

    /// <summary>The first id past every row stamped before <paramref name="bound"/> — spilled ones too (<see cref="SpillMargin"/>).</summary>
    private static long TimeIdPast(DateTimeOffset bound) => TimeId(bound.ToUnixTimeMilliseconds() + (long)SpillMargin.TotalMilliseconds);

    private static long TimeId(long unixMs) => Math.Clamp(unixMs, 0, (long.MaxValue >> TimeIdShift) - 1) << TimeIdShift;

    private static async Task<bool> HasColumnAsync(SqliteConnection connection, string column, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT count(*) FROM pragma_table_info('requests') WHERE name = $column";
        command.Parameters.AddWithValue("$column", column);
        return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), CultureInfo.InvariantCulture) > 0;
    }

    /// <summary>
    /// The table, its indexes, a schema-1 log's new column and the view (inside the caller's write transaction); true when
    /// the log holds no rows from before time ids (so time bounds are id bounds).
    /// </summary>
    private static async Task<bool> CreateSchemaAsync(SqliteConnection connection, CancellationToken cancellationToken)
    {
        await ExecAsync(connection, """
            CREATE TABLE IF NOT EXISTS requests (
                id INTEGER PRIMARY KEY,
                ts INTEGER NOT NULL,
                request_id TEXT NOT NULL,
                key_id TEXT NOT NULL,
                model TEXT NOT NULL,
                provider TEXT,
                provider_model TEXT,
                status INTEGER NOT NULL,
                error_code TEXT,
                error_type TEXT,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                cost_nano INTEGER NOT NULL,
                cost_saved_nano INTEGER NOT NULL,
                cached INTEGER NOT NULL,
                coalesced INTEGER NOT NULL,
                stream INTEGER NOT NULL,
                latency_ms REAL NOT NULL,
                ttft_ms REAL,
                priority TEXT NOT NULL,
                attempts TEXT,
                prompt TEXT,
                answer TEXT,
                upstream_ms REAL,
                usage_estimated INTEGER NOT NULL DEFAULT 0,
                user_id TEXT);
            CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (key_id, ts);
            """, cancellationToken).ConfigureAwait(false);

        // Schema 2: usage_estimated (the usage is the gateway's estimate, not the upstream's count). A log of schema 1
        // gets the column, every existing row marked 0 (they were the upstream's, or nothing).
        if (!await HasColumnAsync(connection, "usage_estimated", cancellationToken).ConfigureAwait(false))
        {
            await ExecAsync(connection, "ALTER TABLE requests ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;", cancellationToken).ConfigureAwait(false);
        }

        // Schema 3: user_id (the end user the request named). Older rows named none: NULL.
        if (!await HasColumnAsync(connection, "user_id", cancellationToken).ConfigureAwait(false))
        {
            await ExecAsync(connection, "ALTER TABLE requests ADD COLUMN user_id TEXT;", cancellationToken).ConfigureAwait(false);
        }

        // The view is made again so a log of schema 1 shows the new column too.
        await ExecAsync(connection, """
            DROP VIEW IF EXISTS request_log;
            CREATE VIEW request_log AS
                SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1000.0, 'unixepoch') AS time, request_id, key_id, model,
                       provider, provider_model, status, error_code, prompt_tokens, completion_tokens,
                       cost_nano / 1e9 AS cost_usd, cost_saved_nano / 1e9 AS cost_saved_usd, cached, coalesced, stream,
                       latency_ms, ttft_ms, upstream_ms, priority, attempts, usage_estimated, user_id
                FROM requests;
            PRAGMA user_version = 4;
            """, cancellationToken).ConfigureAwait(false);

        // Schema 4: time ids (TimeIdShift) and no index on ts. A log with rows from before keeps (or gets back, if a
        // process of this version dropped it and an older one wrote since) the ts index while it holds any: they are
        // not renumbered — a rewrite of the whole table at start, minutes for a large log — but age out through the
        // retention, and the index is dropped then (TimeIdsOnceOldRowsAreGoneAsync).
        var timeIds = !await HasRowsBeforeTimeIdsAsync(connection, cancellationToken).ConfigureAwait(false);
        await ExecAsync(connection, timeIds ? "DROP INDEX IF EXISTS requests_ts;" : "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);", cancellationToken).ConfigureAwait(false);
        return timeIds;
    }

    private async Task OpenWriterAsync(CancellationToken cancellationToken)
    {
        if (_readOnly)
        {
            throw new InvalidOperationException($"The request log '{_path}' was opened for reading only.");
        }

        var connection = new SqliteConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
            await ExecAsync(connection, $"PRAGMA busy_timeout = {_lockTimeoutMs};", cancellationToken).ConfigureAwait(false);
            if (raw.sqlite3_db_readonly(connection.Handle, "main") == 1)
            {
                // SQLite opens a file it may not write read-only, silently: say so now, not at the first batch.
                throw new SqliteException("attempt to write a readonly database (the file or its directory is not writable)", raw.SQLITE_READONLY);
            }

            await ExecAsync(connection, """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = NORMAL;
                PRAGMA wal_autocheckpoint = 10000;
                PRAGMA journal_size_limit = 67108864;
                """, cancellationToken).ConfigureAwait(false);

            // The schema in one write transaction: processes opening one log at once (pgw batch --redis workers beside
            // a gateway, a restart overlapping its predecessor) each wait their turn (busy_timeout) — the view's drop and
            // re-creation, and a schema-1 log's new column, raced, and the second process failed to start ("view
            // request_log already exists").
            await ExecAsync(connection, "BEGIN IMMEDIATE;", cancellationToken).ConfigureAwait(false);
            try
            {
                _timeIds = await CreateSchemaAsync(connection, cancellationToken).ConfigureAwait(false);
                await ExecAsync(connection, "COMMIT;", cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                try
                {
                    await ExecAsync(connection, "ROLLBACK;", CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception rollback) when (rollback is SqliteException or InvalidOperationException)
                {
                    // No transaction left to roll back (SQLite ended it with the failure): the failure is what is said.
                }

                throw;
            }

            // The insert goes through SQLitePCL.raw (the library under Microsoft.Data.Sqlite) on the same connection:
            // SqliteCommand boxes every parameter and allocates a data reader per execution — measured 12.6 µs and
            // 2.6 KB per row (RequestLogWriteBenchmarks, docs/benchmarks.md) — while binding by index into a prepared
            // statement, UTF-8 from a reused buffer, costs a few µs and allocates nothing per row.
            var sql = $"INSERT INTO requests (id, {Columns}) VALUES ({string.Join(", ", Enumerable.Range(1, Columns.Split(", ").Length + 1).Select(i => "?" + i))})";
            Check(connection.Handle!, raw.sqlite3_prepare_v2(connection.Handle, sql, out var insert));
            Array.Clear(_bound);
            _writer = connection;
            _insert = insert;
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async ValueTask WriteAsync(IReadOnlyList<RequestRecord> batch, CancellationToken cancellationToken)
    {
        try
        {
            if (_writer is null)
            {
                await OpenWriterAsync(cancellationToken).ConfigureAwait(false);
            }

            using var tx = _writer!.BeginTransaction();
            var db = _writer.Handle!;
            var stmt = _insert!;
            foreach (var r in batch)
            {
                Int(db, stmt, 2, r.Timestamp.ToUnixTimeMilliseconds());
                RequestId(db, stmt, 3, r);
                Text(db, stmt, 4, r.KeyId);
                Text(db, stmt, 5, r.Model);
                Text(db, stmt, 6, r.Provider);
                Text(db, stmt, 7, r.ProviderModel);
                Int(db, stmt, 8, r.Status);
                Text(db, stmt, 9, r.ErrorCode);
                Text(db, stmt, 10, r.ErrorType);
                Int(db, stmt, 11, r.PromptTokens);
                Int(db, stmt, 12, r.CompletionTokens);
                Int(db, stmt, 13, ToNano(r.Cost));
                Int(db, stmt, 14, ToNano(r.CostSaved));
                Int(db, stmt, 15, r.Cached ? 1 : 0);
                Int(db, stmt, 16, r.Coalesced ? 1 : 0);
                Int(db, stmt, 17, r.Stream ? 1 : 0);
                Real(db, stmt, 18, r.LatencyMs);
                Real(db, stmt, 19, r.TimeToFirstTokenMs);
                Text(db, stmt, 20, r.Priority);
                // The common row — one successful attempt at the deployment that answered — keeps no JSON: its attempt
                // is the row's own provider and model, and its time is upstream_ms (a third less to write per row).
                if (SingleSuccess(r) is { } upstream)
                {
                    Text(db, stmt, 21, null);
                    Real(db, stmt, 24, upstream);
                }
                else
                {
                    Attempts(db, stmt, 21, r);
                    Real(db, stmt, 24, null);
                }

                Text(db, stmt, 22, r.Prompt);
                Text(db, stmt, 23, r.Answer);
                Int(db, stmt, 25, r.UsageEstimated ? 1 : 0);
                Text(db, stmt, 26, r.User);
                Insert(db, stmt, TimeId(r.Timestamp));
            }

            tx.Commit();
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // The file may be gone, locked, read-only or corrupt: start from a fresh connection on the retry.
            CloseWriter();
            throw new InvalidOperationException(Reason(ex), ex);
        }
    }

    /// <summary>
    /// Inserts the bound row under a free id of <paramref name="time"/>'s millisecond: its next sequence, or another when
    /// that one is taken (a process sharing the log took it, or a row stamped with the same millisecond 2,048 rows ago).
    /// A millisecond with no free id found in 64 tries is full: the row then takes SQLite's next id (<see cref="SpillMargin"/>).
    /// </summary>
    private void Insert(sqlite3 db, sqlite3_stmt stmt, long time)
    {
        for (var taken = time == _fullTime ? 64 : 0; ; taken++)
        {
            var id = taken < 64 ? time | (++_sequence & ((1L << TimeIdShift) - 1)) : (long?)null;
            Check(db, id is { } chosen ? raw.sqlite3_bind_int64(stmt, 1, chosen) : raw.sqlite3_bind_null(stmt, 1));
            var rc = raw.sqlite3_step(stmt);
            raw.sqlite3_reset(stmt);
            if (rc == raw.SQLITE_DONE)
            {
                return;
            }

            if (id is null || (rc & 0xFF) != raw.SQLITE_CONSTRAINT || raw.sqlite3_extended_errcode(db) != raw.SQLITE_CONSTRAINT_PRIMARYKEY)
            {
                Check(db, rc);
            }

            if (taken == 63)
            {
                _fullTime = time;
            }
        }
    }

    public async ValueTask<int> DeleteOlderThanAsync(DateTimeOffset cutoff, int max, CancellationToken cancellationToken)
    {
        if (_writer is null)
        {
            return 0;
        }

        // On the writer's connection, between writes (the writer's loop calls it): small chunks keep each pause short.
        using var cmd = _writer.CreateCommand();
        cmd.CommandText = _timeIds
            ? "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE id < $cutoffId AND ts < $cutoff ORDER BY id LIMIT $max)"
            : "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE ts < $cutoff ORDER BY ts LIMIT $max)";
        cmd.Parameters.AddWithValue("$cutoff", cutoff.ToUnixTimeMilliseconds());
        cmd.Parameters.AddWithValue("$cutoffId", TimeIdPast(cutoff));
        cmd.Parameters.AddWithValue("$max", max);
        var deleted = await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        if (!_timeIds && deleted < max)
        {
            await TimeIdsOnceOldRowsAreGoneAsync(cancellationToken).ConfigureAwait(false);
        }

        return deleted;
    }

    /// <summary>
    /// Once the retention has taken a log's last row from before time ids, its ts index is dropped and time bounds are
    /// read from ids from then on.
    /// </summary>
    private async Task TimeIdsOnceOldRowsAreGoneAsync(CancellationToken cancellationToken)
    {
        if (!await HasRowsBeforeTimeIdsAsync(_writer!, cancellationToken).ConfigureAwait(false))
        {
            await ExecAsync(_writer!, "DROP INDEX IF EXISTS requests_ts;", cancellationToken).ConfigureAwait(false);
            _timeIds = true;
        }
    }

    public async ValueTask<RequestLogPage> QueryAsync(RequestLogQuery query, CancellationToken cancellationToken)
    {
        await using var connection = await OpenReaderAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = connection.CreateCommand();
        var where = new List<string>();
        if (query.KeyId is { } key)
        {
            where.Add("key_id = $key");
            cmd.Parameters.AddWithValue("$key", key);
        }

        if (query.Model is { } model)
        {
            where.Add("model = $model");
            cmd.Parameters.AddWithValue("$model", model);
        }

        if (query.User is { } user)
        {
            where.Add("user_id = $user");
            cmd.Parameters.AddWithValue("$user", user);
        }

        if (query.Status is { } status)
        {
            where.Add("status = $status");
            cmd.Parameters.AddWithValue("$status", status);
        }

        if (query.Since is { } since)
        {
            where.Add(Since(cmd, since));
        }

        if (query.Until is { } until)
        {
            // Both bounds, as Since's: exact by ts, found by id (a spilled row's id is up to SpillMargin past its time).
            where.Add(_timeIds ? "ts < $until AND id < $untilId" : "ts < $until");
            cmd.Parameters.AddWithValue("$until", until.ToUnixTimeMilliseconds());
            cmd.Parameters.AddWithValue("$untilId", TimeIdPast(until));
        }

        if (query.Before is { } before)
        {
            where.Add("id < $before");
            cmd.Parameters.AddWithValue("$before", before);
        }

        var limit = Math.Clamp(query.Limit, 1, 1000);
        cmd.CommandText = $"SELECT id, {ReadColumns} FROM requests {(where.Count > 0 ? "WHERE " + string.Join(" AND ", where) : string.Empty)} ORDER BY id DESC LIMIT {limit + 1}";
        var rows = new List<LoggedRequest>(limit);
        long? next = null;
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (rows.Count == limit)
            {
                next = rows[^1].Id;
                break;
            }

            rows.Add(new LoggedRequest(reader.GetInt64(0), Read(reader)));
        }

        return new RequestLogPage(rows, next);
    }

    public async ValueTask<IReadOnlyList<SpendRow>> SpendAsync(SpendGrouping groupBy, DateTimeOffset since, CancellationToken cancellationToken)
    {
        var group = groupBy switch
        {
            SpendGrouping.Key => "key_id",
            SpendGrouping.Model => "model",
            SpendGrouping.Deployment => "COALESCE(provider || '/' || provider_model, '(none)')",
            SpendGrouping.Day => "strftime('%Y-%m-%d', ts / 1000, 'unixepoch')",
            SpendGrouping.User => _hasUsers ? "COALESCE(user_id, '')" : "''",
            _ => throw new ArgumentOutOfRangeException(nameof(groupBy)),
        };
        await using var connection = await OpenReaderAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = connection.CreateCommand();
        cmd.CommandText = $"""
            SELECT {group} AS g, COUNT(*), SUM(status >= 400), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_nano), SUM(cost_saved_nano)
            FROM requests WHERE {Since(cmd, since)} GROUP BY g ORDER BY {(groupBy == SpendGrouping.Day ? "g" : "SUM(cost_nano) DESC, g")}
            """;
        var rows = new List<SpendRow>();
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            rows.Add(new SpendRow(reader.IsDBNull(0) ? string.Empty : reader.GetString(0), reader.GetInt64(1), reader.GetInt64(2), reader.GetInt64(3), reader.GetInt64(4), FromNano(reader.GetInt64(5)), FromNano(reader.GetInt64(6))));
        }

        return rows;
    }

    public async ValueTask<IReadOnlyList<DailySpend>> DailySpendAsync(DateTimeOffset since, CancellationToken cancellationToken)
    {
        await using var connection = await OpenReaderAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = connection.CreateCommand();
        var user = _hasUsers ? "user_id" : "NULL";
        cmd.CommandText = $"""
            SELECT key_id, strftime('%Y-%m-%d', ts / 1000, 'unixepoch') AS day, SUM(cost_nano), {user}
            FROM requests WHERE {Since(cmd, since)} AND cost_nano > 0 GROUP BY key_id, {user}, day
            """;
        var rows = new List<DailySpend>();
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            rows.Add(new DailySpend(reader.GetString(0), DateOnly.ParseExact(reader.GetString(1), "yyyy-MM-dd", CultureInfo.InvariantCulture), FromNano(reader.GetInt64(2)))
            {
                User = reader.IsDBNull(3) ? null : reader.GetString(3),
            });
        }

        return rows;
    }

    /// <summary>
    /// The condition "at or after <paramref name="since"/>", its parameters added to <paramref name="cmd"/>: on ts — exact
    /// for every row, a row an older version wrote into a log of time ids too — and, with time ids, on the id as well,
    /// which is what finds the rows (a range of the table's own B-tree, no index needed).
    /// </summary>
    private string Since(SqliteCommand cmd, DateTimeOffset since)
    {
        cmd.Parameters.AddWithValue("$since", since.ToUnixTimeMilliseconds());
        cmd.Parameters.AddWithValue("$sinceId", TimeId(since));
        return _timeIds ? "ts >= $since AND id >= $sinceId" : "ts >= $since";
    }

    private async Task<SqliteConnection> OpenReaderAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
        return connection;
    }

    private static RequestRecord Read(SqliteDataReader r) => new()
    {
        Timestamp = DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(1)),
        RequestId = r.GetString(2),
        KeyId = r.GetString(3),
        Model = r.GetString(4),
        Provider = r.IsDBNull(5) ? null : r.GetString(5),
        ProviderModel = r.IsDBNull(6) ? null : r.GetString(6),
        Status = r.GetInt32(7),
        ErrorCode = r.IsDBNull(8) ? null : r.GetString(8),
        ErrorType = r.IsDBNull(9) ? null : r.GetString(9),
        PromptTokens = r.GetInt64(10),
        CompletionTokens = r.GetInt64(11),
        Cost = FromNano(r.GetInt64(12)),
        CostSaved = FromNano(r.GetInt64(13)),
        Cached = r.GetInt64(14) != 0,
        Coalesced = r.GetInt64(15) != 0,
        Stream = r.GetInt64(16) != 0,
        LatencyMs = r.GetDouble(17),
        TimeToFirstTokenMs = r.IsDBNull(18) ? null : r.GetDouble(18),
        Priority = r.GetString(19),
        Attempts = !r.IsDBNull(20) ? r.GetString(20)
            : r.IsDBNull(5) || r.IsDBNull(23) ? "[]"
            : AttemptsJson.Format([new GatewayAttempt(r.GetString(5), r.IsDBNull(6) ? string.Empty : r.GetString(6), AttemptOutcome.Success, TimeSpan.FromMilliseconds(r.GetDouble(23)))]),
        Prompt = r.IsDBNull(21) ? null : r.GetString(21),
        Answer = r.IsDBNull(22) ? null : r.GetString(22),
        UsageEstimated = r.GetInt64(24) != 0,
        User = r.IsDBNull(25) ? null : r.GetString(25),
    };

    /// <summary>
    /// Binds a string as UTF-8 from a reused buffer (SQLite copies it): no allocation per value. A value equal to the one
    /// this parameter holds is not bound again (SQLite keeps bindings across <c>sqlite3_reset</c>).
    /// </summary>
    private void Text(sqlite3 db, sqlite3_stmt stmt, int index, string? value)
    {
        ref var bound = ref _bound[index];
        if (bound.Kind == BoundKind.Text && string.Equals(bound.Text, value, StringComparison.Ordinal))
        {
            return;
        }

        bound = default;
        if (value is null)
        {
            Check(db, raw.sqlite3_bind_null(stmt, index));
        }
        else
        {
            var max = Encoding.UTF8.GetMaxByteCount(value.Length);
            if (max > _utf8.Length)
            {
                _utf8 = new byte[Math.Max(max, _utf8.Length * 2)];
            }

            var length = Encoding.UTF8.GetBytes(value, _utf8);
            Check(db, raw.sqlite3_bind_text(stmt, index, _utf8.AsSpan(0, length)));
        }

        bound = new Bound(BoundKind.Text, 0, value);
    }

    private void Int(sqlite3 db, sqlite3_stmt stmt, int index, long value)
    {
        ref var bound = ref _bound[index];
        if (bound.Kind == BoundKind.Int && bound.Number == value)
        {
            return;
        }

        bound = default;
        Check(db, raw.sqlite3_bind_int64(stmt, index, value));
        bound = new Bound(BoundKind.Int, value, null);
    }

    private void Real(sqlite3 db, sqlite3_stmt stmt, int index, double? value)
    {
        ref var bound = ref _bound[index];
        var bits = value is { } v ? BitConverter.DoubleToInt64Bits(v) : 0;
        var kind = value is null ? BoundKind.Null : BoundKind.Real;
        if (bound.Kind == kind && bound.Number == bits)
        {
            return;
        }

        bound = default;
        Check(db, value is { } d ? raw.sqlite3_bind_double(stmt, index, d) : raw.sqlite3_bind_null(stmt, index));
        bound = new Bound(kind, bits, null);
    }

    /// <summary>What a parameter of the prepared insert holds now (Unknown: bind it).</summary>
    private readonly record struct Bound(BoundKind Kind, long Number, string? Text);

    private enum BoundKind : byte
    {
        Unknown,
        Text,
        Int,
        Real,
        Null,
    }

    /// <summary>The upstream time of a row whose only attempt succeeded at the deployment that answered, else null.</summary>
    private static double? SingleSuccess(RequestRecord r) =>
        r.AttemptsText is null && r.AttemptList is { Count: 1 } list && list[0] is { Outcome: AttemptOutcome.Success } a
            && a.Provider == r.Provider && a.ProviderModel == r.ProviderModel
            ? Math.Round(a.Latency.TotalMilliseconds, 3)
            : null;

    /// <summary>The request id formatted straight into the reused buffer (no string per row).</summary>
    private void RequestId(sqlite3 db, sqlite3_stmt stmt, int index, RequestRecord r)
    {
        if (r.RequestIdText is { } text)
        {
            Text(db, stmt, index, text);
            return;
        }

        _bound[index] = default;
        var length = Pipeline.RequestIds.FormatUtf8(r.RequestSequence, _utf8);
        Check(db, raw.sqlite3_bind_text(stmt, index, _utf8.AsSpan(0, length)));
    }

    /// <summary>The attempts as JSON, written straight into a reused buffer (no string per row).</summary>
    private void Attempts(sqlite3 db, sqlite3_stmt stmt, int index, RequestRecord r)
    {
        if (r.AttemptsText is { } text)
        {
            Text(db, stmt, index, text);
            return;
        }

        _json.ResetWrittenCount();
        if (_jsonWriter is null)
        {
            _jsonWriter = new Utf8JsonWriter(_json);
        }
        else
        {
            _jsonWriter.Reset(_json);
        }

        AttemptsJson.Write(_jsonWriter, r.AttemptList);
        _jsonWriter.Flush();
        _bound[index] = default;
        Check(db, raw.sqlite3_bind_text(stmt, index, _json.WrittenSpan));
    }

    private static void Check(sqlite3 db, int rc)
    {
        if (rc is not (raw.SQLITE_OK or raw.SQLITE_DONE or raw.SQLITE_ROW))
        {
            throw new SqliteException(raw.sqlite3_errmsg(db).utf8_to_string(), rc);
        }
    }

    private static async Task ExecAsync(SqliteConnection connection, string sql, CancellationToken cancellationToken)
    {
        await using var cmd = connection.CreateCommand();
        cmd.CommandText = sql;
        await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>What went wrong, in words a person acts on (SQLite's own message, and the error code's meaning).</summary>
    private static string Reason(Exception ex) => ex switch
    {
        SqliteException { SqliteErrorCode: 5 or 6 } s => $"the database is locked by another process ({s.Message})",
        SqliteException { SqliteErrorCode: 8 } s => $"the database is read-only ({s.Message})",
        SqliteException { SqliteErrorCode: 11 or 26 } s => $"the file is not a usable SQLite database: corrupt, or another kind of file ({s.Message})",
        SqliteException { SqliteErrorCode: 13 } s => $"the disk is full ({s.Message})",
        SqliteException { SqliteErrorCode: 14 } s => $"the file cannot be opened ({s.Message})",
        _ => ex.Message,
    };

    private static long ToNano(decimal usd) => Cost.NanoUsd.From(usd);

    private static decimal FromNano(long nano) => Cost.NanoUsd.ToUsd(nano);

    private void CloseWriter()
    {
        _jsonWriter?.Dispose();
        _jsonWriter = null;
        _insert?.Dispose();
        _insert = null;
        _writer?.Dispose();
        _writer = null;
    }

    public void Dispose() => CloseWriter();
}
