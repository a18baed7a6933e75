using System.Buffers;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Serialization;

namespace PipelineGateway.Tests.Server;

/// <summary>An SSE event's parts go into the response pipe next to each other, under one span when they fit a buffer.</summary>
public sealed class SseFrameTests
{
    [Fact]
    public void The_parts_arrive_in_order_and_an_event_that_fits_one_buffer_is_one_span_and_one_advance()
    {
        // CsCheck, fixed seed: five parts of 0 to 3,000 bytes each (an event from empty to well past Kestrel's 4 KB
        // buffer, and every length around it), written into a pipe that hands out spans larger than asked, sometimes
        // after other bytes already in it.
        var pcg = new PCG(21, 8);
        var sizes = 0;
        for (var i = 0; i < 2_000; i++)
        {
            var parts = Enumerable.Range(0, 5).Select(_ => RandomBytes(pcg, (int)(pcg.Next() % (pcg.Next() % 2 == 0 ? 1_100 : 3_000)))).ToArray();
            var pipe = new CountingWriter();
            var before = RandomBytes(pcg, (int)(pcg.Next() % 3));
            pipe.Write(before);
            pipe.Calls = 0;

            SseFrame.Write(pipe, parts[0], parts[1], parts[2], parts[3], parts[4]);

            var expected = before.Concat(parts.SelectMany(p => p)).ToArray();
            pipe.Written.WrittenSpan.SequenceEqual(expected).Should().BeTrue($"case {i}: the parts ({string.Join(", ", parts.Select(p => p.Length))} bytes) follow each other");
            var length = parts.Sum(p => p.Length);
            if (length <= 4096)
            {
                pipe.Calls.Should().Be(2, $"case {i}: {length} bytes fit one buffer: one GetSpan and one Advance");
                sizes++;
            }
        }

        sizes.Should().BeGreaterThan(300, "both kinds of event were generated");
    }

    private static byte[] RandomBytes(PCG pcg, int length)
    {
        var bytes = new byte[length];
        for (var i = 0; i < length; i++)
        {
            bytes[i] = (byte)pcg.Next();
        }

        return bytes;
    }

    /// <summary>An output pipe that counts the calls made to it and hands out up to 64 bytes more than asked.</summary>
    private sealed class CountingWriter : IBufferWriter<byte>
    {
        public ArrayBufferWriter<byte> Written { get; } = new();

        public int Calls { get; set; }

        public void Advance(int count)
        {
            Calls++;
            Written.Advance(count);
        }

        public Memory<byte> GetMemory(int sizeHint = 0)
        {
            Calls++;
            return Written.GetMemory(sizeHint + 64);
        }

        public Span<byte> GetSpan(int sizeHint = 0)
        {
            Calls++;
            return Written.GetSpan(sizeHint + 64);
        }
    }
}
