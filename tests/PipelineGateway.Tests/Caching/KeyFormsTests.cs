using System.Buffers;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Caching;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Caching;

/// <summary>
/// A tool definition's canonical form (what the response cache's key hashes for it) made once per distinct definition:
/// a definition met again is not made again, and whatever entry its set held, every answer is the canonical form of
/// the definition asked about — a definition differing in any part (type, name, description, strict, schema bytes) is
/// never given another's.
/// </summary>
public sealed class KeyFormsTests
{
    private static readonly Action<Utf8JsonWriter, ToolDefinition> Make =
        static (w, tool) => CacheKey.WriteCanonical(w, JsonSerializer.SerializeToElement(tool, GatewayJsonContext.Default.ToolDefinition));

    private static readonly string Large = $$"""{"type":"object","description":"{{new string('l', KeyForms.MaxLength)}}"}""";

    private static readonly JsonElement?[] Schemas =
    [
        null,
        JsonElement.Parse("null"),
        JsonElement.Parse("""{"type":"object"}"""),
        JsonElement.Parse("""{ "type" : "object" }"""),
        JsonElement.Parse("""{"type":"object","properties":{"b":{"type":"string"},"a":{"type":"integer"}}}"""),
        JsonElement.Parse("""{"properties":{"a":{"type":"integer"},"b":{"type":"string"}},"type":"object"}"""),
        JsonElement.Parse("""{"type":"object","properties":{"a":{"type":"number","minimum":1.0}}}"""),
        JsonElement.Parse("""{"type":"object","properties":{"a":{"type":"number","minimum":1}}}"""),
        JsonElement.Parse(Large),
    ];

    private static readonly string?[] Texts = [null, string.Empty, "read", "Read", "read\u00e9", "<b>&"];

    private static readonly Gen<ToolDefinition> Tools =
        Gen.Select(
            Gen.Int[0, 3], Gen.Int[0, 5], Gen.Int[0, 5], Gen.Int[0, 2], Gen.Int[0, Schemas.Length - 1], Gen.Int[0, 9],
            static (type, name, description, strict, schema, shape) => new ToolDefinition
            {
                Type = type switch { 0 => "function", 1 => "custom", 2 => "Function", _ => null! },
                Function = shape == 0 ? null : new FunctionDefinition
                {
                    Name = Texts[name] ?? "read",
                    Description = Texts[description],
                    Strict = strict switch { 0 => null, 1 => true, _ => false },
                    Parameters = Schemas[schema],
                },
                AdditionalProperties = shape == 1 ? new() { ["x"] = JsonElement.Parse("1") } : null,
            });

    private static byte[] Reference(ToolDefinition tool)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, CacheKey.WriterOptions))
        {
            Make(w, tool);
        }

        return buffer.WrittenSpan.ToArray();
    }

    private static ToolDefinition Read(string name, string schema) => new()
    {
        Function = new FunctionDefinition { Name = name, Description = "Reads a file", Parameters = JsonElement.Parse(schema) },
    };

    [Fact]
    public void A_definition_met_again_is_not_made_again()
    {
        var cache = new KeyForms();
        const string Schema = """{"type":"object","properties":{"path":{"type":"string"}}}""";

        var first = cache.Tool(Read("read", Schema), Make);
        var again = cache.Tool(Read("read", Schema), Make);

        cache.Made.Should().Be(1);
        again.Should().Equal(first).And.Equal(Reference(Read("read", Schema)));
    }

    [Fact]
    public void Two_definitions_in_one_set_both_stay()
    {
        // Twenty pairs, each in a cache of one set: whichever entry the seeded hash would have each replace, both stay.
        for (var pair = 0; pair < 20; pair++)
        {
            var cache = new KeyForms(setBits: 0);
            for (var i = 0; i < 3; i++)
            {
                cache.Tool(Read($"read{pair}", """{"type":"object"}"""), Make);
                cache.Tool(Read($"write{pair}", """{"type":"object"}"""), Make);
            }

            cache.Made.Should().Be(2);
        }
    }

    [Fact]
    public void Extension_members_and_large_definitions_are_made_each_time()
    {
        var cache = new KeyForms();
        var extended = Read("read", """{"type":"object"}""");
        extended.AdditionalProperties = new() { ["cache_control"] = JsonElement.Parse("""{"type":"ephemeral"}""") };

        var described = Read("read", """{"type":"object"}""");
        described.Function!.Description = new string('d', KeyForms.MaxLength); // a small schema, a large canonical form

        for (var i = 0; i < 2; i++)
        {
            cache.Tool(extended, Make).Should().Equal(Reference(extended));
            cache.Tool(Read("big", Large), Make).Should().Equal(Reference(Read("big", Large)));
            cache.Tool(described, Make).Should().Equal(Reference(described));
        }

        cache.Made.Should().Be(6);
    }

    /// <summary>
    /// CsCheck, fixed seed: a few definitions drawn from few types, names, descriptions, strict flags and schemas (some
    /// the same value in other bytes, some differing in one member), asked about in any order as new objects with the
    /// same contents, through one set of two entries where they keep replacing each other: each answer is the canonical
    /// form made from that definition itself.
    /// </summary>
    [Fact]
    public void Every_answer_is_the_definitions_own_canonical_form_whatever_its_set_held()
    {
        var cache = new KeyForms(setBits: 0);
        var asked = 0;
        Gen.Select(Tools.Array[1, 5], Gen.Int[0, 4].Array[1, 16]).Sample((pool, picks) =>
        {
            foreach (var pick in picks)
            {
                var tool = Copy(pool[pick % pool.Length]);
                cache.Tool(tool, Make).Should().Equal(Reference(tool));
                asked++;
            }
        }, iter: 2000, seed: "0N0XIzNsQ0O2");
        cache.Made.Should().BeLessThan(asked * 3 / 4, "definitions met again in their set are not made again");
    }

    private static readonly Func<Utf8JsonWriter, string, bool> MakeArguments = static (w, arguments) =>
    {
        try
        {
            using var doc = JsonDocument.Parse(arguments);
            CacheKey.WriteCanonical(w, doc.RootElement);
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    };

    private static readonly string[] ArgumentTexts =
    [
        """{"path":"a.txt"}""", """{ "path" : "a.txt" }""", """{"path":"b.txt"}""", """{"b":2,"a":1}""", """{"a":1,"b":2}""", """{"a":1.0,"b":2}""",
        "x", "\"x\"", "", "{", "[1,2]", "null",
    ];

    private static byte[] ReferenceArguments(string arguments)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using var w = new Utf8JsonWriter(buffer, CacheKey.WriterOptions);
        if (!MakeArguments(w, arguments))
        {
            return [];
        }

        w.Flush();
        return buffer.WrittenSpan.ToArray();
    }

    [Fact]
    public void Arguments_met_again_are_not_made_again_and_text_that_is_not_JSON_has_no_form()
    {
        var cache = new KeyForms();

        cache.Arguments(new string("""{"path":"a.txt"}"""), MakeArguments).Should().Equal(ReferenceArguments("""{"path":"a.txt"}"""));
        cache.Arguments(new string("""{"path":"a.txt"}"""), MakeArguments);
        cache.Arguments("not json", MakeArguments).Should().BeEmpty();
        cache.Arguments("not json", MakeArguments).Should().BeEmpty();

        cache.Made.Should().Be(2);
    }

    [Fact]
    public void Kept_arguments_are_compared_by_their_JSON_and_made_a_string_only_with_their_form()
    {
        var cache = new KeyForms();
        var text = """{"path":"caf\u00e9.txt","lines":[1,2]}""";
        var first = KeptCalls.Of(text);

        cache.Arguments(first, MakeArguments).Should().Equal(ReferenceArguments(text));
        first.ArgumentsMade.Should().BeTrue("a form not kept yet is made from the text");

        var again = KeptCalls.Of(text);
        cache.Arguments(again, MakeArguments).Should().Equal(ReferenceArguments(text));
        again.ArgumentsMade.Should().BeFalse("the same JSON string met again: its form, no string");
        cache.Made.Should().Be(1);

        cache.Arguments(KeptCalls.Of("not json"), MakeArguments).Should().BeEmpty("text that is not JSON has no form");
        var act = () => cache.Arguments(new FunctionCall { Arguments = "{}" }, MakeArguments);
        act.Should().Throw<ArgumentException>("arguments that are not kept are asked about as their string");
    }

    /// <summary>
    /// CsCheck, fixed seed: a few arguments texts — JSON in other spellings and orders, texts that are not JSON — asked
    /// about as new strings in any order through one set of two entries: each answer is the form made from that text itself.
    /// </summary>
    [Fact]
    public void Every_arguments_form_is_the_texts_own_whatever_its_set_held()
    {
        var cache = new KeyForms(setBits: 0);
        var asked = 0;
        Gen.Select(Gen.Int[0, ArgumentTexts.Length - 1].Array[1, 3], Gen.Int[0, 5].Array[1, 16]).Sample((pool, picks) =>
        {
            foreach (var pick in picks)
            {
                // Half asked as strings, half as kept JSON strings: the two kinds share the sets, never an entry.
                var text = new string(ArgumentTexts[pool[pick % pool.Length]].AsSpan());
                (pick < 3 ? cache.Arguments(text, MakeArguments) : cache.Arguments(KeptCalls.Of(text), MakeArguments)).Should().Equal(ReferenceArguments(text), text);
                asked++;
            }
        }, iter: 2000, seed: "0N0XIzNsQ0O2");
        cache.Made.Should().BeLessThan(asked * 3 / 4, "texts met again in their set are not made again");
    }

    private static ToolDefinition Copy(ToolDefinition tool) => new()
    {
        Type = tool.Type,
        Function = tool.Function is { } f
            ? new FunctionDefinition
            {
                Name = new string(f.Name.AsSpan()),
                Description = f.Description is null ? null : new string(f.Description.AsSpan()),
                Strict = f.Strict,
                Parameters = f.Parameters is { } p ? JsonElement.Parse(p.GetRawText()) : null,
            }
            : null,
        AdditionalProperties = tool.AdditionalProperties,
    };
}
