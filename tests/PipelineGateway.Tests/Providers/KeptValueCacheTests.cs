using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Serialization;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// Kept JSON values (tool schemas, response formats) parsed once for the bytes that spell them: a value sent again is
/// the element parsed the first time, any other value is parsed, and a value the front door refuses (a duplicate key)
/// is refused every time.
/// </summary>
public sealed class KeptValueCacheTests
{
    private static string Schema(int i, string extra = "") =>
        $$"""{"type":"object","properties":{"path{{i}}":{"type":"string","description":"{{new string('x', 300)}}"}{{extra}}},"required":["path{{i}}"]}""";

    [Fact]
    public void A_value_sent_again_is_not_parsed_again()
    {
        var cache = new KeptValueCache();
        var bytes = Encoding.UTF8.GetBytes(Schema(1));

        var first = cache.Parse(bytes);
        var again = cache.Parse(bytes.ToArray());

        cache.Parsed.Should().Be(1);
        JsonMarshal.GetRawUtf8Value(again).ToArray().Should().Equal(bytes);
        JsonElement.DeepEquals(first, again).Should().BeTrue();
    }

    [Fact]
    public void A_value_with_a_duplicate_key_is_refused_every_time()
    {
        var cache = new KeptValueCache();
        var bytes = Encoding.UTF8.GetBytes(Schema(2, extra: $$""","path2":{"type":"integer","description":"{{new string('y', 10)}}"}"""));

        for (var i = 0; i < 2; i++)
        {
            var parse = () => cache.Parse(bytes);
            parse.Should().Throw<JsonException>();
        }
    }

    [Fact]
    public void Small_and_large_values_are_parsed_each_time()
    {
        var cache = new KeptValueCache();
        var small = """{"type":"object"}"""u8.ToArray();
        var large = Encoding.UTF8.GetBytes($$"""{"description":"{{new string('z', KeptValueCache.MaxLength)}}"}""");

        cache.Parse(small);
        cache.Parse(small);
        cache.Parse(large);
        cache.Parse(large);

        cache.Parsed.Should().Be(4);
    }

    [Fact]
    public void Two_values_in_one_set_both_stay()
    {
        // Twenty pairs, each in a cache of one set: whichever entry the seeded hash would have each replace, both stay.
        for (var pair = 0; pair < 20; pair++)
        {
            var cache = new KeptValueCache(setBits: 0);
            var (a, b) = (Encoding.UTF8.GetBytes(Schema(2 * pair)), Encoding.UTF8.GetBytes(Schema((2 * pair) + 1)));
            for (var i = 0; i < 3; i++)
            {
                cache.Parse(a);
                cache.Parse(b);
            }

            cache.Parsed.Should().Be(2);
        }
    }

    /// <summary>
    /// CsCheck, fixed seed: schemas drawn from a few dozen, in any order, through a cache of two sets of two where they keep
    /// replacing each other: every answer is the value its own bytes spell, never a slot's other value.
    /// </summary>
    [Fact]
    public void Every_value_is_the_one_its_bytes_spell_whatever_held_its_slot()
    {
        var cache = new KeptValueCache(setBits: 1);
        var schemas = Enumerable.Range(0, 40).Select(i => Encoding.UTF8.GetBytes(Schema(i))).ToArray();
        Gen.Int[0, schemas.Length - 1].Array[1, 30].Sample(picks =>
        {
            foreach (var i in picks)
            {
                JsonMarshal.GetRawUtf8Value(cache.Parse(schemas[i])).ToArray().Should().Equal(schemas[i]);
            }
        }, iter: 200, seed: "0N0XIzNsQ0O2");
        cache.Parsed.Should().BeLessThan(200 * 15, "values met again in their slot are not parsed again");
    }
}
