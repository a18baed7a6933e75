using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server.Batches;

/// <summary>A file of OpenAI's Files API as this gateway keeps it (its wire shape: <c>object</c> "file").</summary>
internal sealed class BatchFile
{
    public required string Id { get; init; }

    public string Object => "file";

    public long Bytes { get; init; }

    public long CreatedAt { get; init; }

    public required string Filename { get; init; }

    /// <summary><c>batch</c> (an upload) or <c>batch_output</c> (a batch's results or errors).</summary>
    public required string Purpose { get; init; }

    public string Status => "processed";

    /// <summary>When the file expires (its <c>expires_after</c>, else <see cref="ServerOptions.BatchFileLifetime"/>); null: kept until deleted.</summary>
    public long? ExpiresAt { get; init; }

    public string? StatusDetails => null;

    /// <summary>Whether the file has expired at <paramref name="now"/> (Unix seconds): gone for the API, its bytes left for the sweep.</summary>
    public bool ExpiredAt(long now) => ExpiresAt is { } at && at <= now;
}

/// <summary>A batch of OpenAI's Batch API, in its wire shape (<c>object</c> "batch").</summary>
internal sealed class BatchJob
{
    public required string Id { get; init; }

    public string Object => "batch";

    public required string Endpoint { get; init; }

    public BatchErrors? Errors { get; set; }

    public required string InputFileId { get; init; }

    public string CompletionWindow { get; init; } = "24h";

    /// <summary>validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled.</summary>
    public string Status { get; set; } = "validating";

    public string? OutputFileId { get; set; }

    public string? ErrorFileId { get; set; }

    public long CreatedAt { get; init; }

    public long? InProgressAt { get; set; }

    public long ExpiresAt { get; init; }

    public long? FinalizingAt { get; set; }

    public long? CompletedAt { get; set; }

    public long? FailedAt { get; set; }

    public long? ExpiredAt { get; set; }

    public long? CancellingAt { get; set; }

    public long? CancelledAt { get; set; }

    public BatchCounts RequestCounts { get; set; } = new();

    public Dictionary<string, string>? Metadata { get; init; }

    /// <summary>Whether the batch still runs or waits to (a cancel or a restart reaches it).</summary>
    [JsonIgnore]
    public bool Live => Status is "validating" or "in_progress" or "finalizing" or "cancelling";
}

internal sealed class BatchCounts
{
    public long Total { get; set; }

    public long Completed { get; set; }

    public long Failed { get; set; }
}

internal sealed class BatchErrors
{
    public string Object => "list";

    public List<BatchError> Data { get; init; } = [];
}

internal sealed class BatchError
{
    public required string Code { get; init; }

    public required string Message { get; init; }

    public string? Param { get; init; }

    public long? Line { get; init; }
}

/// <summary>A batch as kept on disk: the wire object and the gateway key that owns it.</summary>
internal sealed class StoredBatch
{
    public required string Owner { get; init; }

    public required BatchJob Batch { get; init; }

    /// <summary>When it was created, in ticks: the order of a key's batches (the wire's <c>created_at</c> is in whole seconds).</summary>
    public long CreatedTicks { get; init; }

    /// <summary>The lifetime of its result files in seconds (its <c>output_expires_after</c>); null: <see cref="ServerOptions.BatchFileLifetime"/>.</summary>
    public long? OutputLifetimeSeconds { get; init; }

    /// <summary>
    /// The status a <c>finalizing</c> batch ends in (completed, cancelled, expired): a restart during its finalizing
    /// finishes it so, without running a line again.
    /// </summary>
    public string? Ending { get; set; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(BatchFile))]
[JsonSerializable(typeof(BatchJob))]
[JsonSerializable(typeof(StoredBatch))]
[JsonSerializable(typeof(List<BatchFile>))]
[JsonSerializable(typeof(List<BatchJob>))]
internal sealed partial class BatchJsonContext : JsonSerializerContext;

/// <summary>
/// The Batch API's files and batches on disk, under <see cref="ServerOptions.BatchDirectory"/>: one directory per gateway
/// key (named by a hash of the key's id, so no id reaches a path), holding each file's bytes (<c>ID.data</c>) and its
/// record (<c>ID.json</c>), each batch's record and, while it runs, its results so far. Ids are checked against their
/// exact form before any path is made of them. Records are written whole (a temporary file renamed over the old one), so
/// a crash leaves the old record or the new one. The directory is locked by the instance that uses it. An expired file
/// is gone for every lookup at once; its record and bytes go at the next <see cref="SweepExpired"/>.
/// </summary>
internal sealed partial class BatchStore : IDisposable
{
    private readonly string? _root;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly object _gate = new();
    private FileStream? _lock;
    private bool _lockFailed;

    public BatchStore(ServerOptions options, ILogger<BatchStore> logger, TimeProvider? time = null)
    {
        _root = string.IsNullOrWhiteSpace(options.BatchDirectory) ? null : Path.GetFullPath(options.BatchDirectory);
        _logger = logger;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>Whether the Batch API is configured at all (a directory is set).</summary>
    public bool Configured => _root is not null;

    /// <summary>Whether the directory already holds something (batches to resume at start).</summary>
    public bool Exists => _root is not null && Directory.Exists(_root);

    /// <summary>Whether this process holds the directory (<see cref="TryOpen"/> succeeded).</summary>
    public bool Opened
    {
        get
        {
            lock (_gate)
            {
                return _lock is not null;
            }
        }
    }

    /// <summary>Now, in the Unix seconds of the records' times.</summary>
    public long Now => _time.GetUtcNow().ToUnixTimeSeconds();

    /// <summary>
    /// Makes the directory and takes its lock, once; false when another process holds it (two instances resuming the same
    /// batches would run every line twice).
    /// </summary>
    public bool TryOpen()
    {
        lock (_gate)
        {
            if (_lock is not null)
            {
                return true;
            }

            if (_root is null || _lockFailed)
            {
                return false;
            }

            try
            {
                Directory.CreateDirectory(_root);
                _lock = new FileStream(Path.Combine(_root, ".lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
                return true;
            }
            catch (IOException ex)
            {
                _lockFailed = true;
                LogLocked(_logger, _root, ex.Message);
                return false;
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _lock?.Dispose();
            _lock = null;
        }
    }

    /// <summary>When a file made at <paramref name="createdAt"/> expires: <paramref name="seconds"/> after it (the caller's policy), else <paramref name="fallback"/> after it (zero: never).</summary>
    public static long? Expiry(long createdAt, long? seconds, TimeSpan fallback) =>
        seconds is { } s ? createdAt + s : fallback > TimeSpan.Zero ? createdAt + (long)fallback.TotalSeconds : null;

    public static string NewFileId() => "file-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));

    public static string NewBatchId() => "batch_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));

    /// <summary>A file id in the form this store makes (<c>file-</c> and 24 lowercase hex digits); anything else names no file.</summary>
    public static bool IsFileId(string? id) => id is { Length: 29 } && id.StartsWith("file-", StringComparison.Ordinal) && IsHex(id.AsSpan(5));

    /// <summary>A batch id in the form this store makes (<c>batch_</c> and 24 lowercase hex digits).</summary>
    public static bool IsBatchId(string? id) => id is { Length: 30 } && id.StartsWith("batch_", StringComparison.Ordinal) && IsHex(id.AsSpan(6));

    private static bool IsHex(ReadOnlySpan<char> s)
    {
        foreach (var c in s)
        {
            if (!char.IsAsciiDigit(c) && c is not (>= 'a' and <= 'f'))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The directory of one gateway key's files and batches (the empty owner: no keys are configured).</summary>
    public string OwnerDirectory(string owner) => Path.Combine(_root!, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes("pgw-batch-owner\n" + owner)))[..32]);

    public string DataPath(string owner, string fileId) => Path.Combine(OwnerDirectory(owner), fileId + ".data");

    /// <summary>Where a running batch writes its results (<paramref name="part"/>: <c>output</c> or <c>errors</c>) until they become files.</summary>
    public string WorkingPath(string owner, string batchId, string part) => Path.Combine(OwnerDirectory(owner), $"{batchId}.{part}.jsonl");

    /// <summary>The owner's file by that id; null when there is none or it has expired (unless <paramref name="evenExpired"/>: a running batch's own input).</summary>
    public BatchFile? GetFile(string owner, string id, bool evenExpired = false) =>
        IsFileId(id) && Read(Path.Combine(OwnerDirectory(owner), id + ".json"), BatchJsonContext.Default.BatchFile) is { } file && (evenExpired || !file.ExpiredAt(Now)) ? file : null;

    /// <summary>The owner's files not expired (all that are on disk with <paramref name="evenExpired"/>).</summary>
    public List<BatchFile> Files(string owner, bool evenExpired = false)
    {
        var now = Now;
        var files = List(owner, "file-*.json", BatchJsonContext.Default.BatchFile);
        return evenExpired ? files : files.FindAll(f => !f.ExpiredAt(now));
    }

    /// <summary>
    /// Deletes the expired files (record, then bytes) of every owner, or of <paramref name="owner"/> only, but those
    /// <paramref name="inUse"/> says a batch still reads (owner directory, file id): they go at a later sweep. Returns
    /// how many went.
    /// </summary>
    public int SweepExpired(Func<string, string, bool> inUse, string? owner = null)
    {
        if (!Opened)
        {
            return 0; // another process's directory, or nothing kept yet
        }

        var now = Now;
        var swept = 0;
        var dirs = owner is null ? Directory.EnumerateDirectories(_root!) : [OwnerDirectory(owner)];
        foreach (var dir in dirs.Where(Directory.Exists))
        {
            foreach (var path in Directory.EnumerateFiles(dir, "file-*.json"))
            {
                if (Read(path, BatchJsonContext.Default.BatchFile) is { } file && IsFileId(file.Id) && file.ExpiredAt(now) && !inUse(dir, file.Id))
                {
                    File.Delete(path); // the record first: a crash between leaves bytes no record names
                    File.Delete(Path.Combine(dir, file.Id + ".data"));
                    swept++;
                }
            }

            // What a crash left: bytes no record names (a delete cut between its two steps, or an upload kept without its
            // record — AddFile moves the bytes, then writes the record: an hour leaves room for that), and temporary files
            // (uploads never finished, records never renamed) a day old. By the file system's clock: these files have no
            // record to say when they were made.
            var wall = DateTime.UtcNow;
            foreach (var path in Directory.EnumerateFiles(dir, "file-*.data"))
            {
                if (!File.Exists(Path.ChangeExtension(path, ".json")) && wall - File.GetLastWriteTimeUtc(path) > TimeSpan.FromHours(1))
                {
                    File.Delete(path);
                }
            }

            foreach (var path in Directory.EnumerateFiles(dir, "*.tmp"))
            {
                if (wall - File.GetLastWriteTimeUtc(path) > TimeSpan.FromDays(1))
                {
                    File.Delete(path);
                }
            }
        }

        return swept;
    }

    private readonly Dictionary<string, (long Bytes, int Files)> _writing = new(StringComparer.Ordinal);

    /// <summary>
    /// Holds room for an upload of <paramref name="bytes"/> while it is written, when the owner's files, the uploads it is
    /// writing meanwhile and this one fit in <paramref name="limit"/> bytes and, with <paramref name="reservedFiles"/>
    /// (its live batches' results to come), in <paramref name="maxFiles"/> files: two uploads at once cannot pass the
    /// bounds together. Expired files not swept yet count: they are still on disk.
    /// Given back with <see cref="Release"/>.
    /// </summary>
    public bool TryHold(string owner, long bytes, long limit, int maxFiles, int reservedFiles)
    {
        lock (_writing)
        {
            var (writing, count) = _writing.GetValueOrDefault(owner);
            var files = Files(owner, evenExpired: true);
            if (files.Sum(static f => f.Bytes) + writing + bytes > limit || files.Count + count + 1 + reservedFiles > maxFiles)
            {
                return false;
            }

            _writing[owner] = (writing + bytes, count + 1);
            return true;
        }
    }

    public void Release(string owner, long bytes)
    {
        lock (_writing)
        {
            Unhold(owner, bytes);
        }
    }

    /// <summary>
    /// Keeps a held upload as a file (<see cref="AddFile"/>) and gives its hold back in one step: between the two it
    /// would count twice — as a file and as an upload being written — and an upload beside it be refused room it has.
    /// </summary>
    public void Keep(string owner, BatchFile file, string bytesPath)
    {
        lock (_writing)
        {
            AddFile(owner, file, bytesPath);
            Unhold(owner, file.Bytes);
        }
    }

    private void Unhold(string owner, long bytes)
    {
        var (writing, count) = _writing.GetValueOrDefault(owner);
        if (count > 1)
        {
            _writing[owner] = (writing - bytes, count - 1);
        }
        else
        {
            _writing.Remove(owner);
        }
    }

    /// <summary>Keeps <paramref name="bytesPath"/> (a file in the owner's directory, moved) as a file with this record.</summary>
    public void AddFile(string owner, BatchFile file, string bytesPath)
    {
        var data = DataPath(owner, file.Id);
        File.Move(bytesPath, data, overwrite: true);
        File.SetLastWriteTimeUtc(data, DateTime.UtcNow); // young until its record is written: the sweep leaves such bytes an hour
        Write(Path.Combine(OwnerDirectory(owner), file.Id + ".json"), file, BatchJsonContext.Default.BatchFile);
    }

    public bool DeleteFile(string owner, string id)
    {
        if (GetFile(owner, id) is null)
        {
            return false;
        }

        File.Delete(Path.Combine(OwnerDirectory(owner), id + ".json")); // the record first: a crash between leaves bytes no record names
        File.Delete(DataPath(owner, id));
        return true;
    }

    /// <summary>A temporary path in the owner's directory for an upload being written (made with the directory).</summary>
    public string UploadPath(string owner)
    {
        var dir = OwnerDirectory(owner);
        Directory.CreateDirectory(dir);
        return Path.Combine(dir, "upload-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)) + ".tmp");
    }

    public StoredBatch? GetBatch(string owner, string id) =>
        IsBatchId(id) ? Read(Path.Combine(OwnerDirectory(owner), id + ".json"), BatchJsonContext.Default.StoredBatch) : null;

    public List<StoredBatch> Batches(string owner) => List(owner, "batch_*.json", BatchJsonContext.Default.StoredBatch);

    /// <summary>Every batch of every owner (at start: the live ones are resumed).</summary>
    public IEnumerable<StoredBatch> AllBatches()
    {
        if (!Exists)
        {
            yield break;
        }

        foreach (var dir in Directory.EnumerateDirectories(_root!))
        {
            foreach (var path in Directory.EnumerateFiles(dir, "batch_*.json"))
            {
                if (Read(path, BatchJsonContext.Default.StoredBatch) is { } batch)
                {
                    yield return batch;
                }
            }
        }
    }

    /// <summary>Forgets an ended batch's record (its result files are files of their own, kept until deleted).</summary>
    public void ForgetBatch(string owner, string id)
    {
        if (IsBatchId(id))
        {
            File.Delete(Path.Combine(OwnerDirectory(owner), id + ".json"));
        }
    }

    public void SaveBatch(StoredBatch batch)
    {
        Directory.CreateDirectory(OwnerDirectory(batch.Owner));
        Write(Path.Combine(OwnerDirectory(batch.Owner), batch.Batch.Id + ".json"), batch, BatchJsonContext.Default.StoredBatch);
    }

    private List<T> List<T>(string owner, string pattern, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info)
        where T : class
    {
        var dir = OwnerDirectory(owner);
        var list = new List<T>();
        if (Directory.Exists(dir))
        {
            foreach (var path in Directory.EnumerateFiles(dir, pattern))
            {
                if (!path.EndsWith(".tmp", StringComparison.Ordinal) && Read(path, info) is { } item)
                {
                    list.Add(item);
                }
            }
        }

        return list;
    }

    private T? Read<T>(string path, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info)
        where T : class
    {
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(path), info);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
        catch (JsonException ex)
        {
            LogUnreadable(_logger, path, ex.Message);
            return null;
        }
    }

    private static void Write<T>(string path, T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info)
    {
        var temporary = path + "." + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)) + ".tmp";
        File.WriteAllBytes(temporary, JsonSerializer.SerializeToUtf8Bytes(value, info));
        File.Move(temporary, path, overwrite: true);
    }

    [LoggerMessage(EventId = 700, Level = LogLevel.Warning, Message = "The Batch API is off: its directory {Directory} is locked by another process ({Reason}). Give each instance a directory of its own (Gateway:Server:BatchDirectory).")]
    private static partial void LogLocked(ILogger logger, string directory, string reason);

    [LoggerMessage(EventId = 701, Level = LogLevel.Warning, Message = "A Batch API record could not be read and is passed over: {Path} ({Reason}).")]
    private static partial void LogUnreadable(ILogger logger, string path, string reason);
}
