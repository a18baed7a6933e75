using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.RequestLog;

/// <summary>What the request log does when its queue to the writer is full.</summary>
public enum RequestLogFullMode
{
    /// <summary>The row is dropped and counted (<c>request_log.dropped</c> in the metrics): requests never wait on the log.</summary>
    Drop,

    /// <summary>
    /// The thread that ends the request waits for room (a provider worker, usually): the pipeline slows to the writer's
    /// pace and callers wait, but no row is dropped.
    /// </summary>
    Wait,
}

/// <summary>
/// The per-request log (section <c>Gateway:RequestLog</c>): one row per request, written by a background writer to a
/// store (SQLite by default in <c>pgw serve</c> and <c>pgw batch</c>; see docs/observability.md).
/// </summary>
public sealed class RequestLogOptions
{
    /// <summary>False: no log is written (and budgets are not restored from it at start).</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>The database file (SQLite); relative paths are resolved beside the configuration file.</summary>
    public string Path { get; set; } = "pgw-data/gateway.db";

    /// <summary>How long a row may wait before the writer commits it, at most: what a SIGKILL can lose.</summary>
    public TimeSpan FlushInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Rows committed in one transaction, at most; a full batch is written at once.</summary>
    /// <remarks>
    /// 256, not 2,000: under load a batch fills in tens of milliseconds either way, and the smaller one measured 15–27
    /// MiB less RSS at 128 connections (peak and steady) for CPU per request within the run's noise (−1% to +4%),
    /// paired runs in docs/benchmarks.md ("Smaller request log batches, 2026-12-03").
    /// </remarks>
    [Range(1, 100_000)]
    public int MaxBatch { get; set; } = 256;

    /// <summary>Rows queued for the writer, at most (then <see cref="WhenFull"/>).</summary>
    [Range(1, 10_000_000)]
    public int Capacity { get; set; } = 50_000;

    public RequestLogFullMode WhenFull { get; set; } = RequestLogFullMode.Drop;

    /// <summary>Rows older than this many days are deleted (in small chunks, between writes). 0 keeps everything.</summary>
    [Range(0, 36_500)]
    public int RetentionDays { get; set; } = 30;

    /// <summary>How long a write waits for a database locked by another process before it counts as failed (then retried).</summary>
    public TimeSpan LockTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Also log the prompt and the answer (off by default): secrets redacted, each capped at <see cref="MaxBodyChars"/>.</summary>
    public bool LogBodies { get; set; }

    [Range(16, 1_000_000)]
    public int MaxBodyChars { get; set; } = 4_096;
}
