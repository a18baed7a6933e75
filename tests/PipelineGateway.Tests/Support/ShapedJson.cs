using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// JSON objects built member by member for the kept-bytes properties (<c>EventJsonTests</c>, <c>UpstreamJsonTests</c>):
/// each member the writer always writes present, left out, empty or given twice, the members shuffled, text escaped or
/// literal UTF-8 — and whether what was built is still in the writer's shape (<see cref="InShape"/>).
/// </summary>
internal sealed class ShapedJson(PCG pcg, bool lineBreaksOffShape)
{
    private static readonly JsonSerializerOptions Literal = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    private static readonly Gen<string> Text = Gen.String[0, 24].Where(v => v.All(c => !char.IsSurrogate(c)));

    /// <summary>Cases whose bytes were kept, and cases written by the gateway (<see cref="Judge"/>).</summary>
    public int Kept { get; private set; }

    public int Rewritten { get; private set; }

    /// <summary>
    /// Holds bytes a read kept (null: none) to what was sent and, in what a client reads from them
    /// (<paramref name="meaning"/>), to what the gateway's writer writes; counts the case.
    /// </summary>
    public void Judge(byte[]? kept, byte[] sent, byte[] written, Func<byte[], JsonNode> meaning)
    {
        if (kept is null)
        {
            Rewritten++;
            return;
        }

        Kept++;
        kept.Should().Equal(sent);
        JsonNode.DeepEquals(meaning(kept), meaning(written)).Should().BeTrue(
            $"the kept bytes must mean what the gateway writes:\n{Encoding.UTF8.GetString(kept)}\n{Encoding.UTF8.GetString(written)}");
    }

    /// <summary>Whether everything built since the last <see cref="Next"/> is in the writer's shape.</summary>
    public bool InShape { get; set; } = true;

    /// <summary>Starts the next case.</summary>
    public void Next() => InShape = true;

    public bool OneIn(uint n) => pcg.Next() % n == 0;

    /// <summary>A random number below <paramref name="n"/>.</summary>
    public int Below(uint n) => (int)(pcg.Next() % n);

    /// <summary>A JSON string of arbitrary text, escaped by the default encoder or literal UTF-8.</summary>
    public string Str() => JsonSerializer.Serialize(Text.Generate(pcg, null, out _), OneIn(2) ? Literal : JsonSerializerOptions.Default);

    /// <summary>A member the writer always writes: present (its good value), left out, empty, or given twice.</summary>
    public void Always(List<string> members, string name, string good, string? empty = null)
    {
        switch (pcg.Next() % 40)
        {
            case 0: InShape = false; return;
            case 1 when empty is not null: InShape = false; members.Add($"\"{name}\":{empty}"); return;
            case 2: InShape = false; members.Add($"\"{name}\":{good}"); break;
        }

        members.Add($"\"{name}\":{good}");
    }

    /// <summary>
    /// The members every chat answer and chunk has, each through <see cref="Always"/>: <c>id</c>, <c>object</c>
    /// (<paramref name="objectName"/>), <c>created</c>, <c>model</c> (arbitrary text) and up to two <paramref name="choice"/>s.
    /// </summary>
    public List<string> Head(string objectName, Func<string> choice)
    {
        var top = new List<string>();
        Always(top, "id", "\"chatcmpl-AbC\"", "\"\"");
        Always(top, "object", $"\"{objectName}\"", "\"\"");
        Always(top, "created", "1700000000", "0");
        Always(top, "model", Str() is var model && model != "\"\"" ? model : "\"m\"", "\"\"");
        Always(top, "choices", "[" + string.Join(",", Enumerable.Range(0, Below(3)).Select(_ => choice())) + "]", "null");
        return top;
    }

    /// <summary>The members in any order, with or without spaces and now and then a line break between them.</summary>
    public string Object(List<string> members)
    {
        for (var k = members.Count - 1; k > 0; k--)
        {
            var j = Below((uint)(k + 1));
            (members[k], members[j]) = (members[j], members[k]);
        }

        var between = new StringBuilder();
        for (var k = 0; k < members.Count; k++)
        {
            if (k > 0)
            {
                var lineBreak = OneIn(40);
                InShape &= !(lineBreak && lineBreaksOffShape);
                between.Append(lineBreak ? ",\n  " : OneIn(3) ? ", " : ",");
            }

            between.Append(members[k]);
        }

        return "{" + between + "}";
    }
}
