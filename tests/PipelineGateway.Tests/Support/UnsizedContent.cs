using System.Net;

namespace PipelineGateway.Tests.Support;

/// <summary>Bytes sent without a Content-Length (chunked): the server learns the body's size only as it reads it.</summary>
public sealed class UnsizedContent(byte[] bytes) : HttpContent
{
    protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) => stream.WriteAsync(bytes).AsTask();

    protected override bool TryComputeLength(out long length)
    {
        length = 0;
        return false;
    }
}
