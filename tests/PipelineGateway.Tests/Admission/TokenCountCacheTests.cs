using System.Runtime.InteropServices;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Admission;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Admission;

/// <summary>
/// Token limits on agent-sized requests: a text's count is remembered by its content, so a conversation's system
/// prompt, tools and history are counted once, not on every step (where it is counted: MadeAsSubmittedTests).
/// </summary>
public sealed class TokenCountCacheTests
{
    private static Microsoft.ML.Tokenizers.Tokenizer O200k => TokenCounter.TokenizerFor("gpt-4o")!;

    private static Microsoft.ML.Tokenizers.Tokenizer Cl100k => TokenCounter.TokenizerFor("gpt-4")!;

    /// <summary>
    /// CsCheck, fixed seed: any text — empty, short, long, any script, repeated words — counts what the tokenizer counts,
    /// the first time and every time after, in a cache of eight sets of two where texts keep replacing each other in their sets
    /// (a replaced or colliding entry never answers for another text).
    /// </summary>
    [Fact]
    public void A_remembered_count_is_the_tokenizers_count_for_that_text()
    {
        var cache = new TokenCountCache(setBits: 3);
        var tokenizer = O200k;
        var word = Gen.OneOf(Gen.String[0, 12], Gen.Const("tokenization"), Gen.Const("日本語のテキスト"), Gen.Const("  \n\t"), Gen.Const("{\"a\":1}"));
        word.Array[0, 80].Select(words => string.Concat(words)).Array[1, 8].Sample(texts =>
        {
            foreach (var text in texts.Concat(texts))
            {
                cache.Count(tokenizer, text).Should().Be(tokenizer.CountTokens(text), "for \"{0}\"", text);
            }
        }, iter: 300, seed: "0N0XIzNsQ0O2");
    }

    [Fact]
    public void Two_texts_in_one_set_both_stay()
    {
        // Twenty pairs, each in a cache of one set: whichever entry the seeded hash would have each replace, both stay.
        for (var pair = 0; pair < 20; pair++)
        {
            var cache = new TokenCountCache(setBits: 0);
            for (var i = 0; i < 3; i++)
            {
                cache.Count(O200k, $"first text {pair}");
                cache.Count(O200k, $"second text {pair}");
            }

            cache.Counted.Should().Be(2);
        }
    }

    [Fact]
    public void A_text_seen_before_is_not_counted_again()
    {
        var cache = new TokenCountCache();
        var tokenizer = O200k;
        var system = "You are a coding agent. " + string.Join(' ', Enumerable.Repeat("Read the files before you change them.", 200));

        var first = cache.Count(tokenizer, system);
        cache.Counted.Should().Be(1);
        cache.Count(tokenizer, new string(system.AsSpan())).Should().Be(first, "the same text in another string");
        cache.Counted.Should().Be(1, "remembered by content, not by reference");

        cache.Count(tokenizer, system + " Now fix the test.").Should().Be(tokenizer.CountTokens(system + " Now fix the test."));
        cache.Counted.Should().Be(2, "another text is counted");
    }

    [Fact]
    public void A_tool_schema_counts_as_its_raw_text_and_is_remembered()
    {
        var cache = new TokenCountCache();
        var tokenizer = O200k;
        var schema = JsonElement.Parse("""{ "type": "object", "properties": { "path": { "type": "string", "description": "The file to read" } }, "required": ["path"] }""");

        cache.Count(tokenizer, schema).Should().Be(tokenizer.CountTokens(schema.GetRawText()));
        cache.Count(tokenizer, JsonElement.Parse(schema.GetRawText())).Should().Be(tokenizer.CountTokens(schema.GetRawText()));
        cache.Counted.Should().Be(1);

        // The schema's text as a message's text is another entry (UTF-16 text, not the value's UTF-8 bytes): same count.
        cache.Count(tokenizer, schema.GetRawText()).Should().Be(tokenizer.CountTokens(schema.GetRawText()));

        // A text whose UTF-16 bytes are a value's UTF-8 bytes (here four CJK characters) is not taken for that value.
        var value = JsonElement.Parse("""{"ab":1}"""u8);
        var lookalike = new string(MemoryMarshal.Cast<byte, char>(JsonMarshal.GetRawUtf8Value(value)));
        tokenizer.CountTokens(lookalike).Should().NotBe(tokenizer.CountTokens(value.GetRawText()), "the test tells the two apart");
        cache.Count(tokenizer, value).Should().Be(tokenizer.CountTokens(value.GetRawText()));
        cache.Count(tokenizer, lookalike).Should().Be(tokenizer.CountTokens(lookalike));
    }

    [Fact]
    public void Kept_arguments_count_as_their_text_and_are_remembered_by_their_JSON()
    {
        var cache = new TokenCountCache();
        var tokenizer = O200k;
        var text = "{\"path\":\"src/caf\u00e9.cs\",\"content\":\"line one\\nline two\"}";

        var first = KeptCalls.Of(text);
        cache.Count(tokenizer, first).Should().Be(tokenizer.CountTokens(text));
        cache.Counted.Should().Be(1);

        var again = KeptCalls.Of(text);
        cache.Count(tokenizer, again).Should().Be(tokenizer.CountTokens(text));
        cache.Counted.Should().Be(1, "the same JSON string again: remembered");
        again.ArgumentsMade.Should().BeFalse("a remembered count needs no string");

        cache.Count(tokenizer, new FunctionCall { Arguments = text }).Should().Be(tokenizer.CountTokens(text), "arguments not kept count as their string");
        cache.Count(tokenizer, new FunctionCall()).Should().Be(0, "no arguments: nothing");
    }

    [Fact]
    public void Another_encoding_counts_the_same_text_with_its_own_tokenizer()
    {
        var cache = new TokenCountCache();
        var text = string.Join(' ', Enumerable.Repeat("ThisIsARatherUnusualIdentifierName_with_numbers_12345 and émojis 🚀", 40));
        O200k.CountTokens(text).Should().NotBe(Cl100k.CountTokens(text), "the test tells the two encodings apart");

        cache.Count(O200k, text).Should().Be(O200k.CountTokens(text));
        cache.Count(Cl100k, text).Should().Be(Cl100k.CountTokens(text));
        cache.Count(O200k, text).Should().Be(O200k.CountTokens(text));
    }
}
