using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace PipelineGateway.Batch;

/// <summary>One line of a JSONL file: its text, or (<see cref="Text"/> null) where its bytes stop being UTF-8.</summary>
internal readonly record struct JsonlLine(string? Text, int InvalidUtf8At = -1);

/// <summary>
/// The lines of a JSONL file, each checked as UTF-8 on its own: a line that is not (a file saved as Latin-1 or
/// Windows-1252, a byte cut from a character) is reported with the offset where it goes wrong, instead of decoded with
/// replacement characters — a <c>custom_id</c> changed so that its result matched no line of the caller's, a prompt
/// changed without a word. Lines end at LF (a CR before it is dropped); a UTF-8 byte-order mark is skipped; a file that
/// starts with a UTF-16 or UTF-32 one (Windows PowerShell's <c>Out-File</c>) is decoded by a <see cref="StreamReader"/>, as
/// any such file was.
/// </summary>
internal sealed class JsonlReader : IDisposable
{
    private readonly Stream _stream;
    private byte[] _buffer;
    private int _start;
    private int _end;
    private bool _eof;
    private bool _sniffed;
    private StreamReader? _wide;

    public JsonlReader(Stream stream)
        : this(stream, 1 << 16)
    {
    }

    /// <param name="initialBufferBytes">The buffer's first size (tests make it tiny, so that lines outgrow it).</param>
    internal JsonlReader(Stream stream, int initialBufferBytes)
    {
        _stream = stream;
        _buffer = ArrayPool<byte>.Shared.Rent(initialBufferBytes);
    }

    /// <summary>The next line, or null at the end of the file.</summary>
    public async ValueTask<JsonlLine?> ReadLineAsync(CancellationToken cancellationToken)
    {
        if (!_sniffed)
        {
            await SniffAsync(cancellationToken).ConfigureAwait(false);
        }

        if (_wide is not null)
        {
            return await _wide.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } text ? new JsonlLine(text) : null;
        }

        while (true)
        {
            var newline = _buffer.AsSpan(_start, _end - _start).IndexOf((byte)'\n');
            if (newline >= 0)
            {
                var line = Decode(_buffer.AsSpan(_start, newline));
                _start += newline + 1;
                return line;
            }

            if (_eof)
            {
                if (_start == _end)
                {
                    return null;
                }

                var last = Decode(_buffer.AsSpan(_start, _end - _start));
                _start = _end;
                return last;
            }

            await FillAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask SniffAsync(CancellationToken cancellationToken)
    {
        while (!_eof && _end < 4)
        {
            await FillAsync(cancellationToken).ConfigureAwait(false);
        }

        _sniffed = true;
        var head = _buffer.AsSpan(0, _end);
        if (head.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]))
        {
            _start = 3;
        }
        else if ((head.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xFE]) || head.StartsWith((ReadOnlySpan<byte>)[0xFE, 0xFF]) || head.StartsWith((ReadOnlySpan<byte>)[0, 0, 0xFE, 0xFF])) && _stream.CanSeek)
        {
            _stream.Position = 0;
            _wide = new StreamReader(_stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16, leaveOpen: true);
        }
    }

    private async ValueTask FillAsync(CancellationToken cancellationToken)
    {
        if (_start > 0)
        {
            _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
            _end -= _start;
            _start = 0;
        }

        if (_end == _buffer.Length)
        {
            // A line longer than the buffer: it grows (a line is one request, images included).
            var bigger = ArrayPool<byte>.Shared.Rent(_buffer.Length * 2);
            _buffer.AsSpan(0, _end).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = bigger;
        }

        var read = await _stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
        _end += read;
        _eof = read == 0;
    }

    private static JsonlLine Decode(ReadOnlySpan<byte> line)
    {
        if (line.EndsWith("\r"u8))
        {
            line = line[..^1];
        }

        return Utf8.IsValid(line) ? new JsonlLine(Encoding.UTF8.GetString(line)) : new JsonlLine(null, Serialization.JsonProblems.FirstInvalidUtf8(line));
    }

    public void Dispose()
    {
        _wide?.Dispose();
        ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = [];
    }
}
