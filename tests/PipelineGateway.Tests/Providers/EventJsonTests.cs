using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A stream chunk keeps its upstream bytes (<see cref="ChatCompletionChunk.EventJson"/>, which the SSE endpoint writes
/// instead of the chunk) only when they say what the gateway's own writing of the chunk says, and always when the event
/// is in the gateway's shape.
/// </summary>
public sealed class EventJsonTests
{
    [Fact]
    public void Property_kept_bytes_always_mean_what_the_gateway_would_write_and_every_event_in_its_shape_keeps_them()
    {
        // CsCheck, fixed seed: events built member by member — each member the writer always writes present, missing,
        // empty or given twice; usage, a gateway member, unknown members, line breaks between members; text arbitrary,
        // escaped or literal UTF-8 — in any order.
        var json = new ShapedJson(new PCG(24, 11), lineBreaksOffShape: true);
        var skims = 0;
        for (var i = 0; i < 20_000; i++)
        {
            json.Next();

            string Choice()
            {
                var delta = new List<string>();
                if (!json.OneIn(3)) { delta.Add($"\"content\":{(json.OneIn(6) ? "null" : json.Str())}"); }
                if (json.OneIn(3)) { delta.Add("\"role\":\"assistant\""); }
                if (json.OneIn(8)) { delta.Add($"\"refusal\":{json.Str()}"); }
                if (json.OneIn(8)) { delta.Add($"\"reasoning_content\":{json.Str()}"); }
                if (json.OneIn(10)) { delta.Add("\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]"); }
                if (json.OneIn(12)) { json.InShape = false; delta.Add($"\"content\":{json.Str()}"); } // given twice, or once more than the others

                var choice = new List<string>();
                json.Always(choice, "index", "0");
                json.Always(choice, "delta", json.Object(delta));
                json.Always(choice, "finish_reason", json.OneIn(4) ? "\"stop\"" : "null");
                json.Always(choice, "logprobs", "null");
                if (json.OneIn(8)) { choice.Add("\"content_filter_results\":{}"); }
                return json.Object(choice);
            }

            var top = json.Head("chat.completion.chunk", Choice);
            if (json.OneIn(10)) { json.InShape = false; top.Add("\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}"); }
            else if (json.OneIn(4)) { top.Add("\"usage\":null"); }
            if (json.OneIn(20)) { json.InShape = false; top.Add("\"gateway\":{\"provider\":\"forged\"}"); }
            if (json.OneIn(4)) { top.Add($"\"service_tier\":{json.Str()}"); }
            if (json.OneIn(4)) { top.Add($"\"obfuscation\":{(json.OneIn(5) ? "{\"nested\":[1,null]}" : json.Str())}"); }
            if (json.OneIn(30)) { top.Add("\"error\":{\"message\":\"m\"}"); }
            if (json.OneIn(4)) { top.Add("\"system_fingerprint\":\"fp_1\""); }
            var bytes = Encoding.UTF8.GetBytes(json.Object(top));

            if (json.OneIn(25))
            {
                // Cut short: reading it with its choices skimmed fails as reading it in full does.
                var cut = bytes[..json.Below((uint)bytes.Length)];
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
                if (json.OneIn(2))
                {
                    // Asked for while the bytes are held: read from them.
                    JsonSerializer.Serialize(skimmed.Choices).Should().Be(JsonSerializer.Serialize(plain.Choices));
                    skimmed.ChoicesUnread.Should().BeFalse();
                }
            }

            skimmed.DropEventJson();
            JsonSerializer.SerializeToUtf8Bytes(skimmed, GatewayJsonContext.Default.ChatCompletionChunk).Should().Equal(written,
                $"a chunk read with its choices skimmed says what the full read says once it lets its bytes go: {Encoding.UTF8.GetString(bytes)}");
            if (json.InShape)
            {
                chunk.HasEventJson.Should().BeTrue($"the event is in the gateway's shape: {Encoding.UTF8.GetString(bytes)}");
            }

            var keptBytes = chunk.HasEventJson ? chunk.EventJson.ToArray() : null;
            chunk.DropEventJson();
            JsonSerializer.SerializeToUtf8Bytes(chunk, GatewayJsonContext.Default.ChatCompletionChunk).Should().Equal(written,
                $"a chunk read to keep its bytes says what it would have said without them once it lets them go: {Encoding.UTF8.GetString(bytes)}");
            json.Judge(keptBytes, bytes, written, Meaning);
        }

        (json.Kept, json.Rewritten).Should().Match<(int Kept, int Rewritten)>(c => c.Kept > 2_000 && c.Rewritten > 2_000, "both kinds of event were generated");
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
    /// members) aside. Members it does not model are in both (a choice's and a delta's: it keeps them).
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
            var delta = choice!["delta"]!.AsObject();
            foreach (var name in delta.Where(p => p.Value is null && p.Key is "role" or "content" or "tool_calls" or "refusal").Select(p => p.Key).ToList())
            {
                delta.Remove(name);
            }
        }

        return node;
    }
}
