using System.Globalization;
using System.IO.Hashing;
using System.Text;
using System.Threading.Channels;
using PipelineGateway.Batch;
using StackExchange.Redis;

namespace PipelineGateway.Redis;

/// <summary>Options of a batch shared by several machines through Redis.</summary>
public sealed class RedisBatchOptions
{
    /// <summary>StackExchange.Redis configuration string.</summary>
    public required string Configuration { get; init; }

    /// <summary>Names the shared batch; processes with the same id work it together. Default: a hash of the input's content.</summary>
    public string? BatchId { get; init; }

    /// <summary>A line another worker took and has not finished for this long is taken over (its worker is presumed dead).</summary>
    public TimeSpan ClaimAfter { get; init; } = TimeSpan.FromMinutes(2);

    public string KeyPrefix { get; init; } = "pgw";

    /// <summary>This worker's name in the consumer group; default host name and process id.</summary>
    public string? ConsumerName { get; init; }
}

/// <summary>
/// <c>pgw batch … --redis</c>: one batch worked by several processes on several machines. The input is loaded
/// once into a Redis Stream (whoever holds the loader lease loads; a loader that dies is taken over from the last
/// line it loaded, so no line is loaded twice); every process reads it through one consumer group, so each line
/// goes to one worker; a worker that dies leaves its lines pending, and the others take them over after
/// <see cref="RedisBatchOptions.ClaimAfter"/>. A result is recorded in Redis with HSETNX keyed by input line, so
/// even a line done twice (a slow worker presumed dead) has exactly one result. When every line has its result,
/// each process writes the complete output and errors files from Redis — every machine ends with the whole batch.
/// Running the same command again (on any machine) continues the batch.
/// </summary>
public static class RedisBatchRunner
{
    private const string Group = "workers";
    private const int LoadChunk = 256;

    // KEYS: position, stream. ARGV: expected position, new position, then (line number, payload, mark)… — the mark: 0, 1
    // for a duplicate custom_id, or 2 + the offset where a line that is not UTF-8 goes wrong (its payload is then empty).
    // Appends only if nobody else loaded these lines: the position check makes loading exactly-once.
    private const string LoadScript = """
        local pos = tonumber(redis.call('GET', KEYS[1]) or '0')
        if pos ~= tonumber(ARGV[1]) then return pos end
        for i = 3, #ARGV, 3 do redis.call('XADD', KEYS[2], '*', 'n', ARGV[i], 'd', ARGV[i + 1], 'x', ARGV[i + 2]) end
        redis.call('SET', KEYS[1], ARGV[2])
        return -1
        """;

    public static async Task<BatchSummary> RunAsync(IGatewayQueue queue, BatchOptions options, RedisBatchOptions redis, BatchProgress? progress = null, CancellationToken stop = default)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(redis);
        progress ??= new BatchProgress();
        var errorsPath = options.ResolvedErrorsPath;
        BatchRunner.CheckPaths(options.InputPath, options.OutputPath, errorsPath);

        var config = ConfigurationOptions.Parse(redis.Configuration);
        config.AbortOnConnectFail = false;
        using var connection = await ConnectionMultiplexer.ConnectAsync(config).ConfigureAwait(false);
        if (!connection.IsConnected)
        {
            throw new BatchException("Cannot reach Redis for the shared batch (check --redis).");
        }

        var db = connection.GetDatabase();
        var id = redis.BatchId ?? ContentId(options.InputPath);
        var keys = new Keys(redis.KeyPrefix, id);
        // Stable per machine and output file: a rerun of a stopped process picks up its own pending lines at once
        // (instead of waiting ClaimAfter for another worker to claim them).
        var me = redis.ConsumerName ?? $"{Environment.MachineName}-{XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(Path.GetFullPath(options.OutputPath))):x8}";
        await EnsureGroupAsync(db, keys).ConfigureAwait(false);

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(stop);
        var loader = LoadAsync(db, keys, options, me, progress, cts.Token);

        // Lines flow to a fixed set of workers through a small bounded queue: a slow line holds one worker, not a
        // whole round of them. Lines fetched but not started when a stop comes stay pending for a rerun.
        var work = Channel.CreateBounded<StreamEntry>(new BoundedChannelOptions(options.Concurrency) { SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
        var workers = Enumerable.Range(0, options.Concurrency).Select(_ => Task.Run(async () =>
        {
            var records = new BatchRecords();
            await foreach (var entry in work.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                if (!stop.IsCancellationRequested)
                {
                    await RunEntryAsync(queue, db, keys, entry, records, progress, options, stop).ConfigureAwait(false);
                }
            }
        })).ToArray();

        long? total = null;
        var position = "0-0"; // first this consumer's own pending lines (from a run that stopped), then new ones
        try
        {
            while (!stop.IsCancellationRequested)
            {
                total ??= (long?)await db.StringGetAsync(keys.Total).ConfigureAwait(false);
                var done = await db.HashLengthAsync(keys.Results).ConfigureAwait(false);
                progress.SetAlreadyDone(Math.Max(0, done - progress.Succeeded - progress.Failed - progress.BadLines));
                if (total is { } t)
                {
                    progress.SetLines(t);
                    if (done >= t)
                    {
                        break;
                    }
                }

                var entries = await db.StreamReadGroupAsync(keys.Stream, Group, me, position, options.Concurrency).ConfigureAwait(false);
                if (position != ">" && entries.Length == 0)
                {
                    position = ">";
                    continue;
                }

                if (entries.Length == 0)
                {
                    var claimed = await db.StreamAutoClaimAsync(keys.Stream, Group, me, (long)redis.ClaimAfter.TotalMilliseconds, "0-0", options.Concurrency).ConfigureAwait(false);
                    entries = claimed.ClaimedEntries;
                }

                if (entries.Length == 0)
                {
                    if (loader.IsFaulted)
                    {
                        await loader.ConfigureAwait(false); // surfaces the loader's error
                    }

                    await Task.Delay(TimeSpan.FromMilliseconds(100), stop).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                    continue;
                }

                if (position != ">")
                {
                    position = entries[^1].Id!; // page through this consumer's own pending lines
                }

                try
                {
                    foreach (var entry in entries)
                    {
                        await work.Writer.WriteAsync(entry, stop).ConfigureAwait(false);
                    }
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                    // Stopping: the lines not handed out stay pending for a rerun.
                }
            }
        }
        finally
        {
            work.Writer.TryComplete();
            await Task.WhenAll(workers).ConfigureAwait(false);
        }

        await cts.CancelAsync().ConfigureAwait(false);
        await loader.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);

        var finalDone = await db.HashLengthAsync(keys.Results).ConfigureAwait(false);
        var lines = total ?? progress.Lines;
        if (total is not null && finalDone >= total)
        {
            await WriteFilesAsync(db, keys, options.OutputPath, errorsPath).ConfigureAwait(false);
        }

        // Not finished while the line count is unknown (the input is still loading).
        var remaining = total is null ? Math.Max(1, lines - finalDone) : Math.Max(0, lines - finalDone);
        return progress.ToSummary(options.OutputPath, errorsPath, remaining) with { Lines = lines };
    }

    private static async Task RunEntryAsync(IGatewayQueue queue, IDatabase db, Keys keys, StreamEntry entry, BatchRecords records, BatchProgress progress, BatchOptions options, CancellationToken stop)
    {
        var number = (long)entry["n"];
        var mark = (int)entry["x"];
        var line = BatchLine.Parse(mark >= 2 ? new JsonlLine(null, mark - 2) : new JsonlLine((string)entry["d"]!), number, options.Endpoint, options.Extra);
        if (!line.IsBad && mark == 1)
        {
            line = line with { Request = null, ErrorCode = "duplicate_custom_id", ErrorMessage = $"line {number}: custom_id '{line.CustomId}' appears on an earlier line; each custom_id must be unique." };
        }

        (bool Error, byte[] Line)? result;
        if (line.IsBad)
        {
            progress.AddBadLine();
            result = (true, records.BadLine(line));
        }
        else if (await db.HashExistsAsync(keys.Results, number).ConfigureAwait(false))
        {
            result = null; // a presumed-dead worker finished it after all
        }
        else
        {
            result = await BatchRunner.RunLineAsync(queue, line, records, progress, options.Time, stop, CancellationToken.None).ConfigureAwait(false);
            if (result is null)
            {
                return; // stopped before an answer: left pending, taken over by another worker or a rerun
            }
        }

        if (result is { } r)
        {
            // One result per line, whoever finishes first: 'o' output, 'e' errors.
            var value = new byte[r.Line.Length + 1];
            value[0] = r.Error ? (byte)'e' : (byte)'o';
            r.Line.CopyTo(value, 1);
            await db.HashSetAsync(keys.Results, number, value, When.NotExists).ConfigureAwait(false);
        }

        await db.StreamAcknowledgeAsync(keys.Stream, Group, entry.Id).ConfigureAwait(false);
    }

    /// <summary>Loads the input once, in order, while this process holds the loader lease.</summary>
    private static async Task LoadAsync(IDatabase db, Keys keys, BatchOptions options, string me, BatchProgress progress, CancellationToken stop)
    {
        var lease = TimeSpan.FromSeconds(10);
        while (!stop.IsCancellationRequested && !await db.KeyExistsAsync(keys.Total).ConfigureAwait(false))
        {
            if (!await db.StringSetAsync(keys.Loader, me, lease, When.NotExists).ConfigureAwait(false)
                && (string?)await db.StringGetAsync(keys.Loader).ConfigureAwait(false) != me)
            {
                await Task.Delay(TimeSpan.FromSeconds(1), stop).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                continue; // another process loads; take over if its lease runs out
            }

            var position = (long?)await db.StringGetAsync(keys.Position).ConfigureAwait(false) ?? 0;
            var seen = new HashSet<UInt128>();
            var chunk = new List<RedisValue>();
            long number = 0, lines = 0;
            await using var file = File.OpenRead(options.InputPath);
            using var reader = new JsonlReader(file);
            while (await reader.ReadLineAsync(stop).ConfigureAwait(false) is { } text)
            {
                number++;
                if (text.Text is { } t && string.IsNullOrWhiteSpace(t))
                {
                    continue;
                }

                lines++;
                var parsed = BatchLine.Parse(text, number, options.Endpoint, options.Extra);
                var duplicate = !parsed.IsBad && !seen.Add(BatchLine.Fingerprint(parsed.CustomId!));
                if (number <= position)
                {
                    continue; // loaded before (by this or another loader); read only to rebuild the duplicate check
                }

                chunk.Add(number);
                chunk.Add(text.Text ?? string.Empty);
                chunk.Add(text.Text is null ? 2 + text.InvalidUtf8At : duplicate ? 1 : 0);
                if (chunk.Count >= LoadChunk * 3)
                {
                    (var ok, position) = await AppendAsync(db, keys, me, lease, position, number, chunk).ConfigureAwait(false);
                    if (!ok)
                    {
                        break; // lost the lease: someone else loads now
                    }
                }
            }

            var complete = true;
            if (chunk.Count > 0)
            {
                (complete, position) = await AppendAsync(db, keys, me, lease, position, number, chunk).ConfigureAwait(false);
            }

            if (complete && position >= number)
            {
                await db.StringSetAsync(keys.Total, lines).ConfigureAwait(false);
                progress.SetLines(lines);
            }
        }
    }

    /// <summary>Appends a chunk if the position is still ours to extend; renews the lease.</summary>
    private static async Task<(bool Ok, long Position)> AppendAsync(IDatabase db, Keys keys, string me, TimeSpan lease, long position, long upTo, List<RedisValue> chunk)
    {
        var args = new RedisValue[2 + chunk.Count];
        args[0] = position;
        args[1] = upTo;
        chunk.CopyTo(args, 2);
        chunk.Clear();
        var result = (long)(await db.ScriptEvaluateAsync(LoadScript, [keys.Position, keys.Stream], args).ConfigureAwait(false))!;
        if (result >= 0)
        {
            return (false, result); // another loader moved the position: stop, re-read, resume from there
        }

        await db.KeyExpireAsync(keys.Loader, lease).ConfigureAwait(false);
        return (true, upTo);
    }

    private static async Task EnsureGroupAsync(IDatabase db, Keys keys)
    {
        try
        {
            await db.StreamCreateConsumerGroupAsync(keys.Stream, Group, "0-0", createStream: true).ConfigureAwait(false);
        }
        catch (RedisServerException ex) when (ex.Message.Contains("BUSYGROUP", StringComparison.Ordinal))
        {
            // created by another worker
        }
    }

    /// <summary>Writes the whole batch's results from Redis (every worker ends with the complete files).</summary>
    private static async Task WriteFilesAsync(IDatabase db, Keys keys, string outputPath, string errorsPath)
    {
        await using var output = new FileStream(outputPath, FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 16, useAsync: true);
        await using var errors = new FileStream(errorsPath, FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 16, useAsync: true);
        await foreach (var entry in db.HashScanAsync(keys.Results, pageSize: 1000).ConfigureAwait(false))
        {
            var value = (byte[])entry.Value!;
            var target = value[0] == (byte)'e' ? errors : output;
            await target.WriteAsync(value.AsMemory(1)).ConfigureAwait(false);
        }
    }

    /// <summary>A batch id from the input's content, so the same file names the same batch on every machine.</summary>
    private static string ContentId(string path)
    {
        var hash = new XxHash64();
        using var stream = File.OpenRead(path);
        hash.Append(stream);
        return "x" + hash.GetCurrentHashAsUInt64().ToString("x16", CultureInfo.InvariantCulture);
    }

    /// <summary>The batch's keys, all with one hash tag so Redis Cluster keeps them in one slot.</summary>
    private sealed class Keys(string prefix, string id)
    {
        private readonly string _base = $"{prefix}:batch:{{{id}}}:";

        public RedisKey Stream => _base + "work";

        public RedisKey Position => _base + "loaded-up-to";

        public RedisKey Total => _base + "lines";

        public RedisKey Loader => _base + "loader";

        public RedisKey Results => _base + "results";
    }
}
