using CsCheck;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// A body delivered in reads of 1 to <c>maxRead</c> bytes (<see cref="int.MaxValue"/>: as much as asked), a quarter of
/// the asynchronous ones completing later, on another thread: what a reader of a network stream or a file must handle.
/// </summary>
internal sealed class SlicedStream(byte[] bytes, PCG pcg, int maxRead) : Stream
{
    private int _position;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => bytes.Length;

    public override long Position { get => _position; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        var n = Math.Min(Math.Min(buffer.Length, bytes.Length - _position), maxRead == int.MaxValue ? int.MaxValue : 1 + (int)(pcg.Next() % (uint)maxRead));
        bytes.AsSpan(_position, n).CopyTo(buffer);
        _position += n;
        return n;
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (pcg.Next() % 4 == 0)
        {
            await Task.Yield(); // a read that waits for the upstream: the reader resumes later, on another thread
        }

        return Read(buffer.Span);
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
