using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A stream chunk keeps its upstream bytes (<see cref="ChatCompletionChunk.EventJson"/>, which the SSE endpoint writes
/// instead of the chunk) only when they say what the gateway's own writing of the chunk says, and always when the event
/// is in the gateway's shape.
/// </summary>
public sealed class EventJsonTests
{
    private static readonly JsonSerializerOptions Literal = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    [Fact]
    public void Property_kept_bytes_always_mean_what_the_gateway_would_write_and_every_event_in_its_shape_keeps_them()
    {
        // CsCheck, fixed seed: events built member by member — each member the writer always writes present, missing,
        // empty or given twice; usage, a gateway member, unknown members, line breaks between members; text arbitrary,
        // escaped or literal UTF-8 — in any order.
        var pcg = new PCG(24, 11);
        var text = Gen.String[0, 24].Where(v => v.All(c => !char.IsSurrogate(c)));
        int kept = 0, rewritten = 0, skims = 0;
        for (var i = 0; i < 20_000; i++)
        {
            var inShape = true;
            string Str() => JsonSerializer.Serialize(text.Generate(pcg, null, out _), pcg.Next() % 2 == 0 ? Literal : JsonSerializerOptions.Default);
            bool OneIn(uint n) => pcg.Next() % n == 0;

            // A member the writer always writes: present (its good value), left out, empty, or given twice.
            void Always(List<string> members, string name, string good, string? empty = null)
            {
                switch (pcg.Next() % 40)
                {
                    case 0: inShape = false; return;
                    case 1 when empty is not null: inShape = false; members.Add($"\"{name}\":{empty}"); return;
                    case 2: inShape = false; members.Add($"\"{name}\":{good}"); break;
                }

                members.Add($"\"{name}\":{good}");
            }

            string Object(List<string> members)
            {
                for (var k = members.Count - 1; k > 0; k--)
                {
                    var j = (int)(pcg.Next() % (uint)(k + 1));
                    (members[k], members[j]) = (members[j], members[k]);
                }

                var between = new StringBuilder();
                for (var k = 0; k < members.Count; k++)
                {
                    if (k > 0)
                    {
                        var lineBreak = OneIn(40);
                        inShape &= !lineBreak;
                        between.Append(lineBreak ? ",\n" : OneIn(3) ? ", " : ",");
                    }

                    between.Append(members[k]);
                }

                return "{" + between + "}";
            }

            string Choice()
            {
                var delta = new List<string>();
                if (!OneIn(3)) { delta.Add($"\"content\":{(OneIn(6) ? "null" : Str())}"); }
                if (OneIn(3)) { delta.Add("\"role\":\"assistant\""); }
                if (OneIn(8)) { delta.Add($"\"refusal\":{Str()}"); }
                if (OneIn(8)) { delta.Add($"\"reasoning_content\":{Str()}"); }
                if (OneIn(10)) { delta.Add("\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]"); }
                if (OneIn(12)) { inShape = false; delta.Add($"\"content\":{Str()}"); } // given twice, or once more than the others

                var choice = new List<string>();
                Always(choice, "index", "0");
                Always(choice, "delta", Object(delta));
                Always(choice, "finish_reason", OneIn(4) ? "\"stop\"" : "null");
                Always(choice, "logprobs", "null");
                if (OneIn(8)) { choice.Add("\"content_filter_results\":{}"); }
                return Object(choice);
            }

            var top = new List<string>();
            Always(top, "id", "\"chatcmpl-AbC\"", "\"\"");
            Always(top, "object", "\"chat.completion.chunk\"", "\"\"");
            Always(top, "created", "1700000000", "0");
            Always(top, "model", Str() is var model && model != "\"\"" ? model : "\"m\"", "\"\"");
            Always(top, "choices", "[" + string.Join(",", Enumerable.Range(0, (int)(pcg.Next() % 3)).Select(_ => Choice())) + "]", "null");
            if (OneIn(10)) { inShape = false; top.Add("\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}"); }
            else if (OneIn(4)) { top.Add("\"usage\":null"); }
            if (OneIn(20)) { inShape = false; top.Add("\"gateway\":{\"provider\":\"forged\"}"); }
            if (OneIn(4)) { top.Add($"\"service_tier\":{Str()}"); }
            if (OneIn(4)) { top.Add($"\"obfuscation\":{(OneIn(5) ? "{\"nested\":[1,null]}" : Str())}"); }
            if (OneIn(30)) { top.Add("\"error\":{\"message\":\"m\"}"); }
            if (OneIn(4)) { top.Add("\"system_fingerprint\":\"fp_1\""); }
            var bytes = Encoding.UTF8.GetBytes(Object(top));

            if (OneIn(25))
            {
                // Cut short: reading it with its choices skimmed fails as reading it in full does.
                var cut = bytes[..(int)(pcg.Next() % (uint)bytes.Length)];
                string? a = null, b = null;
                var full = Record.Exception(() => AnswerJson.ReadStreamChunk(cut, ref a, keepEventJson: true));
                var skimming = Record.Exception(() => AnswerJson.ReadStreamChunk(cut, ref b, keepEventJson: true, skimChoices: true));
                skimming?.Message.Should().Be(full?.Message, Encoding.UTF8.GetString(cut));
                (skimming is null).Should().Be(full is null);
                continue;
            }

            string? id = null;
            var chunk = AnswerJson.ReadStreamChunk(bytes, ref id, keepEventJson: true)!;
            string? other = null;
            var plain = AnswerJson.ReadStreamChunk(bytes, ref other)!;
            plain.HasEventJson.Should().BeFalse("only a reader asked to keep the bytes keeps them");
            var written = JsonSerializer.SerializeToUtf8Bytes(plain, GatewayJsonContext.Default.ChatCompletionChunk);
            string? third = null;
            var skimmed = AnswerJson.ReadStreamChunk(bytes, ref third, keepEventJson: true, skimChoices: true)!;
            skimmed.HasEventJson.Should().Be(chunk.HasEventJson, "a chunk keeps its bytes whether or not its choices are skimmed");
            third.Should().Be(id);
            if (skimmed.ChoicesUnread)
            {
                skims++;
                skimmed.HasEventJson.Should().BeTrue("a chunk's choices stay unread only in its bytes");
                (skimmed.HasNoChoices, skimmed.Finishes, skimmed.CarriesContent).Should().Be((plain.HasNoChoices, plain.Finishes, plain.CarriesContent),
                    $"what the skim learnt of the choices is what they say: {Encoding.UTF8.GetString(bytes)}");
                if (OneIn(2))
                {
                    // Asked for while the bytes are held: read from them.
                    JsonSerializer.Serialize(skimmed.Choices).Should().Be(JsonSerializer.Serialize(plain.Choices));
                    skimmed.ChoicesUnread.Should().BeFalse();
                }
            }

            skimmed.DropEventJson();
            JsonSerializer.SerializeToUtf8Bytes(skimmed, GatewayJsonContext.Default.ChatCompletionChunk).Should().Equal(written,
                $"a chunk read with its choices skimmed says what the full read says once it lets its bytes go: {Encoding.UTF8.GetString(bytes)}");
            if (inShape)
            {
                chunk.HasEventJson.Should().BeTrue($"the event is in the gateway's shape: {Encoding.UTF8.GetString(bytes)}");
            }

            var keptBytes = chunk.HasEventJson ? chunk.EventJson.ToArray() : null;
            chunk.DropEventJson();
            JsonSerializer.SerializeToUtf8Bytes(chunk, GatewayJsonContext.Default.ChatCompletionChunk).Should().Equal(written,
                $"a chunk read to keep its bytes says what it would have said without them once it lets them go: {Encoding.UTF8.GetString(bytes)}");
            if (keptBytes is not null)
            {
                kept++;
                keptBytes.Should().Equal(bytes);
                JsonNode.DeepEquals(Meaning(keptBytes), Meaning(written)).Should().BeTrue(
                    $"the kept bytes must mean what the gateway writes:\n{Encoding.UTF8.GetString(keptBytes)}\n{Encoding.UTF8.GetString(written)}");
            }
            else
            {
                rewritten++;
            }
        }

        (kept, rewritten).Should().Match<(int Kept, int Rewritten)>(c => c.Kept > 2_000 && c.Rewritten > 2_000, "both kinds of event were generated");
        skims.Should().BeGreaterThan(1_000, "events were read with their choices skimmed");
    }

    [Fact]
    public void The_bytes_go_to_one_writer_once_and_a_changed_chunk_has_none()
    {
        var json = "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}"u8.ToArray();
        string? id = null;
        var chunk = AnswerJson.ReadStreamChunk(json, ref id, keepEventJson: true)!;

        chunk.TakeEventJson(out var buffer, out var length).Should().BeTrue();
        buffer!.AsSpan(0, length).ToArray().Should().Equal(json);
        chunk.HasEventJson.Should().BeFalse("the writer that took the buffer returns it to the pool: the chunk let go of it");
        chunk.TakeEventJson(out _, out _).Should().BeFalse("a second writer gets nothing, never a buffer already returned");
        chunk.EventJson.IsEmpty.Should().BeTrue();

        var changed = AnswerJson.ReadStreamChunk(json, ref id, keepEventJson: true)!;
        changed.DropEventJson();
        changed.TakeEventJson(out _, out _).Should().BeFalse();
    }

    /// <summary>
    /// What a client reads from an event: the members the gateway's writer leaves out when null (usage, a delta's
    /// members), and those it does not model inside a choice or a delta (which it drops and the upstream's bytes keep), aside.
    /// </summary>
    private static JsonNode Meaning(byte[] json)
    {
        var node = JsonNode.Parse(json)!.AsObject();
        foreach (var name in new[] { "usage", "system_fingerprint" })
        {
            if (node.TryGetPropertyValue(name, out var v) && v is null)
            {
                node.Remove(name);
            }
        }

        foreach (var choice in node["choices"]?.AsArray() ?? [])
        {
            var c = choice!.AsObject();
            foreach (var name in c.Select(p => p.Key).Except(["index", "delta", "finish_reason", "logprobs"]).ToList())
            {
                c.Remove(name);
            }

            var delta = c["delta"]!.AsObject();
            foreach (var name in delta.Where(p => p.Value is null || p.Key is not ("role" or "content" or "tool_calls" or "refusal")).Select(p => p.Key).ToList())
            {
                delta.Remove(name);
            }
        }

        return node;
    }
}
