using System.Net.ServerSentEvents;
using System.Text;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Providers.Http;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The gateway's own SSE reader (the OpenAI adapter's streams) reads exactly the events .NET's
/// <see cref="SseParser"/> reads, whatever the bytes and wherever the reads split them.
/// </summary>
public sealed class SseEventReaderTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Property_it_reads_the_events_SseParser_reads_from_any_stream_split_anywhere()
    {
        // CsCheck, fixed seed: a BOM or not; lines of every kind (data with and without a colon or the space after it,
        // event, id, retry, comments, unknown fields, empty lines), values with colons, spaces and multi-byte UTF-8;
        // every line ending (LF, CR, CRLF); sometimes a last line left unfinished — delivered in reads of 1 to 17 bytes,
        // or in reads as large as the reader asks for; read with MoveNextAsync, or with the split calls the streamed
        // answers' loop makes (TryMoveNext, ReadAsync, Filled).
        var pcg = new PCG(25, 13);
        var values = Gen.String[0, 12].Select(v => new string(v.Where(c => c is not ('\r' or '\n') && !char.IsSurrogate(c)).ToArray()));
        var events = 0;
        for (var i = 0; i < 3_000; i++)
        {
            var text = new StringBuilder();
            if (pcg.Next() % 8 == 0)
            {
                text.Append('\uFEFF');
            }

            var lines = (int)(pcg.Next() % 30);
            for (var l = 0; l < lines; l++)
            {
                var value = values.Generate(pcg, null, out _);
                text.Append((pcg.Next() % 12) switch
                {
                    0 or 1 or 2 => "data: " + value,
                    3 => "data:" + value,
                    4 => "data",
                    5 => "event: " + value,
                    6 => "id: " + value,
                    7 => "retry: 1" + value.Length,
                    8 => ": " + value,
                    9 => value.Replace(":", string.Empty, StringComparison.Ordinal) + ": " + value,
                    _ => string.Empty,
                });
                text.Append((pcg.Next() % 3) switch { 0 => "\n", 1 => "\r", _ => "\r\n" });
            }

            if (pcg.Next() % 4 == 0)
            {
                text.Append("data: unfinished");
            }

            var bytes = Encoding.UTF8.GetBytes(text.ToString());
            var expected = SseParser.Create(new MemoryStream(bytes), static (_, data) => data.ToArray()).Enumerate().Select(e => e.Data).ToList();

            var actual = new List<byte[]>();
            // Half the readers start with the smallest buffer the pool has (16 bytes), so lines outgrow it and an event's
            // data is joined while the buffer moves under it; the rest with the default.
            var body = new SlicedStream(bytes, pcg, maxRead: pcg.Next() % 3 == 0 ? int.MaxValue : 17);
            using var reader = pcg.Next() % 2 == 0 ? new SseEventReader(body, 1) : new SseEventReader(body);
            if (pcg.Next() % 2 == 0)
            {
                while (await reader.MoveNextAsync(Ct))
                {
                    actual.Add(reader.Data.ToArray());
                }
            }
            else
            {
                // The streamed answers' loop (HttpChatProvider.StreamAsync): the body's reads awaited by the caller.
                while (true)
                {
                    while (!reader.Ended && !reader.TryMoveNext())
                    {
                        reader.Filled(await reader.ReadAsync(Ct));
                    }

                    if (reader.Ended)
                    {
                        break;
                    }

                    actual.Add(reader.Data.ToArray());
                }
            }

            actual.Should().BeEquivalentTo(expected, o => o.WithStrictOrdering(), $"the stream was {Show(bytes)}");
            events += expected.Count;
        }

        events.Should().BeGreaterThan(3_000, "the streams held events");
    }

    [Fact]
    public async Task An_endless_line_ends_the_stream_with_an_error_instead_of_growing_the_buffer()
    {
        var endless = new byte[SseEventReader.MaxLineBytes + 1024];
        endless.AsSpan().Fill((byte)'x');
        "data: "u8.CopyTo(endless);
        using var reader = new SseEventReader(new MemoryStream(endless));

        var act = async () => await reader.MoveNextAsync(Ct);

        await act.Should().ThrowAsync<InvalidDataException>();
    }

    private static string Show(byte[] bytes) => Encoding.UTF8.GetString(bytes).Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
}
