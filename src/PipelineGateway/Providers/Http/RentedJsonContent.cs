using System.Buffers;
using System.Net;

namespace PipelineGateway.Providers.Http;

/// <summary>
/// A JSON request body in a buffer rented from the shared pool, sent with its Content-Length like a
/// <see cref="ByteArrayContent"/>: the upstream body of a chat request, written in the thread's reused buffer and copied
/// here once. Why not a new array per attempt: a coding agent's step is a ~55 KB body, an allocation (zeroed by the GC)
/// and a copy per attempt (docs/benchmarks.md, "The upstream body in a rented buffer").
/// <para>
/// Ownership: the buffer goes back to the pool when the content is disposed (with its request message) and no send is
/// reading it — an HTTP/2 upstream may answer before the body is all sent, and the send may still be writing when the
/// attempt ends. A send that starts after disposal throws <see cref="ObjectDisposedException"/>, as for any disposed
/// content; sends before it (the handler's retry on a new connection, say) read the same bytes, as often as they like.
/// </para>
/// </summary>
internal sealed class RentedJsonContent : HttpContent
{
    /// <summary>
    /// Larger bodies (a prompt with inline images, say) get an array of their own, left to the GC: the shared pool
    /// would keep a buffer that size for the process.
    /// </summary>
    internal const int MaxRentedBytes = 1024 * 1024;

    /// <summary>The high bit of <see cref="_state"/>: disposed; the rest counts the sends reading the buffer.</summary>
    private const int Disposed = int.MinValue;

    private readonly int _length;
    private readonly bool _pooled;
    private byte[]? _rented;
    private int _state;

    /// <summary>A copy of <paramref name="json"/>, typed <c>application/json; charset=utf-8</c>.</summary>
    public RentedJsonContent(ReadOnlySpan<byte> json)
    {
        _pooled = json.Length <= MaxRentedBytes;
        _rented = _pooled ? ArrayPool<byte>.Shared.Rent(json.Length) : GC.AllocateUninitializedArray<byte>(json.Length);
        json.CopyTo(_rented);
        _length = json.Length;
        Headers.TryAddWithoutValidation("Content-Type", "application/json; charset=utf-8");
    }

    /// <summary>The body's bytes (until disposed).</summary>
    internal ReadOnlySpan<byte> Json => (Volatile.Read(ref _rented) ?? throw new ObjectDisposedException(nameof(RentedJsonContent))).AsSpan(0, _length);

    /// <summary>Whether the buffer went back to the pool (tests).</summary>
    internal bool Returned => Volatile.Read(ref _rented) is null;

    protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) =>
        SerializeToStreamAsync(stream, context, CancellationToken.None);

    protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
    {
        var bytes = Enter();
        try
        {
            await stream.WriteAsync(bytes.AsMemory(0, _length), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Exit();
        }
    }

    protected override void SerializeToStream(Stream stream, TransportContext? context, CancellationToken cancellationToken)
    {
        var bytes = Enter();
        try
        {
            stream.Write(bytes, 0, _length);
        }
        finally
        {
            Exit();
        }
    }

    protected override bool TryComputeLength(out long length)
    {
        length = _length;
        return true;
    }

    protected override void Dispose(bool disposing)
    {
        // The first disposal with no send reading gives the buffer back; with sends reading, the last of them does.
        if (disposing && Interlocked.Or(ref _state, Disposed) == 0)
        {
            GiveBack();
        }

        base.Dispose(disposing);
    }

    /// <summary>A send begins: the buffer, held until <see cref="Exit"/>.</summary>
    private byte[] Enter()
    {
        while (true)
        {
            var state = Volatile.Read(ref _state);
            ObjectDisposedException.ThrowIf((state & Disposed) != 0, this);
            if (Interlocked.CompareExchange(ref _state, state + 1, state) == state)
            {
                return _rented!;
            }
        }
    }

    /// <summary>A send ended: the last one after disposal gives the buffer back.</summary>
    private void Exit()
    {
        if (Interlocked.Decrement(ref _state) == Disposed)
        {
            GiveBack();
        }
    }

    private void GiveBack()
    {
        if (Interlocked.Exchange(ref _rented, null) is { } bytes && _pooled)
        {
            ArrayPool<byte>.Shared.Return(bytes);
        }
    }
}
