using System.Text;
using System.Text.Unicode;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Batch;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Batch;

/// <summary>
/// A batch file's lines are read as bytes and checked one by one: a valid line is its UTF-8 text, one that is not says
/// where it goes wrong — never decoded with replacement characters — wherever the file's reads split it.
/// </summary>
public sealed class JsonlReaderTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Property_each_line_is_its_UTF8_text_or_where_it_stops_being_UTF8_however_the_reads_split_it()
    {
        // CsCheck, fixed seed: lines of ASCII, multi-byte characters and (a fifth of them) stray bytes no UTF-8 has or a
        // character cut short; LF or CRLF endings, a last line with or without one, a UTF-8 BOM or not; the file delivered
        // in reads of 1 to 23 bytes (or whole), through a tiny buffer that lines outgrow, or the default one.
        var pcg = new PCG(17, 20261205);
        var texts = Gen.String[0, 40].Select(v => new string(v.Where(c => c is not ('\r' or '\n') && !char.IsSurrogate(c)).ToArray()));
        var invalidLines = 0;
        for (var i = 0; i < 2_000; i++)
        {
            var file = new List<byte>();
            var bom = pcg.Next() % 6 == 0;
            if (bom)
            {
                file.AddRange([0xEF, 0xBB, 0xBF]);
            }

            var expected = new List<JsonlLine>();
            var count = (int)(pcg.Next() % 12);
            for (var l = 0; l < count; l++)
            {
                var line = Encoding.UTF8.GetBytes(texts.Generate(pcg, null, out _)).ToList();
                if (pcg.Next() % 5 == 0)
                {
                    byte[][] broken = [[0xFF], [0xC3], [0xE9, (byte)'x'], [0xED, 0xA0, 0x80], [0xF0, 0x9F, 0x98]];
                    line.InsertRange((int)(pcg.Next() % (uint)(line.Count + 1)), broken[pcg.Next() % (uint)broken.Length]);
                }

                var bytes = line.ToArray();
                expected.Add(Utf8.IsValid(bytes) ? new JsonlLine(Encoding.UTF8.GetString(bytes)) : new JsonlLine(null, FirstInvalid(bytes)));
                invalidLines += Utf8.IsValid(bytes) ? 0 : 1;
                file.AddRange(bytes);
                if (l < count - 1 || pcg.Next() % 2 == 0)
                {
                    file.AddRange(pcg.Next() % 2 == 0 ? "\n"u8.ToArray() : "\r\n"u8.ToArray());
                }
                else if (bytes.Length == 0)
                {
                    expected.RemoveAt(expected.Count - 1); // an empty last line without an ending is no line
                }
            }

            var body = new SlicedStream([.. file], pcg, maxRead: pcg.Next() % 4 == 0 ? int.MaxValue : 23);
            using var reader = pcg.Next() % 2 == 0 ? new JsonlReader(body, 1) : new JsonlReader(body);
            var actual = new List<JsonlLine>();
            while (await reader.ReadLineAsync(Ct) is { } read)
            {
                actual.Add(read);
            }

            actual.Should().Equal(expected, $"the file was {Convert.ToHexString([.. file])}");
        }

        invalidLines.Should().BeGreaterThan(500, "lines that are not UTF-8 were among them");
    }

    [Fact]
    public async Task A_UTF16_file_with_its_byte_order_mark_is_decoded_as_before()
    {
        var file = new MemoryStream([.. new byte[] { 0xFF, 0xFE }, .. Encoding.Unicode.GetBytes("{\"custom_id\":\"café\"}\r\nsecond")]);
        using var reader = new JsonlReader(file);

        (await reader.ReadLineAsync(Ct)).Should().Be(new JsonlLine("{\"custom_id\":\"café\"}"));
        (await reader.ReadLineAsync(Ct)).Should().Be(new JsonlLine("second"));
        (await reader.ReadLineAsync(Ct)).Should().BeNull();
    }

    /// <summary>Where a line stops being UTF-8: the end of its longest prefix that is (an independent reading of it).</summary>
    private static int FirstInvalid(byte[] bytes)
    {
        var valid = bytes.Length;
        while (!Utf8.IsValid(bytes.AsSpan(0, valid)))
        {
            valid--;
        }

        return valid;
    }
}
