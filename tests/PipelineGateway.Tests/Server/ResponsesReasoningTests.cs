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
