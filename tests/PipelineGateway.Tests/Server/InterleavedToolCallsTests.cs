using System.Net;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Parallel tool calls whose argument deltas interleave — the OpenAI format allows it (each delta names its call) and
/// servers other than OpenAI's send them so — reach a <c>/v1/messages</c> caller as Claude's blocks do: one after
/// another, each stopped once, no delta after its block stopped, every call's input whole. Before, the first call's
/// block was stopped when the second began and its later deltas went to a stopped block (a client that takes a call
/// at its block's stop read <c>{"city":</c>).
/// </summary>
public sealed class InterleavedToolCallsTests : IAsyncLifetime
{
    private ScriptedUpstream _upstream = null!;
    private ScriptedGateway _gateway = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _upstream = await ScriptedUpstream.StartAsync(Ct);
        _gateway = await ScriptedGateway.StartAsync(_upstream.BaseAddress, _upstream, ["tools-interleaved"], "gpt-4o", Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _gateway.DisposeAsync();
        await _upstream.DisposeAsync();
    }

    [Fact]
    public async Task Interleaved_calls_reach_a_Claude_caller_as_blocks_one_after_another_each_whole()
    {
        const string Body = """{"model":"tools-interleaved","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Weather and time?"}],"tools":[{"name":"get_weather","input_schema":{"type":"object"}},{"name":"get_time","input_schema":{"type":"object"}}]}""";
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/messages") { Content = new StringContent(Body, Encoding.UTF8, "application/json") };
        request.Headers.Add("anthropic-version", "2023-06-01");
        using var response = await _gateway.Http.SendAsync(request, Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var events = (await response.Content.ReadAsStringAsync(Ct)).Split('\n')
            .Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => JsonDocument.Parse(l[6..]).RootElement).ToList();

        int? open = null;
        var blocks = new List<(string Type, string? Name, StringBuilder Text)>();
        foreach (var e in events)
        {
            switch (e.GetProperty("type").GetString())
            {
                case "content_block_start":
                    open.Should().BeNull("a block starts only after the one before it stopped");
                    open = e.GetProperty("index").GetInt32();
                    open.Should().Be(blocks.Count, "blocks are numbered in order");
                    var block = e.GetProperty("content_block");
                    blocks.Add((block.GetProperty("type").GetString()!, block.TryGetProperty("name", out var n) ? n.GetString() : null, new StringBuilder()));
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
                    e.GetProperty("delta").GetProperty("stop_reason").GetString().Should().Be("tool_use");
                    break;
            }
        }

        blocks.Select(b => (b.Type, b.Name, b.Text.ToString())).Should().Equal(
            ("text", null, "Checking."),
            ("tool_use", "get_weather", """{"city":"Paris"}"""),
            ("tool_use", "get_time", """{"tz":"UTC"}"""),
            ("text", null, " Done."));
    }

    /// <summary>
    /// The same calls through the Responses API: deltas may name any open item, but none follows an item's
    /// <c>response.output_item.done</c> — text after the calls began is a second message (it went into the first,
    /// already done), and every call's arguments are whole.
    /// </summary>
    [Fact]
    public async Task Interleaved_calls_and_text_after_them_reach_a_Responses_caller_with_no_event_after_an_items_done()
    {
        const string Body = """{"model":"tools-interleaved","stream":true,"input":"Weather and time?","tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}},{"type":"function","name":"get_time","parameters":{"type":"object"}}]}""";
        using var response = await _gateway.Http.PostAsync("v1/responses", new StringContent(Body, Encoding.UTF8, "application/json"), Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var events = (await response.Content.ReadAsStringAsync(Ct)).Split('\n')
            .Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => JsonDocument.Parse(l[6..]).RootElement).ToList();

        var done = new HashSet<string>();
        JsonElement? completed = null;
        foreach (var e in events)
        {
            var type = e.GetProperty("type").GetString()!;
            var item = e.TryGetProperty("item_id", out var id) ? id.GetString() : e.TryGetProperty("item", out var it) ? it.GetProperty("id").GetString() : null;
            if (item is not null)
            {
                done.Should().NotContain(item, $"{type} names an item already done");
            }

            if (type == "response.output_item.done")
            {
                done.Add(item!);
            }
            else if (type == "response.completed")
            {
                completed = e.GetProperty("response");
            }
        }

        var output = completed!.Value.GetProperty("output").EnumerateArray().Select(i => i.GetProperty("type").GetString() == "message"
            ? "message:" + i.GetProperty("content")[0].GetProperty("text").GetString()
            : $"{i.GetProperty("name").GetString()}:{i.GetProperty("arguments").GetString()}").ToList();
        output.Should().Equal("message:Checking.", """get_weather:{"city":"Paris"}""", """get_time:{"tz":"UTC"}""", "message: Done.");
        done.Should().HaveCount(4, "every item is done once");
    }
}
