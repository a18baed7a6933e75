using System.Text;
using System.Text.Json;
using System.Threading.Channels;

namespace PipelineGateway.Batch;

/// <summary>
/// Runs a JSONL batch through <see cref="IGatewayQueue"/>: streams the input, keeps a bounded number of
/// requests in flight (the queue's backpressure and the providers' RPM/TPM set the pace), and appends each
/// result as it completes. The result files are the checkpoint, so a run killed at any moment and started
/// again with the same options continues where it stopped, with every custom_id answered exactly once.
/// Results are written in completion order, not input order.
/// </summary>
public static class BatchRunner
{
    /// <param name="queue">The gateway to submit to.</param>
    /// <param name="options">Files and concurrency.</param>
    /// <param name="progress">Live counters, for a progress display; optional.</param>
    /// <param name="stop">Stops admitting new lines; requests in flight finish and are written.</param>
    /// <param name="abort">Cancels requests in flight too (their lines are left for the next run).</param>
    public static async Task<BatchSummary> RunAsync(
        IGatewayQueue queue,
        BatchOptions options,
        BatchProgress? progress = null,
        CancellationToken stop = default,
        CancellationToken abort = default)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Concurrency < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Concurrency, "Concurrency must be at least 1.");
        }

        progress ??= new BatchProgress();
        var time = options.Time;
        var errorsPath = options.ResolvedErrorsPath;
        CheckPaths(options.InputPath, options.OutputPath, errorsPath);

        // What earlier runs finished: custom_ids answered (output or failed request) and bad lines reported.
        var done = new HashSet<UInt128>();
        var reportedBadLines = new HashSet<long>();
        await using var output = BatchResultFile.Open(options.OutputPath, truncate: false, (record, n) =>
        {
            done.Add(BatchLine.Fingerprint(RequireCustomId(record, n, options.OutputPath)));
            progress.AddEarlier(failed: false);
        });
        await using var errors = BatchResultFile.Open(errorsPath, truncate: options.RetryFailed, (record, n) =>
        {
            if (record.TryGetProperty("response", out var response) && response.ValueKind == JsonValueKind.Object)
            {
                done.Add(BatchLine.Fingerprint(RequireCustomId(record, n, errorsPath)));
                progress.AddEarlier(failed: true);
            }
            else
            {
                reportedBadLines.Add(record.GetProperty("error").GetProperty("line").GetInt64());
            }
        });

        progress.SetLines(CountLines(options.InputPath));

        var work = Channel.CreateBounded<BatchLine>(new BoundedChannelOptions(options.Concurrency) { SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
        var results = Channel.CreateBounded<(bool Error, byte[] Line)>(new BoundedChannelOptions(Math.Max(64, options.Concurrency)) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
        var writer = WriteResultsAsync(results.Reader, output, errors);

        var reader = ReadInputAsync(options, work.Writer, results.Writer, done, reportedBadLines, progress, stop);
        var workers = new Task[options.Concurrency];
        for (var i = 0; i < workers.Length; i++)
        {
            workers[i] = RunWorkerAsync(queue, work.Reader, results.Writer, progress, time, stop, abort);
        }

        try
        {
            await reader.ConfigureAwait(false);
            await Task.WhenAll(workers).ConfigureAwait(false);
        }
        finally
        {
            work.Writer.TryComplete();
            results.Writer.TryComplete();
            await writer.ConfigureAwait(false);
        }

        return progress.ToSummary(options.OutputPath, errorsPath, Math.Max(0, progress.Lines - progress.Done));
    }

    internal static void CheckPaths(string input, string output, string errors)
    {
        if (!File.Exists(input))
        {
            throw new BatchException($"The input file '{input}' does not exist.");
        }

        var full = (Input: Path.GetFullPath(input), Output: Path.GetFullPath(output), Errors: Path.GetFullPath(errors));
        if (full.Output == full.Input || full.Errors == full.Input)
        {
            throw new BatchException("The output and errors files must not be the input file.");
        }

        if (full.Output == full.Errors)
        {
            throw new BatchException("The output and errors files must be two different files.");
        }
    }

    private static string RequireCustomId(JsonElement record, long line, string path) =>
        record.TryGetProperty("custom_id", out var id) && id.ValueKind == JsonValueKind.String && id.GetString() is { Length: > 0 } s
            ? s
            : throw new BatchException($"'{path}' line {line} has no custom_id; it was not written by 'pgw batch'. Choose another output file, or remove that line.");

    /// <summary>Counts non-blank lines with a raw byte scan (about a second a gigabyte), for the progress total.</summary>
    private static long CountLines(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var buffer = new byte[1 << 16];
        long lines = 0;
        var content = false;
        int read;
        while ((read = stream.Read(buffer)) > 0)
        {
            foreach (var b in buffer.AsSpan(0, read))
            {
                if (b == (byte)'\n')
                {
                    lines += content ? 1 : 0;
                    content = false;
                }
                else if (b is not ((byte)' ' or (byte)'\r' or (byte)'\t' or 0))
                {
                    // A NUL is no content: UTF-8 JSON has none, and a UTF-16 file's are the high bytes of its line ends.
                    content = true;
                }
            }
        }

        return lines + (content ? 1 : 0);
    }

    private static async Task ReadInputAsync(
        BatchOptions options,
        ChannelWriter<BatchLine> work,
        ChannelWriter<(bool Error, byte[] Line)> results,
        HashSet<UInt128> done,
        HashSet<long> reportedBadLines,
        BatchProgress progress,
        CancellationToken stop)
    {
        var seen = new HashSet<UInt128>();
        var records = new BatchRecords();
        try
        {
            await using var file = new FileStream(options.InputPath, new FileStreamOptions { Access = FileAccess.Read, Share = FileShare.Read, BufferSize = 0, Options = FileOptions.SequentialScan });
            using var reader = new JsonlReader(file);
            long number = 0;
            while (!stop.IsCancellationRequested && await reader.ReadLineAsync(stop).ConfigureAwait(false) is { } text)
            {
                number++;
                if (text.Text is { } t && string.IsNullOrWhiteSpace(t))
                {
                    continue;
                }

                var line = BatchLine.Parse(text, number, options.Endpoint, options.Extra);
                if (!line.IsBad && !seen.Add(BatchLine.Fingerprint(line.CustomId!)))
                {
                    line = line with { Request = null, ErrorCode = "duplicate_custom_id", ErrorMessage = $"line {number}: custom_id '{line.CustomId}' appears on an earlier line; each custom_id must be unique." };
                }

                if (!line.IsBad && options.Screen is { } screen)
                {
                    line = screen(line);
                }

                if (line.IsBad)
                {
                    progress.AddBadLine();
                    if (!reportedBadLines.Contains(number))
                    {
                        await results.WriteAsync((true, records.BadLine(line)), CancellationToken.None).ConfigureAwait(false);
                    }
                }
                else if (done.Contains(BatchLine.Fingerprint(line.CustomId!)))
                {
                    progress.AddAlreadyDone();
                }
                else
                {
                    await work.WriteAsync(line, stop).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Stopped: what was read but not handed out is simply not done, and the next run reads it again.
        }
        finally
        {
            work.TryComplete();
        }
    }

    private static async Task RunWorkerAsync(
        IGatewayQueue queue,
        ChannelReader<BatchLine> work,
        ChannelWriter<(bool Error, byte[] Line)> results,
        BatchProgress progress,
        TimeProvider time,
        CancellationToken stop,
        CancellationToken abort)
    {
        var records = new BatchRecords();
        while (await work.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
        {
            while (!stop.IsCancellationRequested && work.TryRead(out var line))
            {
                var result = await RunLineAsync(queue, line, records, progress, time, stop, abort).ConfigureAwait(false);
                if (result is not null)
                {
                    await results.WriteAsync(result.Value, CancellationToken.None).ConfigureAwait(false);
                }
            }

            if (stop.IsCancellationRequested)
            {
                return;
            }
        }
    }

    internal static async Task<(bool, byte[])?> RunLineAsync(
        IGatewayQueue queue, BatchLine line, BatchRecords records, BatchProgress progress, TimeProvider time, CancellationToken stop, CancellationToken abort)
    {
        // Batch work yields to interactive requests under contention (and keeps its share of the capacity).
        var options = line.Request!.Gateway ??= new GatewayRequestOptions();
        options.Priority = RequestPriority.Batch;
        while (true)
        {
            // Each submission's id drawn before it goes: a failure's record names it as a success's does (the request
            // log's request_id), so an error line can be found in the log.
            options.RequestSequence = Pipeline.RequestIds.Next();
            try
            {
                var response = await queue.SubmitAsync(line.Request!, SubmitMode.Wait, abort).ConfigureAwait(false);
                progress.AddSucceeded(response.Gateway?.Cached == true);
                return (false, records.Success(line, response));
            }
            catch (Exception ex) when (ex is RateLimitedException or ProviderOverloadedException)
            {
                // A limit refused after its longest wait, or every provider's queue is longer than the request may wait:
                // the batch waits its turn, it does not fail.
                var retryAfter = ex is RateLimitedException r ? r.RetryAfter : ((ProviderOverloadedException)ex).RetryAfter;
                try
                {
                    await Task.Delay(retryAfter > TimeSpan.Zero ? retryAfter : TimeSpan.FromMilliseconds(100), time, stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return null;
                }
            }
            catch (Exception ex) when (ex is GatewayUnavailableException or OperationCanceledException)
            {
                // Shutting down or aborted: no result, so the next run does this line again.
                return null;
            }
            catch (GatewayException ex)
            {
                progress.AddFailed();
                return (true, records.Failure(line, ex));
            }
        }
    }

    private static async Task WriteResultsAsync(ChannelReader<(bool Error, byte[] Line)> results, BatchResultFile output, BatchResultFile errors)
    {
        while (await results.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
        {
            bool wroteOutput = false, wroteErrors = false;
            while (results.TryRead(out var result))
            {
                if (result.Error)
                {
                    await errors.WriteAsync(result.Line, CancellationToken.None).ConfigureAwait(false);
                    wroteErrors = true;
                }
                else
                {
                    await output.WriteAsync(result.Line, CancellationToken.None).ConfigureAwait(false);
                    wroteOutput = true;
                }
            }

            // Flushed whenever the channel runs dry: a kill loses at most lines not yet written, never a part of one
            // that a rerun would not notice (a torn last line is cut off when the file is opened again).
            if (wroteOutput)
            {
                await output.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            }

            if (wroteErrors)
            {
                await errors.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
    }
}
