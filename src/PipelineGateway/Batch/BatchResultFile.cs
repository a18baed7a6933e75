using System.Text;
using System.Text.Json;

namespace PipelineGateway.Batch;

/// <summary>
/// An append-only results file (output or errors) that is also the run's checkpoint: a line is written once a
/// request is answered, so what the file holds is exactly what a rerun must not do again. The file is held
/// exclusively for the run (a second process on the same batch fails at once), and a last line torn by a
/// kill is cut off before anything is appended, so its request is simply done again.
/// </summary>
internal sealed class BatchResultFile : IAsyncDisposable
{
    private readonly FileStream _stream;
    private readonly FileStream _lock;

    private BatchResultFile(string path, FileStream stream, FileStream lockFile)
    {
        Path = path;
        _stream = stream;
        _lock = lockFile;
    }

    public string Path { get; }

    /// <summary>Bytes cut off the end because the last line was torn.</summary>
    public long RepairedBytes { get; private set; }

    /// <summary>
    /// Opens (or creates) the file for appending, repairs a torn last line, and hands every earlier record to
    /// <paramref name="onRecord"/> with its 1-based line number. With <paramref name="truncate"/> the file starts empty.
    /// </summary>
    public static BatchResultFile Open(string path, bool truncate, Action<JsonElement, long> onRecord)
    {
        FileStream lockFile, stream;
        try
        {
            if (System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path)) is { } dir)
            {
                Directory.CreateDirectory(dir);
            }

            // Two runs appending to one file would double its lines. FileShare.None on a lock file beside it takes
            // an exclusive lock (the OS drops it when the process dies, even by SIGKILL); the results file itself
            // stays readable by others while the run writes it.
            lockFile = new FileStream(path + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
        }
        catch (IOException ex) when (ex is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw new BatchException($"Cannot open '{path}' for writing: {ex.Message} (is another 'pgw batch' writing it?)", ex);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException or NotSupportedException or ArgumentException)
        {
            throw new BatchException($"Cannot open '{path}' for writing: {ex.Message}", ex);
        }

        try
        {
            stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read, bufferSize: 1 << 16, FileOptions.Asynchronous);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException or NotSupportedException or ArgumentException)
        {
            lockFile.Dispose();
            throw new BatchException($"Cannot open '{path}' for writing: {ex.Message}", ex);
        }

        var file = new BatchResultFile(path, stream, lockFile);
        try
        {
            if (truncate)
            {
                stream.SetLength(0);
            }
            else
            {
                file.RepairTornTail();
                file.ReadRecords(onRecord);
            }

            stream.Seek(0, SeekOrigin.End);
            return file;
        }
        catch
        {
            stream.Dispose();
            lockFile.Dispose();
            throw;
        }
    }

    private void RepairTornTail()
    {
        var length = _stream.Length;
        if (length == 0)
        {
            return;
        }

        // Walk back to the last newline; everything after it is a line the previous run did not finish.
        var buffer = new byte[4096];
        var end = length;
        while (end > 0)
        {
            var start = Math.Max(0, end - buffer.Length);
            _stream.Position = start;
            _stream.ReadExactly(buffer, 0, (int)(end - start));
            var last = Array.LastIndexOf(buffer, (byte)'\n', (int)(end - start - 1));
            if (last >= 0)
            {
                Truncate(start + last + 1, length);
                return;
            }

            end = start;
        }

        Truncate(0, length);
    }

    private void Truncate(long keep, long length)
    {
        if (keep < length)
        {
            RepairedBytes = length - keep;
            _stream.SetLength(keep);
        }
    }

    private void ReadRecords(Action<JsonElement, long> onRecord)
    {
        _stream.Position = 0;
        using var reader = new StreamReader(_stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: false, bufferSize: 1 << 16, leaveOpen: true);
        long lineNumber = 0;
        while (reader.ReadLine() is { } line)
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                {
                    throw new JsonException("not an object");
                }

                onRecord(doc.RootElement, lineNumber);
            }
            catch (Exception ex) when (ex is JsonException or InvalidOperationException or KeyNotFoundException)
            {
                throw new BatchException($"'{Path}' line {lineNumber} is not a batch result line ({ex.Message}); it was not written by 'pgw batch'. Choose another output file, or remove that line.", ex);
            }
        }
    }

    public ValueTask WriteAsync(ReadOnlyMemory<byte> line, CancellationToken cancellationToken) => _stream.WriteAsync(line, cancellationToken);

    /// <summary>Hands what was written to the operating system: a killed process loses none of it.</summary>
    public Task FlushAsync(CancellationToken cancellationToken) => _stream.FlushAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync().ConfigureAwait(false);
        await _lock.DisposeAsync().ConfigureAwait(false);
    }
}
