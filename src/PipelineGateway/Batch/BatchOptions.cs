namespace PipelineGateway.Batch;

/// <summary>One batch run: where the lines come from and where their results go.</summary>
public sealed class BatchOptions
{
    /// <summary>The input file: one OpenAI Batch API request per line.</summary>
    public required string InputPath { get; init; }

    /// <summary>The output file: one OpenAI Batch output line per successful request. Appended to on a rerun.</summary>
    public required string OutputPath { get; init; }

    /// <summary>Failed requests and bad input lines; defaults to <c>OUTPUT.errors.jsonl</c> beside the output.</summary>
    public string? ErrorsPath { get; init; }

    /// <summary>How many requests are in flight at once; the queue's backpressure and provider limits do the rest.</summary>
    public int Concurrency { get; init; } = 128;

    /// <summary>
    /// Removes earlier request failures (not bad lines) from the errors file and runs those requests again.
    /// </summary>
    public bool RetryFailed { get; init; }

    /// <summary>The one endpoint every line must call (a batch created over HTTP names it); null: any a batch can call.</summary>
    internal string? Endpoint { get; init; }

    /// <summary>
    /// Applied to each parsed line before it runs (the HTTP Batch API: the creating key's options stamped on its request,
    /// a model the key may not use turned into a bad line); null: lines run as parsed.
    /// </summary>
    internal Func<BatchLine, BatchLine>? Screen { get; init; }

    /// <summary>An endpoint lines may call besides the library's own (the server's <c>/v1/responses</c>); null: none.</summary>
    internal BatchEndpoint? Extra { get; init; }

    /// <summary>The clock for waits after a rate-limit refusal (tests pass a fake one).</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>The errors file this run writes.</summary>
    public string ResolvedErrorsPath => ErrorsPath ?? DefaultErrorsPath(OutputPath);

    public static string DefaultErrorsPath(string outputPath)
    {
        var dir = Path.GetDirectoryName(outputPath);
        var name = Path.GetFileNameWithoutExtension(outputPath) + ".errors.jsonl";
        return string.IsNullOrEmpty(dir) ? name : Path.Combine(dir, name);
    }
}

/// <summary>What a batch run did. A run that was stopped can be run again with the same options to continue.</summary>
public sealed record BatchSummary
{
    public required string OutputPath { get; init; }

    public required string ErrorsPath { get; init; }

    /// <summary>Non-blank input lines.</summary>
    public long Lines { get; init; }

    /// <summary>Lines already answered by an earlier run (found in the output or errors file).</summary>
    public long AlreadyDone { get; init; }

    public long Succeeded { get; init; }

    public long Failed { get; init; }

    public long BadLines { get; init; }

    public long CacheHits { get; init; }

    /// <summary>Lines with no result yet (the run was stopped); a rerun picks them up.</summary>
    public long Remaining { get; init; }

    public bool Stopped { get; init; }
}

/// <summary>A batch cannot start or go on: a missing input, an unwritable or foreign output file.</summary>
public sealed class BatchException(string message, Exception? inner = null) : Exception(message, inner);
