using System.Buffers;
using System.IO.Compression;

namespace PipelineGateway.Providers.Http;

/// <summary>A whole response body in a buffer rented from <see cref="ArrayPool{T}.Shared"/>; dispose to give it back.</summary>
internal readonly struct PooledBody(byte[] buffer, int length) : IDisposable
{
    public ReadOnlySpan<byte> Span => buffer.AsSpan(0, length);

    public ReadOnlyMemory<byte> Memory => buffer.AsMemory(0, length);

    /// <summary>The buffer goes back to the pool when disposed; else it is this body's own (and may be kept past it).</summary>
    public bool Pooled => buffer.Length <= MaxPooled;

    /// <summary>The body as a read-only stream over the same bytes (valid until disposed).</summary>
    public MemoryStream AsStream() => new(buffer, 0, length, writable: false);

    /// <summary>
    /// Bodies up to this size are read into buffers rented from the shared pool; a bigger one (an embeddings answer of
    /// tens of MB) into an array of its own that the GC frees: the pool would keep such arrays per core long after a
    /// burst (measured: 16 answers of 39 MB at once held ~1.3 GB).
    /// </summary>
    public const int MaxPooled = 1024 * 1024;

    public void Dispose()
    {
        if (Pooled)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}

/// <summary>
/// Upstream bodies: compression asked for and undone here (gzip, deflate, Brotli), and a whole (non-streamed) answer
/// read into a pooled buffer.
/// </summary>
/// <remarks>
/// Decompression is done here rather than by <see cref="SocketsHttpHandler.AutomaticDecompression"/> because that
/// handler re-reads the request's Accept-Encoding header on every call (an enumerator and an array per request, 4.5% of
/// the gateway's allocations at saturation): here it is one header added and one header looked up without parsing.
/// </remarks>
internal static class ResponseBody
{
    private const int DefaultSize = 4096;
    private const string AcceptEncoding = "gzip, deflate, br";

    /// <summary>Asks for a compressed answer, unless the provider's configured headers already say what they accept.</summary>
    public static void AcceptCompressed(HttpRequestMessage message)
    {
        if (!message.Headers.NonValidated.Contains("Accept-Encoding"))
        {
            message.Headers.TryAddWithoutValidation("Accept-Encoding", AcceptEncoding);
        }
    }

    /// <summary>The body as sent, decompressed when its Content-Encoding says so.</summary>
    /// <exception cref="InvalidDataException">An encoding the gateway did not ask for (or a stack of several).</exception>
    public static async ValueTask<Stream> OpenAsync(HttpContent content, CancellationToken cancellationToken)
    {
        var stream = await content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        if (!content.Headers.NonValidated.TryGetValues("Content-Encoding", out var values))
        {
            return stream;
        }

        if (values.Count == 1)
        {
            var encoding = values.ToString().Trim();
            if (encoding.Length == 0 || encoding.Equals("identity", StringComparison.OrdinalIgnoreCase))
            {
                return stream;
            }

            if (encoding.Equals("gzip", StringComparison.OrdinalIgnoreCase) || encoding.Equals("x-gzip", StringComparison.OrdinalIgnoreCase))
            {
                return new GZipStream(stream, CompressionMode.Decompress);
            }

            if (encoding.Equals("deflate", StringComparison.OrdinalIgnoreCase))
            {
                return new ZLibStream(stream, CompressionMode.Decompress);
            }

            if (encoding.Equals("br", StringComparison.OrdinalIgnoreCase))
            {
                return new BrotliStream(stream, CompressionMode.Decompress);
            }
        }

        await stream.DisposeAsync().ConfigureAwait(false);
        throw new InvalidDataException($"The answer is encoded as '{SecretRedactor.RedactAndTrim(values.ToString(), 60)}', which the gateway did not ask for ({AcceptEncoding}).");
    }

    /// <summary>The whole answer, decompressed; at most <paramref name="max"/> bytes of it (past that, the read stops).</summary>
    /// <exception cref="InvalidDataException">The answer is longer than <paramref name="max"/>: a runaway upstream or a
    /// decompression bomb, never buffered past the bound.</exception>
    public static async ValueTask<PooledBody> ReadAsync(HttpContent content, int max, CancellationToken cancellationToken)
    {
        // One byte more than the announced length, so the read that finds the end needs no bigger buffer (for a compressed
        // answer, the announced length is the compressed one: the buffer grows as it must). A big answer announced (an
        // embeddings list of tens of MB) is read into one array of its own, the size it says.
        var announced = content.Headers.ContentLength;
        if (announced > max)
        {
            throw TooLong(max);
        }

        var buffer = announced >= PooledBody.MaxPooled ? GC.AllocateUninitializedArray<byte>((int)announced + 1)
            : ArrayPool<byte>.Shared.Rent(announced > 0 ? (int)announced + 1 : DefaultSize);
        var read = 0;
        var before = 0L; // bytes in the full segments
        List<byte[]>? full = null; // a big answer not announced: pooled segments of MaxPooled, joined once at the end
        try
        {
            var stream = await OpenAsync(content, cancellationToken).ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                int n;
                while ((n = await stream.ReadAsync(buffer.AsMemory(read), cancellationToken).ConfigureAwait(false)) > 0)
                {
                    read += n;
                    if (before + read > max)
                    {
                        throw TooLong(max);
                    }

                    if (read < buffer.Length)
                    {
                        continue;
                    }

                    if (buffer.Length < PooledBody.MaxPooled)
                    {
                        var bigger = ArrayPool<byte>.Shared.Rent(Math.Min(buffer.Length * 2, PooledBody.MaxPooled));
                        buffer.AsSpan(0, read).CopyTo(bigger);
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = bigger;
                    }
                    else
                    {
                        // Growing by doubling would leave several arrays of tens of MB to the GC (or to the pool, per
                        // core, long after): segments are rented and given back, and one array of the whole is made.
                        (full ??= []).Add(buffer);
                        before += read;
                        buffer = ArrayPool<byte>.Shared.Rent(PooledBody.MaxPooled);
                        read = 0;
                    }
                }
            }

            if (full is not null)
            {
                var whole = GC.AllocateUninitializedArray<byte>((int)(before + read));
                var at = 0;
                foreach (var segment in full)
                {
                    segment.CopyTo(whole, at);
                    at += segment.Length;
                }

                buffer.AsSpan(0, read).CopyTo(whole.AsSpan(at));
                Release(full, buffer);
                full = null;
                buffer = whole;
                read = whole.Length;
            }
        }
        catch
        {
            Release(full, buffer);
            throw;
        }

        return new PooledBody(buffer, read);
    }

    private static void Release(List<byte[]>? segments, byte[] buffer)
    {
        foreach (var segment in segments ?? [])
        {
            new PooledBody(segment, 0).Dispose();
        }

        new PooledBody(buffer, 0).Dispose();
    }

    private static InvalidDataException TooLong(int max) =>
        new($"the answer is longer than {max:N0} bytes (the provider's MaxAnswerBytes); it was not read further");
}
