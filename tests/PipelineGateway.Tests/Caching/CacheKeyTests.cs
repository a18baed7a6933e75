using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Caching;

namespace PipelineGateway.Tests.Caching;

public sealed class CacheKeyTests
{
    private static ChatCompletionRequest Parse(string json) => JsonSerializer.Deserialize(json, GatewayJsonContext.Default.ChatCompletionRequest)!;

    private static CacheKey Key(string json, string group = "g") => CacheKey.Compute(group, Parse(json));

    private const string Base = """{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":10}""";

    public static TheoryData<string, string> SameAnswer => new()
    {
        { "field order", """{"max_tokens":10,"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"m"}""" },
        { "1 vs 1.0", """{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.0,"max_tokens":10}""" },
        { "stream flag", """{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":10,"stream":true,"stream_options":{"include_usage":true}}""" },
        { "user", """{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":10,"user":"alice"}""" },
        { "metadata", """{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":10,"metadata":{"run":"7"}}""" },
        { "max_completion_tokens", """{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_completion_tokens":10}""" },
        { "alias model name", """{"model":"alias-of-g","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":10}""" },
    };

    [Theory]
    [MemberData(nameof(SameAnswer))]
    public void Requests_with_the_same_canonical_form_share_a_key(string why, string json) =>
        Key(json).Should().Be(Key(Base), why);

    public static TheoryData<string, string> DifferentAnswer => new()
    {
        { "content", Base.Replace("\"hi\"", "\"hello\"", StringComparison.Ordinal) },
        { "role", Base.Replace("\"user\"", "\"system\"", StringComparison.Ordinal) },
        { "temperature", Base.Replace("\"temperature\":0", "\"temperature\":0.5", StringComparison.Ordinal) },
        { "max_tokens", Base.Replace("10", "11", StringComparison.Ordinal) },
        { "top_p", Base.Replace("}", ",\"top_p\":0.9}", StringComparison.Ordinal) },
        { "stop", Base.Replace("}", ",\"stop\":[\"END\"]}", StringComparison.Ordinal) },
        { "n", Base.Replace("}", ",\"n\":2}", StringComparison.Ordinal) },
        { "seed", Base.Replace("}", ",\"seed\":42}", StringComparison.Ordinal) },
        { "tools", Base.Replace("}", ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}", StringComparison.Ordinal) },
        { "tool_choice", Base.Replace("}", ",\"tool_choice\":\"required\"}", StringComparison.Ordinal) },
        { "response_format", Base.Replace("}", ",\"response_format\":{\"type\":\"json_object\"}}", StringComparison.Ordinal) },
        { "pass-through parameter", Base.Replace("}", ",\"logit_bias\":{\"50256\":-100}}", StringComparison.Ordinal) },
        { "name", Base.Replace("\"role\":\"user\"", "\"role\":\"user\",\"name\":\"bob\"", StringComparison.Ordinal) },
        { "content parts", Base.Replace("\"hi\"", "[{\"type\":\"text\",\"text\":\"hi\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x.test/a.png\"}}]", StringComparison.Ordinal) },
    };

    [Theory]
    [MemberData(nameof(DifferentAnswer))]
    public void Changing_anything_that_changes_the_answer_changes_the_key(string why, string json) =>
        Key(json).Should().NotBe(Key(Base), why);

    [Fact]
    public void The_model_group_and_the_namespace_are_part_of_the_key()
    {
        Key(Base, "g1").Should().NotBe(Key(Base, "g2"));
        var a = Parse(Base);
        a.Gateway = new GatewayRequestOptions { CacheNamespace = "tenant-a" };
        var b = Parse(Base);
        b.Gateway = new GatewayRequestOptions { CacheNamespace = "tenant-b" };
        CacheKey.Compute("g", a).Should().NotBe(CacheKey.Compute("g", b));
    }

    [Fact]
    public void Tool_arguments_that_are_not_JSON_do_not_share_a_key_with_the_JSON_string_of_the_same_text()
    {
        static string WithArguments(string arguments) =>
            "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
            + JsonSerializer.Serialize(arguments) + "}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"ok\"}]}";

        Key(WithArguments("x")).Should().NotBe(Key(WithArguments("\"x\"")), "the text x and the JSON string \"x\" are different arguments");
        Key(WithArguments("{\"a\": 1, \"b\": 2}")).Should().Be(Key(WithArguments("{\"b\":2,\"a\":1}")), "JSON arguments still compare as JSON");
        Key(WithArguments("x")).Should().Be(Key(WithArguments("x"))).And.NotBe(Key(WithArguments("y")));
    }

    [Fact]
    public void Generated_requests_keep_keys_stable_under_reordering_and_number_forms()
    {
        // Property-style: for random requests, shuffled object keys and re-written numbers never change the key,
        // and a one-character change of any message always does.
        var random = new Random(1234);
        for (var n = 0; n < 300; n++)
        {
            var messages = Enumerable.Range(0, random.Next(1, 5)).Select(i => (Role: i % 2 == 0 ? "user" : "assistant", Text: $"msg {random.Next()} {i}")).ToList();
            var temperature = random.Next(0, 3);
            var extra = random.Next(1, 100);

            string Json(bool shuffled, bool decimals, string? tweak = null)
            {
                var msgs = string.Join(",", messages.Select((m, i) => shuffled
                    ? $$"""{"content":"{{(i == 0 && tweak is not null ? tweak : m.Text)}}","role":"{{m.Role}}"}"""
                    : $$"""{"role":"{{m.Role}}","content":"{{(i == 0 && tweak is not null ? tweak : m.Text)}}"}"""));
                var t = decimals ? $"{temperature}.0" : $"{temperature}";
                var custom = decimals ? $$"""{"b":{{extra}}.00,"a":[1.0,2]}""" : $$"""{"a":[1,2.0],"b":{{extra}}}""";
                return shuffled
                    ? $$"""{"x_custom":{{custom}},"temperature":{{t}},"messages":[{{msgs}}],"model":"m"}"""
                    : $$"""{"model":"m","messages":[{{msgs}}],"temperature":{{t}},"x_custom":{{custom}}}""";
            }

            var key = Key(Json(false, false));
            Key(Json(true, true)).Should().Be(key);
            Key(Json(false, false, messages[0].Text + "!")).Should().NotBe(key);
        }
    }

    /// <summary>
    /// A key is stable across versions (a shared second level on Redis keeps answers under it): this request's key is the
    /// one the gateway has computed since the canonical form was last changed, whatever buffer it is written into.
    /// </summary>
    [Fact]
    public void A_key_stays_what_earlier_versions_computed()
    {
        const string Request = """
            {"model":"m","messages":[{"role":"system","content":"Réponds en français, s'il te plaît <b>&</b>"},{"role":"user","content":"hi"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"read","arguments":"{\"path\": \"a.txt\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"42"}],"temperature":0,"max_tokens":10,
            "tools":[{"type":"function","function":{"name":"read","description":"Reads a file","parameters":{"type":"object","required":["path"],"properties":{"path":{"type":"string"}}}}}],
            "response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object"}}}}
            """;

        Key(Request).ToString().Should().Be(GoldenKey);
        Key(Request).Should().Be(Key(Request), "the thread's reused buffer gives the same key again");
    }

    /// <summary>
    /// Tools as an agent sends them and as a library caller may build them — a null entry, strict, an extension member,
    /// two with one schema in other bytes — keep the key earlier versions computed (their canonical forms are made once
    /// per distinct definition since the thirty-ninth session; before, the whole list was rewritten on every key).
    /// </summary>
    [Fact]
    public void Tools_keep_the_key_earlier_versions_computed()
    {
        const string Request = """
            {"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"read","description":"Reads a file","strict":true,"parameters":{"type":"object","properties":{"b":{"type":"number","minimum":1.0},"a":{"type":"string"}}}}},
            null,
            {"type":"function","function":{"name":"write","parameters":{ "properties" : {"a":{"type":"string"}}, "type":"object" }},"cache_control":{"type":"ephemeral"}},
            {"type":"function","function":{"name":"list","description":null,"strict":false,"parameters":null}},
            {"type":"function","function":{"name":"read","description":"Reads a file","strict":true,"parameters":{"properties":{"a":{"type":"string"},"b":{"minimum":1,"type":"number"}},"type":"object"}}}]}
            """;

        for (var i = 0; i < 2; i++)
        {
            Key(Request).ToString().Should().Be(GoldenToolsKey, "a definition's form made once or kept gives the same key");
        }
    }

    private const string GoldenToolsKey = "6de330d5f3933001601844130f925d75"; // computed by fafcee8 too (the whole list rewritten per key)

    private const string GoldenKey = "2b9e52e0195f9c9fc18829fc20909bb8"; // computed by 1bc7224 too (a new buffer per key)
}
