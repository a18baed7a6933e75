using System.Text;
using System.Text.Json;
using FluentAssertions;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// The shape rules of the streams the gateway writes, checked over their events (each event's JSON): Claude's content
/// blocks and the Responses API's output items. Each returns what the stream built, for the test's own checks.
/// </summary>
internal static class StreamShapes
{
    /// <summary>A Claude content block as its stream built it: its type, id and name (a tool call's), and its text or input JSON.</summary>
    public sealed record ClaudeBlock(string Type, string? Id, string? Name, string Text);

    /// <summary>
    /// A <c>/v1/messages</c> stream's blocks, checking Claude's rules: numbered in order, each started once and stopped
    /// once, every delta to the block open then (never to a stopped one), all stopped before <c>message_delta</c>.
    /// </summary>
    public static List<ClaudeBlock> ClaudeBlocks(IEnumerable<JsonElement> events)
    {
        int? open = null;
        var blocks = new List<(string Type, string? Id, string? Name, StringBuilder Text)>();
        foreach (var e in events)
        {
            switch (e.GetProperty("type").GetString())
            {
                case "content_block_start":
                    open.Should().BeNull("a block starts only after the one before it stopped");
                    e.GetProperty("index").GetInt32().Should().Be(blocks.Count, "blocks are numbered in order");
                    open = blocks.Count;
                    var block = e.GetProperty("content_block");
                    blocks.Add((block.GetProperty("type").GetString()!, block.TryGetProperty("id", out var id) ? id.GetString() : null, block.TryGetProperty("name", out var n) ? n.GetString() : null, new StringBuilder()));
                    break;
                case "content_block_delta":
                    e.GetProperty("index").GetInt32().Should().Be(open, "a delta goes to the block that is open, never to a stopped one");
                    var delta = e.GetProperty("delta");
                    blocks[open!.Value].Text.Append(delta.TryGetProperty("text", out var t) ? t.GetString() : delta.GetProperty("partial_json").GetString());
                    break;
                case "content_block_stop":
                    e.GetProperty("index").GetInt32().Should().Be(open);
                    open = null;
                    break;
                case "message_delta":
                    open.Should().BeNull("every block stopped before the message ends");
                    break;
            }
        }

        return [.. blocks.Select(static b => new ClaudeBlock(b.Type, b.Id, b.Name, b.Text.ToString()))];
    }

    /// <summary>
    /// A Responses API stream's completed (or incomplete) response, checking the items' rules: each added once and
    /// done once, and no event names an item after its <c>response.output_item.done</c>.
    /// </summary>
    public static JsonElement ResponsesItems(IEnumerable<(string Name, JsonElement Json)> events)
    {
        var added = new HashSet<string>();
        var done = new HashSet<string>();
        JsonElement? finished = null;
        foreach (var (name, json) in events)
        {
            var item = json.TryGetProperty("item_id", out var i) ? i.GetString() : json.TryGetProperty("item", out var it) ? it.GetProperty("id").GetString() : null;
            if (item is not null)
            {
                done.Should().NotContain(item, $"{name} names an item already done");
            }

            if (name == "response.output_item.added")
            {
                added.Add(item!).Should().BeTrue("an item is added once");
            }
            else if (name == "response.output_item.done")
            {
                added.Should().Contain(item!);
                done.Add(item!);
            }
            else if (name is "response.completed" or "response.incomplete")
            {
                finished = json.GetProperty("response");
            }
        }

        done.Should().BeEquivalentTo(added, "every item added is done");
        return finished ?? throw new InvalidOperationException("The stream ended without its response.");
    }
}
