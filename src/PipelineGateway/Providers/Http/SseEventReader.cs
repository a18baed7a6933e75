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

    /// <summary>
    /// The read buffer's first size: an event from an LLM is one line of a few hundred bytes, and a stream's buffers are
    /// rented while it runs — with a thousand streams at once the shared pool has none to spare, so each stream's were new
    /// arrays, garbage at its end (4 KB and 1 KB until 2026-12-03: 12% of what a streamed event allocated, by the
    /// allocation trace of <c>benchmarks/http/stream-alloc.sh</c>). A longer line doubles it, up to <see cref="MaxLineBytes"/>.
    /// </summary>
    internal const int InitialBufferBytes = 1024;

    private readonly Stream _body;
    private byte[] _buffer;
    private int _start; // the first unread byte
    private int _end; // one past the last byte read

    // The event's data. Usually one data line, whose bytes are still in the read buffer when the empty line after it
    // dispatches the event: the data is then that slice (_sliceStart, _sliceLength ≥ 0), not a copy. Data that spans
    // lines, or a slice the buffer is about to move, is joined into _data (rented when first needed).
    private int _sliceStart;
    private int _sliceLength = -1;
    private byte[] _data = [];
    private int _dataLength;
    private bool _hasData; // a data field was seen since the last dispatch (even an empty one)
    private bool _afterCr; // the last line ended in CR: an LF that follows belongs to it
    private bool _started; // past the optional BOM
    private bool _ended;
    private bool _dispatched; // the last TryMoveNext returned an event (its data is cleared on the next)

    public SseEventReader(Stream body)
        : this(body, InitialBufferBytes)
    {
    }

    /// <param name="initialBufferBytes">The read buffer's first size (tests make it tiny, so that lines outgrow it).</param>
    internal SseEventReader(Stream body, int initialBufferBytes)
    {
        _body = body;
        _buffer = ArrayPool<byte>.Shared.Rent(initialBufferBytes);
    }

    /// <summary>The current event's data (its <c>data</c> lines joined by LF); valid until the next <see cref="MoveNextAsync"/>.</summary>
    public ReadOnlySpan<byte> Data => _sliceLength >= 0 ? _buffer.AsSpan(_sliceStart, _sliceLength) : _data.AsSpan(0, _dataLength);

    /// <summary>Moves to the next event with data; false when the body ended.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> MoveNextAsync(CancellationToken cancellationToken)
    {
        while (!TryMoveNext())
        {
            if (_ended || !Filled(await ReadAsync(cancellationToken).ConfigureAwait(false)))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Moves to the next event whose lines are all in the buffer already, without reading; false when more must be
    /// read (<see cref="ReadAsync"/>, then <see cref="Filled"/>) or the body ended (<see cref="Ended"/>).
    /// </summary>
    /// <remarks>
    /// The hot loop (a streamed answer's events, <see cref="HttpChatProvider.StreamAsync"/>) awaits the body's read
    /// itself through these rather than <see cref="MoveNextAsync"/>: one asynchronous layer fewer to resume on every
    /// event that waits for the upstream (most of them: an LLM sends its events apart).
    /// </remarks>
    public bool TryMoveNext()
    {
        if (_dispatched)
        {
            _dispatched = false; // the event returned last time was consumed
            _hasData = false;
            _dataLength = 0;
            _sliceLength = -1;
        }

        _dispatched = NextEvent();
        return _dispatched;
    }

    /// <summary>True once a read found the body's end (no event follows).</summary>
    public bool Ended => _ended;

    /// <summary>Reads more of the body into the buffer; hand what it returns to <see cref="Filled"/>.</summary>
    public ValueTask<int> ReadAsync(CancellationToken cancellationToken)
    {
        if (_sliceLength >= 0)
        {
            JoinSlice(); // MakeRoom may move the bytes the slice points at
        }

        MakeRoom();
        return _body.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
    }

    /// <summary>Takes the bytes a <see cref="ReadAsync"/> read; false when it read none: the body ended.</summary>
    public bool Filled(int read)
    {
        if (read == 0)
        {
            _ended = true; // an unfinished line and an undispatched event are dropped, as the format says
            _dataLength = 0;
            _sliceLength = -1;
            _hasData = false;
            return false;
        }

        _end += read;
        return true;
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
            var lineStart = _start;
            _start += eol + 1;
            if (Line(unread[..eol], lineStart))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// One complete line, which starts at <paramref name="offset"/> in the read buffer; true when it is the empty line
    /// that dispatches an event with data.
    /// </summary>
    private bool Line(ReadOnlySpan<byte> line, int offset)
    {
        if (line.IsEmpty)
        {
            if (!_hasData)
            {
                return false;
            }

            _dataLength = Math.Max(0, _dataLength - 1); // the LF after the last joined data line (none for a slice)
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

        var valueStart = colon < 0 ? line.Length : colon + 1;
        if (valueStart < line.Length && line[valueStart] == (byte)' ')
        {
            valueStart++;
        }

        if (!_hasData)
        {
            // The event's first data line: kept where it is, until another joins it or the buffer moves.
            _sliceStart = offset + valueStart;
            _sliceLength = line.Length - valueStart;
            _hasData = true;
            return false;
        }

        if (_sliceLength >= 0)
        {
            JoinSlice();
        }

        AppendData(line[valueStart..]);
        return false;
    }

    /// <summary>The event's data so far, held as a slice of the read buffer, copied into the joined data (with its LF).</summary>
    private void JoinSlice()
    {
        var slice = _buffer.AsSpan(_sliceStart, _sliceLength);
        _sliceLength = -1;
        AppendData(slice);
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

            var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(needed, 256));
            _data.AsSpan(0, _dataLength).CopyTo(bigger);
            Return(_data);
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
            Return(_buffer);
            _buffer = bigger;
        }
    }

    public void Dispose()
    {
        Return(_buffer);
        Return(_data);
        _buffer = _data = [];
        _sliceLength = -1;
    }

    /// <summary>Gives a rented buffer back (the empty array that stands for none is not the pool's).</summary>
    private static void Return(byte[] buffer)
    {
        if (buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
