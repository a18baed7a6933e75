using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Server.Responses;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Claude's thinking blocks through the Responses API's reasoning items: streamed pieces make the blocks again, and the
/// blocks sealed into <c>encrypted_content</c> read back unchanged — any text, any signature, redacted blocks between.
/// </summary>
public sealed class ResponsesReasoningTests
{
    private static readonly Gen<ThinkingBlock> Block = Gen.Frequency(
        (4, Gen.Select(Gen.String[1, 30], Gen.String[1, 20], (text, signature) => new ThinkingBlock(ThinkingBlock.Plain, text, signature, null))),
        (1, Gen.String[1, 30].Select(data => new ThinkingBlock(ThinkingBlock.Redacted, null, null, data))));

    [Fact]
    public void Property_blocks_streamed_in_pieces_are_collected_whole_and_read_back_from_encrypted_content_unchanged()
    {
        // CsCheck, fixed seed: a thinking block streams as text fragments then its signature (AnthropicTranslator's
        // pieces), a redacted block whole; the collector makes the blocks again, and what Encode seals Read opens.
        Gen.Select(Block.List[1, 6], Gen.Int[1, 5].Array[6]).Sample((blocks, cuts) =>
        {
            var collector = new ThinkingBlocks.Collector();
            for (var b = 0; b < blocks.Count; b++)
            {
                var block = blocks[b];
                if (block.Type == ThinkingBlock.Redacted)
                {
                    collector.Add([block]);
                    continue;
                }

                var text = block.Thinking!;
                for (var at = 0; at < text.Length; at += cuts[b])
                {
                    collector.Add([new ThinkingBlock(ThinkingBlock.Plain, text.Substring(at, Math.Min(cuts[b], text.Length - at)), null, null)]);
                }

                collector.Add([new ThinkingBlock(ThinkingBlock.Plain, string.Empty, block.Signature, null)]);
            }

            var collected = collector.Blocks();
            collected.Should().Equal(blocks);
            var item = JsonDocument.Parse(JsonSerializer.Serialize(new { type = "reasoning", encrypted_content = ResponsesReasoning.Encode(collected) })).RootElement;
            ResponsesReasoning.Read(item, "input[0]").Should().Equal(blocks);
        }, seed: "0N0XIzNsQ0O2");
    }

    /// <summary>
    /// CsCheck, fixed seed: any chat stream — text, refusal and function-call deltas in any order, calls of up to three
    /// indexes interleaving — makes Responses API events no item is named in after its <c>response.output_item.done</c>,
    /// each item added and done once, and a completed response holding every call whole and all text and all refusal
    /// words in order (across message items: text after a call began is a message of its own).
    /// </summary>
    [Fact]
    public void Property_any_chat_stream_makes_well_formed_Responses_events()
    {
        var piece = Gen.Select(Gen.Int[0, 4], Gen.Char["abcxyz {}\":"].Array[1, 6].Select(static c => new string(c)));
        piece.List[1, 3].List[1, 12].Sample(stream =>
        {
            var writer = new ResponsesWriter(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("hi")] }, "resp_0123456789abcdef", 1);
            var events = writer.Start().ToList();
            var named = new HashSet<int>();
            var args = new Dictionary<int, string>();
            string text = string.Empty, refusal = string.Empty;
            foreach (var pieces in stream)
            {
                var delta = new ChatCompletionDelta();
                foreach (var (kind, value) in pieces)
                {
                    if (kind == 0 && delta.Content is null)
                    {
                        delta.Content = value;
                        text += value;
                    }
                    else if (kind == 1 && delta.Refusal is null)
                    {
                        delta.Refusal = value;
                        refusal += value;
                    }
                    else if (kind >= 2)
                    {
                        var index = kind - 2;
                        var first = named.Add(index);
                        (delta.ToolCalls ??= []).Add(new ToolCall { Index = index, Id = first ? $"call_{index}" : null, Type = first ? "function" : null, Function = new FunctionCall { Name = first ? $"f{index}" : null, Arguments = value } });
                        args[index] = args.GetValueOrDefault(index) + value;
                    }
                }

                events.AddRange(writer.OnChunk(new ChatCompletionChunk { Id = "x", Model = "m", Choices = [new ChunkChoice { Delta = delta }] }));
            }

            events.AddRange(writer.Finish());
            events.AddRange(writer.Last()); // (after FinishedAsync, in a route)
            var completed = PipelineGateway.Tests.Support.StreamShapes.ResponsesItems(events.Select(static e => (e.Name, JsonDocument.Parse(e.Json).RootElement)));
            var output = completed.GetProperty("output").EnumerateArray().ToList();
            var parts = output.Where(o => o.GetProperty("type").GetString() == "message").SelectMany(o => o.GetProperty("content").EnumerateArray()).ToList();
            string.Concat(parts.Where(p => p.GetProperty("type").GetString() == "output_text").Select(p => p.GetProperty("text").GetString())).Should().Be(text);
            string.Concat(parts.Where(p => p.GetProperty("type").GetString() == "refusal").Select(p => p.GetProperty("refusal").GetString())).Should().Be(refusal);
            output.Where(o => o.GetProperty("type").GetString() == "function_call")
                .Select(o => (o.GetProperty("call_id").GetString(), o.GetProperty("name").GetString(), o.GetProperty("arguments").GetString()))
                .Should().BeEquivalentTo(args.Select(a => ((string?)$"call_{a.Key}", (string?)$"f{a.Key}", (string?)a.Value)));
        }, seed: "0N0XIzNsQ0P8", iter: 2_000);
    }

    [Fact]
    public void Reasoning_items_the_gateway_did_not_write_are_left_out_and_its_own_unreadable_ones_refused()
    {
        JsonElement Item(string? content) => JsonDocument.Parse(JsonSerializer.Serialize(new { type = "reasoning", encrypted_content = content })).RootElement;

        ResponsesReasoning.Read(Item("gAAAAABo-openai-own"), "input[2]").Should().BeNull("OpenAI's own encrypted reasoning: no canonical form");
        ResponsesReasoning.Read(Item(null), "input[2]").Should().BeNull();
        ResponsesReasoning.Encode([]).Should().BeNull("no blocks, no encrypted_content");
        var act = () => ResponsesReasoning.Read(Item(ResponsesReasoning.Prefix + "e30"), "input[2]"); // base64url of {}: not a list
        act.Should().Throw<PipelineGateway.InvalidRequestException>().Which.Param.Should().Be("input[2].encrypted_content");
    }
}
