using System.Buffers;
using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Serialization;

namespace PipelineGateway.Tests.Providers;

/// <summary>The thread's reused buffer and writer (the upstream body, the cache key): kept, emptied for each body, let go when a body made it large.</summary>
public sealed class ReusedWriterTests
{
    [Fact]
    public void A_buffer_is_reused_empty_and_let_go_once_a_body_made_it_large()
    {
        ArrayBufferWriter<byte>? buffer = null;
        Utf8JsonWriter? writer = null;

        var w = ReusedWriter.Take(ref buffer, ref writer, default);
        w.WriteStringValue("first");
        w.Flush();
        ReusedWriter.Release(ref buffer, ref writer);
        var kept = buffer;

        var again = ReusedWriter.Take(ref buffer, ref writer, default);
        again.Should().BeSameAs(w);
        buffer.Should().BeSameAs(kept);
        buffer!.WrittenCount.Should().Be(0, "each body starts empty");

        again.WriteStringValue(new string('x', 300 * 1024));
        again.Flush();
        ReusedWriter.Release(ref buffer, ref writer);

        buffer.Should().BeNull("a buffer grown past 256 KB is not kept");
        writer.Should().BeNull();
    }
}
