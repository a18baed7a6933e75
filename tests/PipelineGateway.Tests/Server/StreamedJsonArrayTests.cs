using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Server.Batches;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <see cref="StreamedJsonArray"/> (a message batch's requests read one at a time) against <see cref="JsonDocument"/>
/// reading the body whole (CsCheck, fixed seed): for bodies with the array among other members, whole or mutated (cut,
/// bytes inserted, trailing data, the member twice), delivered in reads of random sizes with the buffer outgrown, the
/// streamed reader gives exactly the document's elements — or, when the document is not a valid body, refuses it.
/// </summary>
public sealed class StreamedJsonArrayTests
{
    private static readonly Gen<JsonNode?> Scalar = Gen.Frequency(
        (1, Gen.Const<JsonNode?>((JsonNode?)null)),
        (1, Gen.Bool.Select(b => (JsonNode?)JsonValue.Create(b))),
        (2, Gen.Int.Select(i => (JsonNode?)JsonValue.Create(i))),
        (3, Gen.String[0, 40].Select(s => (JsonNode?)JsonValue.Create(s))),
        (1, Gen.Int[0, 200_000].Select(n => (JsonNode?)JsonValue.Create(new string('é', n / 8)))));

    private static readonly Gen<JsonNode?> Value = Gen.Frequency(
        (4, Scalar),
        (1, Scalar.Array[0, 5].Select(a => (JsonNode?)new JsonArray(a))),
        (2, Gen.Select(Gen.String[0, 8], Scalar).Array[0, 4].Select(props => (JsonNode?)Object(props))));

    private static JsonObject Object((string Name, JsonNode? Value)[] props)
    {
        var o = new JsonObject();
        foreach (var (name, value) in props)
        {
            o[name] = value;
        }

        return o;
    }

    /// <summary>A body: other members around <c>requests</c> (or none), its elements any JSON, then perhaps a mutation.</summary>
    private static readonly Gen<(byte[] Bytes, string How)> Body =
        Gen.Select(Value.Array[0, 12], Gen.Select(Gen.String[1, 6], Value).Array[0, 3], Gen.Int[0, 3], Gen.Int[0, 7], Gen.Int[0, int.MaxValue])
            .Select(t =>
            {
                var (elements, others, at, mutation, where) = t;
                var members = others.Select(o => $"{JsonSerializer.Serialize(o.Item1 == "requests" ? "other" : o.Item1)}:{o.Item2?.ToJsonString() ?? "null"}").ToList();
                members.Insert(Math.Min(at, members.Count), $"\"requests\":[{string.Join(",", elements.Select(e => e?.ToJsonString() ?? "null"))}]");
                var text = Encoding.UTF8.GetBytes("{" + string.Join(",", members) + "}");
                return mutation switch
                {
                    0 => (text[..(where % (text.Length + 1))], "cut"),
                    1 => (Insert(text, where % (text.Length + 1), [(byte)(where % 256)]), "a byte inserted"),
                    2 => ([.. text, .. " {}"u8], "trailing data"),
                    3 => (Insert(text, 1, "\"requests\":[],"u8.ToArray()), "the member twice"),
                    _ => (text, "whole"),
                };
            });

    private static byte[] Insert(byte[] b, int at, byte[] what) => [.. b[..at], .. what, .. b[at..]];

    [Fact]
    public async Task Gives_the_documents_elements_whatever_the_reads_or_refuses_what_the_document_refuses()
    {
        var pcg = new PCG(1, 20261206);
        var failures = new List<string>();
        var agreed = 0;
        for (var i = 0; i < 1_500; i++)
        {
            var (bytes, how) = Body.Generate(pcg, null, out _);
            var expected = Whole(bytes);
            List<string>? streamed;
            try
            {
                streamed = [];
                var reader = new StreamedJsonArray(new SlicedStream(bytes, pcg, 1 + (int)(pcg.Next() % 70_000)), "requests");
                await foreach (var element in reader.ElementsAsync(TestContext.Current.CancellationToken))
                {
                    streamed.Add(Encoding.UTF8.GetString(element.Span));
                }

                if (!reader.Found)
                {
                    streamed = null;
                }
            }
            catch (Exception ex) when (ex is JsonException or InvalidRequestException)
            {
                streamed = null;
            }

            if (expected is null != streamed is null || (expected is not null && !expected.SequenceEqual(streamed!)))
            {
                failures.Add($"{how}: {(expected is null ? "refused" : expected.Count + " elements")} whole, {(streamed is null ? "refused" : streamed.Count + " elements")} streamed: {Encoding.UTF8.GetString(bytes[..Math.Min(bytes.Length, 300)])}");
            }
            else
            {
                agreed++;
            }
        }

        failures.Should().BeEmpty(string.Join("\n", failures.Take(5)));
        agreed.Should().Be(1_500);
    }

    /// <summary>The document read whole: <c>requests</c>' elements' raw text, or null when it is not a body with one such array (given once).</summary>
    private static List<string>? Whole(byte[] bytes)
    {
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
        {
            return null; // a body is UTF-8 (the whole-body reader checks it first)
        }

        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 64 });
            var root = doc.RootElement;
            return root.ValueKind == JsonValueKind.Object && root.EnumerateObject().Count(static m => m.Name == "requests") == 1
                && root.GetProperty("requests") is { ValueKind: JsonValueKind.Array } requests
                ? [.. requests.EnumerateArray().Select(static e => e.GetRawText())]
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
