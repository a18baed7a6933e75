using System.Buffers;

namespace PipelineGateway.Providers.Http;

/// <summary>A whole response body in a buffer rented from <see cref="ArrayPool{T}.Shared"/>; dispose to give it back.</summary>
internal readonly struct PooledBody(byte[] buffer, int length) : IDisposable
{
    public ReadOnlySpan<byte> Span => buffer.AsSpan(0, length);

    public void Dispose() => ArrayPool<byte>.Shared.Return(buffer);
}

/// <summary>Reads a whole (non-streamed) upstream answer into a pooled buffer.</summary>
internal static class ResponseBody
{
    private const int DefaultSize = 4096;
    private const int MaxPresize = 1024 * 1024;

    public static async ValueTask<PooledBody> ReadAsync(HttpContent content, CancellationToken cancellationToken)
    {
        // One byte more than the announced length, so the read that finds the end needs no bigger buffer.
        var announced = content.Headers.ContentLength;
        var buffer = ArrayPool<byte>.Shared.Rent(announced is > 0 and < MaxPresize ? (int)announced + 1 : DefaultSize);
        var read = 0;
        try
        {
            var stream = await content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                int n;
                while ((n = await stream.ReadAsync(buffer.AsMemory(read), cancellationToken).ConfigureAwait(false)) > 0)
                {
                    read += n;
                    if (read == buffer.Length)
                    {
                        var bigger = ArrayPool<byte>.Shared.Rent(buffer.Length * 2);
                        buffer.AsSpan(0, read).CopyTo(bigger);
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = bigger;
                    }
                }
            }
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(buffer);
            throw;
        }

        return new PooledBody(buffer, read);
    }
}
