using System.Buffers;
using System.Runtime.CompilerServices;

namespace PipelineGateway.Providers.Http;

/// <summary>
/// Server-sent events read from an upstream body, one event's data at a time, as the WHATWG event-stream format has
/// it: lines end in CRLF, LF or CR; a leading BOM is skipped; <c>:</c> starts a comment; a field's value loses one
/// leading space; <c>data</c> lines join with LF; an empty line dispatches an event when it has data; a line left
/// unfinished at the end of the body is not an event.
/// <para>
/// Why not <see cref="System.Net.ServerSentEvents.SseParser"/> (both adapters used it until 2026-12-03): it is two
/// asynchronous layers per event (its enumerator, and a line-filling method whose state machine is allocated on every
/// read that waits for the upstream, 5–7% of what a streamed event allocated), and the adapters read only each event's
/// data. This reader is one pooled asynchronous method: 0.956x the CPU per streamed event of the build with SseParser,
/// paired, every round lower (docs/benchmarks.md). SseEventReaderTests hold it to SseParser on arbitrary streams split
/// at arbitrary points, and bound its lines.
/// </para>
/// </summary>
internal sealed class SseEventReader : IDisposable
{
    /// <summary>The longest line kept (a hostile upstream's endless line ends the stream instead of growing the buffer).</summary>
    internal const int MaxLineBytes = 4 * 1024 * 1024;

    private static ReadOnlySpan<byte> Bom => [0xEF, 0xBB, 0xBF];

    private readonly Stream _body;
    private byte[] _buffer = ArrayPool<byte>.Shared.Rent(4096);
    private int _start; // the first unread byte
    private int _end; // one past the last byte read
    private byte[] _data = ArrayPool<byte>.Shared.Rent(1024);
    private int _dataLength;
    private bool _hasData; // a data field was seen since the last dispatch (even an empty one)
    private bool _afterCr; // the last line ended in CR: an LF that follows belongs to it
    private bool _started; // past the optional BOM
    private bool _ended;

    public SseEventReader(Stream body) => _body = body;

    /// <summary>The current event's data (its <c>data</c> lines joined by LF); valid until the next <see cref="MoveNextAsync"/>.</summary>
    public ReadOnlySpan<byte> Data => _data.AsSpan(0, _dataLength);

    /// <summary>Moves to the next event with data; false when the body ended.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> MoveNextAsync(CancellationToken cancellationToken)
    {
        if (_hasData)
        {
            _hasData = false; // the event returned last time was consumed
            _dataLength = 0;
        }

        while (true)
        {
            if (NextEvent())
            {
                return true;
            }

            if (_ended)
            {
                return false;
            }

            MakeRoom();
            var read = await _body.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                _ended = true; // an unfinished line and an undispatched event are dropped, as the format says
                _dataLength = 0;
                _hasData = false;
                return false;
            }

            _end += read;
        }
    }

    /// <summary>Processes the complete lines in the buffer; true when one of them dispatched an event.</summary>
    private bool NextEvent()
    {
        if (!_started)
        {
            if (_end - _start < Bom.Length && !_ended && Bom.StartsWith(_buffer.AsSpan(_start, _end - _start)))
            {
                return false; // maybe a BOM, not all here yet
            }

            _started = true;
            if (_buffer.AsSpan(_start, _end - _start).StartsWith(Bom))
            {
                _start += Bom.Length;
            }
        }

        while (_start < _end)
        {
            if (_afterCr)
            {
                _afterCr = false;
                if (_buffer[_start] == (byte)'\n')
                {
                    _start++;
                    continue;
                }
            }

            var unread = _buffer.AsSpan(_start, _end - _start);
            var eol = unread.IndexOfAny((byte)'\r', (byte)'\n');
            if (eol < 0)
            {
                return false;
            }

            _afterCr = unread[eol] == (byte)'\r';
            _start += eol + 1;
            if (Line(unread[..eol]))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>One complete line; true when it is the empty line that dispatches an event with data.</summary>
    private bool Line(ReadOnlySpan<byte> line)
    {
        if (line.IsEmpty)
        {
            if (!_hasData)
            {
                return false;
            }

            _dataLength = Math.Max(0, _dataLength - 1); // the LF after the last data line
            return true;
        }

        if (line[0] == (byte)':')
        {
            return false; // a comment
        }

        var colon = line.IndexOf((byte)':');
        var name = colon < 0 ? line : line[..colon];
        if (!name.SequenceEqual("data"u8))
        {
            return false; // event, id, retry and unknown fields: nothing the adapters read
        }

        var value = colon < 0 ? default : line[(colon + 1)..];
        if (!value.IsEmpty && value[0] == (byte)' ')
        {
            value = value[1..];
        }

        AppendData(value);
        return false;
    }

    private void AppendData(ReadOnlySpan<byte> value)
    {
        var needed = _dataLength + value.Length + 1;
        if (needed > _data.Length)
        {
            if (needed > MaxLineBytes)
            {
                throw new InvalidDataException($"The stream sent an event longer than {MaxLineBytes / (1024 * 1024)} MiB.");
            }

            var bigger = ArrayPool<byte>.Shared.Rent(needed);
            _data.AsSpan(0, _dataLength).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_data);
            _data = bigger;
        }

        value.CopyTo(_data.AsSpan(_dataLength));
        _dataLength += value.Length;
        _data[_dataLength++] = (byte)'\n';
        _hasData = true;
    }

    /// <summary>Room at the buffer's end for the next read: unread bytes moved to the front, the buffer grown when a line fills it.</summary>
    private void MakeRoom()
    {
        var unread = _end - _start;
        if (_start > 0)
        {
            _buffer.AsSpan(_start, unread).CopyTo(_buffer);
            _start = 0;
            _end = unread;
        }

        if (_end == _buffer.Length)
        {
            if (_buffer.Length >= MaxLineBytes)
            {
                throw new InvalidDataException($"The stream sent a line longer than {MaxLineBytes / (1024 * 1024)} MiB.");
            }

            var bigger = ArrayPool<byte>.Shared.Rent(_buffer.Length * 2);
            _buffer.AsSpan(0, _end).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = bigger;
        }
    }

    public void Dispose()
    {
        ArrayPool<byte>.Shared.Return(_buffer);
        ArrayPool<byte>.Shared.Return(_data);
        _buffer = _data = [];
    }
}
