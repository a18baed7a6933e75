namespace PipelineGateway.Batch;

/// <summary>Live counters of a batch run, safe to read from another thread (a progress bar).</summary>
public sealed class BatchProgress
{
    private long _lines;
    private long _alreadyDone;
    private long _succeeded;
    private long _failed;
    private long _badLines;
    private long _cacheHits;

    /// <summary>Non-blank input lines; known once the input has been counted.</summary>
    public long Lines => Volatile.Read(ref _lines);

    public long AlreadyDone => Volatile.Read(ref _alreadyDone);

    public long Succeeded => Volatile.Read(ref _succeeded);

    public long Failed => Volatile.Read(ref _failed);

    public long BadLines => Volatile.Read(ref _badLines);

    public long CacheHits => Volatile.Read(ref _cacheHits);

    /// <summary>Requests answered by earlier runs (the output file's lines when this run opened it).</summary>
    internal long EarlierSucceeded => Volatile.Read(ref _earlierSucceeded);

    /// <summary>Requests that failed in earlier runs (the errors file's failed requests, not its bad lines).</summary>
    internal long EarlierFailed => Volatile.Read(ref _earlierFailed);

    private long _earlierSucceeded;
    private long _earlierFailed;

    internal void AddEarlier(bool failed) => Interlocked.Increment(ref failed ? ref _earlierFailed : ref _earlierSucceeded);

    /// <summary>Lines that have a result: already done, answered, failed or reported as bad.</summary>
    public long Done => AlreadyDone + Succeeded + Failed + BadLines;

    /// <summary>The run's summary: what these counters say, with <paramref name="remaining"/> lines still to do.</summary>
    internal BatchSummary ToSummary(string outputPath, string errorsPath, long remaining) => new()
    {
        OutputPath = outputPath,
        ErrorsPath = errorsPath,
        Lines = Lines,
        AlreadyDone = AlreadyDone,
        Succeeded = Succeeded,
        Failed = Failed,
        BadLines = BadLines,
        CacheHits = CacheHits,
        Remaining = remaining,
        Stopped = remaining > 0,
    };

    internal void SetLines(long lines) => Volatile.Write(ref _lines, lines);

    internal void AddAlreadyDone() => Interlocked.Increment(ref _alreadyDone);

    /// <summary>Lines answered elsewhere (an earlier run, or other workers of a shared batch).</summary>
    internal void SetAlreadyDone(long count) => Volatile.Write(ref _alreadyDone, count);

    internal void AddSucceeded(bool cached)
    {
        Interlocked.Increment(ref _succeeded);
        if (cached)
        {
            Interlocked.Increment(ref _cacheHits);
        }
    }

    internal void AddFailed() => Interlocked.Increment(ref _failed);

    internal void AddBadLine() => Interlocked.Increment(ref _badLines);
}
