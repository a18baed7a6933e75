using System.Buffers;
using System.Diagnostics.CodeAnalysis;

namespace PipelineGateway.Serialization;

/// <summary>
/// An upstream's JSON exactly as received — a stream event's (<see cref="ChatCompletionChunk.EventJson"/>) or a whole
/// answer's (<see cref="ChatCompletionResponse.UpstreamJson"/>) — kept so the endpoint can write those bytes instead of
/// writing the object again (issue 21: re-serializing every answer is work a byte-copying proxy does not do).
/// <para>
/// The bytes are in a buffer rented from <see cref="ArrayPool{T}.Shared"/> (a copy per event was 30% of what a streamed
/// event allocated). Ownership is strict: the holder owns the buffer until <see cref="Take"/> hands it to the one
/// writer, which returns it after copying it out; a buffer dropped (<see cref="Drop"/>) or never taken (a request cut
/// short, a hedge that lost) is left to the GC, never returned, since whoever drops it cannot know it is its last reader.
/// </para>
/// </summary>
internal struct KeptJson
{
    /// <summary>
    /// The longest whole answer kept (1 MiB): a longer one is written from the object, as before, so the shared pool
    /// is never left holding buffers of many MiB after a few long answers (it keeps what is returned to it, per core).
    /// </summary>
    public const int MaxLength = 1 << 20;

    private byte[]? _buffer;
    private int _length;

    /// <summary>True while the bytes are held.</summary>
    public readonly bool IsHeld => _buffer is not null;

    /// <summary>The bytes (empty when none are held).</summary>
    public readonly ReadOnlySpan<byte> Span => _buffer is null ? default : _buffer.AsSpan(0, _length);

    /// <summary>Keeps a copy of <paramref name="json"/> in a rented buffer.</summary>
    public void Keep(ReadOnlySpan<byte> json)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(json.Length);
        json.CopyTo(buffer);
        _buffer = buffer;
        _length = json.Length;
    }

    /// <summary>Lets go of the bytes (left to the GC: see the type's remarks).</summary>
    public void Drop() => _buffer = null;

    /// <summary>
    /// Hands the buffer to the caller, which writes <paramref name="length"/> bytes of it and then returns it to
    /// <see cref="ArrayPool{T}.Shared"/>; the holder lets go of it first, so nothing can read it after its return.
    /// </summary>
    public bool Take([NotNullWhen(true)] out byte[]? buffer, out int length)
    {
        buffer = _buffer;
        length = _length;
        _buffer = null;
        return buffer is not null;
    }
}
