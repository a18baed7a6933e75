using System.Collections.Concurrent;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PipelineGateway.Batch;

namespace PipelineGateway.Server.Batches;

/// <summary>
/// Runs the batches created over HTTP (<c>POST /v1/batches</c>): each through <see cref="BatchRunner"/> — the same engine
/// as <c>pgw batch</c>, so every line is answered exactly once whatever stops the run — at the pipeline's batch priority
/// (interactive requests go first), as the key that created it (its rate limits, budgets, cache namespace and allowed
/// models), at most <see cref="ServerOptions.MaxRunningBatches"/> at once. A batch still running when the gateway stops
/// goes on where it stopped at the next start; one cancelled or past its 24-hour window stops admitting lines, lets those
/// in flight finish and keeps what it has. Its results become two files (<c>output_file_id</c>, <c>error_file_id</c>).
/// </summary>
internal sealed partial class BatchJobs(
    BatchStore store, IGatewayQueue queue, GatewayKeys keys, ServerOptions options, TimeProvider time, ILogger<BatchJobs> logger) : IHostedLifecycleService
{
    private enum StopReason
    {
        None,
        Cancelled,
        Expired,
        Shutdown,
    }

    /// <summary>A live batch: its record (changed under its lock), its stop signal and its run.</summary>
    private sealed class Run(StoredBatch stored) : IDisposable
    {
        public StoredBatch Stored { get; } = stored;

        public BatchJob Batch => Stored.Batch;

        public CancellationTokenSource Stopping { get; } = new();

        /// <summary>Cancels the requests in flight too: at shutdown (their lines run again at the next start).</summary>
        public CancellationTokenSource Aborting { get; } = new();

        public BatchProgress? Progress { get; set; }

        public Task Task { get; set; } = Task.CompletedTask;

        public ITimer? Expiry { get; set; }

        private int _reason;

        public StopReason Reason => (StopReason)Volatile.Read(ref _reason);

        /// <summary>Stops the run for <paramref name="reason"/>; the first reason stands.</summary>
        public bool Stop(StopReason reason)
        {
            if (Interlocked.CompareExchange(ref _reason, (int)reason, (int)StopReason.None) != (int)StopReason.None)
            {
                return false;
            }

            Stopping.Cancel();
            if (reason == StopReason.Shutdown)
            {
                Aborting.Cancel();
            }

            return true;
        }

        public void Dispose()
        {
            Expiry?.Dispose();
            Stopping.Dispose();
            Aborting.Dispose();
        }
    }

    /// <summary>Why <see cref="Create"/> refused a batch.</summary>
    public enum Refusal
    {
        None,
        NoRoomForResults,
        TooManyLive,
    }

    /// <summary>How often every key's expired files are swept from disk (each key's own are swept at its uploads too).</summary>
    internal static readonly TimeSpan SweepInterval = TimeSpan.FromHours(1);

    private readonly ConcurrentDictionary<string, Run> _runs = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _slots = new(options.MaxRunningBatches);
    private ITimer? _sweeper;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (!store.Configured)
        {
            return Task.CompletedTask;
        }

        // Expired files leave the disk hourly (the directory may be made later, at the first upload: the sweep waits for it).
        _sweeper = time.CreateTimer(static s => ((BatchJobs)s!).Sweep(), this, SweepInterval, SweepInterval);
        if (!store.Exists || !store.TryOpen())
        {
            return Task.CompletedTask;
        }

        foreach (var stored in store.AllBatches().Where(static b => b.Batch.Live).OrderBy(static b => b.CreatedTicks))
        {
            LogResumed(logger, stored.Batch.Id, stored.Batch.Status);
            Launch(stored);
        }

        Sweep(); // after the resumed batches: their inputs stay
        return Task.CompletedTask;
    }

    /// <summary>
    /// Deletes the expired files of every key (or of <paramref name="owner"/>) but the inputs of batches still running,
    /// which go once their batch ended. A failure is logged, never thrown: the sweep runs again.
    /// </summary>
    public void Sweep(string? owner = null)
    {
        try
        {
            var swept = store.SweepExpired(InUse, owner);
            if (swept > 0)
            {
                LogSwept(logger, swept);
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            LogSweepFailed(logger, ex.Message);
        }

        bool InUse(string dir, string fileId) =>
            _runs.Values.Any(r => r.Batch.InputFileId == fileId && store.OwnerDirectory(r.Stored.Owner) == dir);
    }

    /// <summary>How many batches of the owner have not ended (each may still make two result files).</summary>
    public int LiveCount(string owner) => _runs.Values.Count(r => r.Stored.Owner == owner);

    /// <summary>
    /// As the host begins to stop — before the pipeline's drain, which would otherwise give the batches' requests in flight
    /// its whole grace — the runs stop and their requests in flight are cancelled: their lines run again at the next start.
    /// </summary>
    public Task StoppingAsync(CancellationToken cancellationToken)
    {
        foreach (var run in _runs.Values)
        {
            run.Stop(StopReason.Shutdown);
        }

        return Task.CompletedTask;
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        _sweeper?.Dispose();
        await StoppingAsync(cancellationToken).ConfigureAwait(false);

        try
        {
            await Task.WhenAll(_runs.Values.Select(static r => r.Task)).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            store.Dispose(); // the directory's lock let go: the next process (a restart) goes on with its batches
        }
    }

    /// <summary>
    /// Keeps a new batch and starts it (it waits for a slot as <c>validating</c>) — unless its owner's files leave no room
    /// for its two result files among <paramref name="maxKept"/> (two are held for each of its batches not ended), or it
    /// already has <paramref name="maxLive"/> batches not ended (each live batch holds a task and a timer in memory).
    /// Checked together, so two creates at once cannot pass either bound. The owner keeps its newest
    /// <paramref name="maxKept"/> batches: older ended ones are forgotten.
    /// </summary>
    public Refusal Create(StoredBatch stored, int maxLive, int maxKept, out BatchJob? created)
    {
        created = null;
        lock (_runs)
        {
            var live = LiveCount(stored.Owner);
            if (store.Files(stored.Owner, evenExpired: true).Count + (2 * (live + 1)) > maxKept)
            {
                return Refusal.NoRoomForResults;
            }

            if (live >= maxLive)
            {
                return Refusal.TooManyLive;
            }

            store.SaveBatch(stored);
            Launch(stored);
        }

        // A key keeps its newest batches: past the bound the oldest ended ones are forgotten (their files stay).
        var ended = store.Batches(stored.Owner).Where(static b => !b.Batch.Live).OrderBy(static b => b.CreatedTicks).ToList();
        var total = ended.Count + _runs.Values.Count(r => r.Stored.Owner == stored.Owner);
        for (var i = 0; i < ended.Count && total > maxKept; i++, total--)
        {
            store.ForgetBatch(stored.Owner, ended[i].Batch.Id);
        }

        created = Get(stored.Owner, stored.Batch.Id) ?? stored.Batch; // a copy: its run changes the record meanwhile
        return Refusal.None;
    }

    /// <summary>The batch as it stands (a live one with its counts so far), or null when the owner has none by that id.</summary>
    public BatchJob? Get(string owner, string id)
    {
        if (_runs.TryGetValue(id, out var run) && run.Stored.Owner == owner)
        {
            lock (run)
            {
                Count(run);
                return Copy(run.Batch);
            }
        }

        return store.GetBatch(owner, id)?.Batch;
    }

    /// <summary>The owner's batches, newest first, live ones as they stand.</summary>
    public List<BatchJob> List(string owner) =>
        [.. store.Batches(owner).OrderByDescending(static b => b.CreatedTicks).Select(b => Get(owner, b.Batch.Id) ?? b.Batch)];

    /// <summary>Whether a live batch of the owner reads this file (it may not be deleted meanwhile).</summary>
    public bool Reads(string owner, string fileId) => _runs.Values.Any(r => r.Stored.Owner == owner && r.Batch.InputFileId == fileId);

    /// <summary>Cancels a live batch: <c>cancelling</c> until the requests in flight finish, then <c>cancelled</c>. Null: no such batch; false: it had ended.</summary>
    public bool? Cancel(string owner, string id, out BatchJob? batch)
    {
        if (_runs.TryGetValue(id, out var run) && run.Stored.Owner == owner)
        {
            lock (run)
            {
                if (run.Batch.Status is "validating" or "in_progress")
                {
                    run.Batch.Status = "cancelling";
                    run.Batch.CancellingAt = Now();
                    store.SaveBatch(run.Stored);
                }
            }

            run.Stop(StopReason.Cancelled);
            batch = Get(owner, id);
            return batch is { Status: "cancelling" or "cancelled" };
        }

        batch = store.GetBatch(owner, id)?.Batch;
        return batch is null ? null : batch.Status is "cancelling" or "cancelled";
    }

    private void Launch(StoredBatch stored)
    {
        var run = new Run(stored);
        _runs[stored.Batch.Id] = run;
        var left = DateTimeOffset.FromUnixTimeSeconds(stored.Batch.ExpiresAt) - time.GetUtcNow();
        if (stored.Batch.Status == "cancelling")
        {
            run.Stop(StopReason.Cancelled);
        }
        else if (left <= TimeSpan.Zero)
        {
            run.Stop(StopReason.Expired);
        }
        else
        {
            run.Expiry = time.CreateTimer(static s => ((Run)s!).Stop(StopReason.Expired), run, left, Timeout.InfiniteTimeSpan);
        }

        run.Task = Task.Run(() => RunAsync(run));
    }

    private async Task RunAsync(Run run)
    {
        var batch = run.Batch;
        var slot = false;
        try
        {
            if (run.Stored.Ending is { } ending && batch.Status == "finalizing")
            {
                // Stopped while its results became files: finished as it was ending, its lines not run again.
                Finish(run, ending);
                return;
            }

            if (run.Reason == StopReason.None)
            {
                try
                {
                    await _slots.WaitAsync(run.Stopping.Token).ConfigureAwait(false);
                    slot = true;
                }
                catch (OperationCanceledException)
                {
                    // Stopped while it waited for a slot.
                }
            }

            while (slot && run.Reason == StopReason.None)
            {
                if (!Start(run, out var batchOptions))
                {
                    return;
                }

                var progress = new BatchProgress();
                run.Progress = progress;
                var summary = await BatchRunner.RunAsync(queue, batchOptions, progress, run.Stopping.Token, run.Aborting.Token).ConfigureAwait(false);
                if (run.Reason != StopReason.None || summary.Remaining == 0)
                {
                    break;
                }

                // Lines left without a stop: the pipeline turned them away (not accepting yet, or stopping). Again shortly.
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), time, run.Stopping.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }

            if (run.Reason == StopReason.Shutdown)
            {
                lock (run)
                {
                    Count(run);
                    store.SaveBatch(run.Stored); // still live: the next start goes on with it
                }

                return;
            }

            Finish(run, run.Reason switch { StopReason.Cancelled => "cancelled", StopReason.Expired => "expired", _ => "completed" });
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // A results file it cannot read or write (a full disk, a file changed under it): said in the log, with its
            // path; the caller is told without the gateway's paths.
            LogRunFailed(logger, ex, batch.Id);
            Fail(run, "batch_failed", "The batch could not go on: the gateway could not read or write its results (its log says why).");
        }
        finally
        {
            if (slot)
            {
                _slots.Release();
            }

            _runs.TryRemove(new KeyValuePair<string, Run>(batch.Id, run));
            run.Dispose();
            if (run.Reason != StopReason.Shutdown)
            {
                Sweep(run.Stored.Owner); // its input, should it have expired meanwhile
            }
        }
    }

    /// <summary>Marks the batch in progress and makes its run's options; false when it cannot run (it is failed).</summary>
    private bool Start(Run run, out BatchOptions batchOptions)
    {
        var stored = run.Stored;
        batchOptions = null!;
        var key = keys.Find(stored.Owner); // the keys as they now stand (a reload may have removed it)
        if (keys.Required && key is null)
        {
            Fail(run, "key_removed", "The gateway key that created this batch is no longer configured: its lines cannot run as that key.");
            return false;
        }

        if (store.GetFile(stored.Owner, stored.Batch.InputFileId, evenExpired: true) is null)
        {
            Fail(run, "input_file_missing", $"The input file '{stored.Batch.InputFileId}' was deleted.");
            return false;
        }

        lock (run)
        {
            if (run.Reason == StopReason.None)
            {
                run.Batch.Status = "in_progress"; // not over a cancel that came meanwhile
                run.Batch.InProgressAt ??= Now();
            }

            store.SaveBatch(stored);
        }

        batchOptions = new BatchOptions
        {
            InputPath = store.DataPath(stored.Owner, stored.Batch.InputFileId),
            OutputPath = store.WorkingPath(stored.Owner, stored.Batch.Id, "output"),
            ErrorsPath = store.WorkingPath(stored.Owner, stored.Batch.Id, "errors"),
            Concurrency = options.BatchConcurrency,
            Time = time,
            Endpoint = BatchLine.Canonical(stored.Batch.Endpoint), // Azure's /chat/completions is /v1/chat/completions
            Extra = stored.Batch.Endpoint == MessageBatchesApi.Url ? MessageBatchesApi.Endpoint : Responses.ResponsesBatch.Endpoint(time),
            Screen = line =>
            {
                if (!keys.MayUse(key, line.Request!.Model))
                {
                    return line with { Request = null, ErrorCode = "model_not_allowed", ErrorMessage = $"line {line.Number}: this key may not use the model '{Providers.ProviderException.Quoted(line.Request.Model)}'." };
                }

                // As the key's own HTTP requests run: its rate limits and budgets, its cache namespace.
                line.Request.Gateway = new GatewayRequestOptions { RateLimitKey = key?.Id, CacheNamespace = key?.Id };
                return line;
            },
        };
        return true;
    }

    /// <summary>Ends a batch that ran: its results kept as files, its counts final, its status and time.</summary>
    private void Finish(Run run, string status)
    {
        var stored = run.Stored;
        lock (run)
        {
            run.Batch.Status = "finalizing";
            run.Batch.FinalizingAt ??= Now();
            stored.Ending = status;
            Count(run);
            store.SaveBatch(stored);
        }

        var output = Keep(stored, "output", "output");
        var errors = Keep(stored, "errors", "error");
        lock (run)
        {
            run.Batch.OutputFileId = output;
            run.Batch.ErrorFileId = errors;
            run.Batch.Status = status;
            var now = Now();
            _ = status switch
            {
                "cancelled" => run.Batch.CancelledAt = now,
                "expired" => run.Batch.ExpiredAt = now,
                _ => run.Batch.CompletedAt = now,
            };
            store.SaveBatch(stored);
        }

        LogEnded(logger, stored.Batch.Id, status, stored.Batch.RequestCounts.Completed, stored.Batch.RequestCounts.Failed);
    }

    /// <summary>
    /// A working results file kept as a file of the owner (null when it holds nothing). Kept already — a restart between
    /// the move and the batch's record — it is that file.
    /// </summary>
    private string? Keep(StoredBatch stored, string part, string name)
    {
        var path = store.WorkingPath(stored.Owner, stored.Batch.Id, part);
        var filename = $"{stored.Batch.Id}_{name}.jsonl";
        var info = new FileInfo(path);
        if (!info.Exists || info.Length == 0)
        {
            if (info.Exists)
            {
                info.Delete();
            }

            return store.Files(stored.Owner, evenExpired: true).Find(f => f.Purpose == "batch_output" && f.Filename == filename)?.Id;
        }

        var created = Now();
        var file = new BatchFile
        {
            Id = BatchStore.NewFileId(),
            Bytes = info.Length,
            CreatedAt = created,
            Filename = filename,
            Purpose = "batch_output",
            ExpiresAt = BatchStore.Expiry(created, stored.OutputLifetimeSeconds, options.BatchFileLifetime),
        };
        store.AddFile(stored.Owner, file, path);
        return file.Id;
    }

    private void Fail(Run run, string code, string message)
    {
        lock (run)
        {
            run.Batch.Status = "failed";
            run.Batch.FailedAt = Now();
            run.Batch.Errors = new BatchErrors { Data = [new BatchError { Code = code, Message = message }] };
            Count(run);
            store.SaveBatch(run.Stored);
        }

        LogFailed(logger, run.Batch.Id, code, message);
    }

    /// <summary>
    /// The counts so far, from the run's progress (its earlier runs' results included). The total is never lowered to
    /// the lines read so far: a message batch's is known from its create (a batch just made read as 0 requests, all of
    /// them "processing" a moment later).
    /// </summary>
    private static void Count(Run run)
    {
        if (run.Progress is { } p)
        {
            run.Batch.RequestCounts = new BatchCounts
            {
                Total = Math.Max(p.Lines, run.Batch.RequestCounts.Total),
                Completed = p.EarlierSucceeded + p.Succeeded,
                Failed = p.EarlierFailed + p.Failed + p.BadLines,
            };
        }
    }

    private static BatchJob Copy(BatchJob b) =>
        System.Text.Json.JsonSerializer.Deserialize(System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(b, BatchJsonContext.Default.BatchJob), BatchJsonContext.Default.BatchJob)!;

    private long Now() => time.GetUtcNow().ToUnixTimeSeconds();

    [LoggerMessage(EventId = 702, Level = LogLevel.Information, Message = "Batch {BatchId} goes on where it stopped ({Status}).")]
    private static partial void LogResumed(ILogger logger, string batchId, string status);

    [LoggerMessage(EventId = 703, Level = LogLevel.Information, Message = "Batch {BatchId} {Status}: {Completed} requests answered, {Failed} failed.")]
    private static partial void LogEnded(ILogger logger, string batchId, string status, long completed, long failed);

    [LoggerMessage(EventId = 705, Level = LogLevel.Error, Message = "Batch {BatchId} could not go on")]
    private static partial void LogRunFailed(ILogger logger, Exception exception, string batchId);

    [LoggerMessage(EventId = 706, Level = LogLevel.Information, Message = "{Count} expired Batch API files deleted.")]
    private static partial void LogSwept(ILogger logger, int count);

    [LoggerMessage(EventId = 707, Level = LogLevel.Warning, Message = "Expired Batch API files could not all be deleted (the next sweep tries again): {Reason}")]
    private static partial void LogSweepFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 704, Level = LogLevel.Warning, Message = "Batch {BatchId} failed ({Code}): {Message}")]
    private static partial void LogFailed(ILogger logger, string batchId, string code, string message);
}
