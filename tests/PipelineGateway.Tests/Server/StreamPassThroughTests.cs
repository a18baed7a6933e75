using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// An upstream's stream event that is already in the gateway's own shape reaches the client as the upstream's bytes
/// (docs/server.md, "Streaming"); one that is not — a member left out, one given twice — is written by the gateway,
/// with what it fills in. The upstream here is a real Kestrel that is not our simulator, sending bytes the test chose.
/// </summary>
public sealed class StreamPassThroughTests() : EchoGatewayTests("sse-echo")
{
    protected override void Configure(Dictionary<string, string?> settings)
    {
        Upstream.AddProvider(settings, 1, "echo-claude", "Anthropic", "sse-echo", "claude", "claude-sonnet-4-5");
        settings["Gateway:Providers:1:ApiKeyEnvironmentVariable"] = "PGW_TEST_ECHO_CLAUDE_KEY";
        Environment.SetEnvironmentVariable("PGW_TEST_ECHO_CLAUDE_KEY", "sk-ant-echo");
    }

    private HttpClient Http => Gateway.Http;

    private const string Head = "\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m-up\"";

    [Fact]
    public async Task Events_in_theGateways_shape_go_out_as_theUpstream_sent_them_and_the_others_are_written_by_theGateway()
    {
        // Literal UTF-8, HTML characters and a delta member the gateway does not model: the upstream's bytes, kept.
        var opening = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"héllo 世界 <b>&\",\"reasoning_content\":\"because\"},\"logprobs\":null,\"finish_reason\":null}],\"service_tier\":\"default\"}";
        var noLogprobs = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" second\"},\"finish_reason\":null,\"content_filter_results\":{\"hate\":{\"filtered\":false}}}],\"service_tier\":\"default\"}";
        var twice = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" shown\",\"content\":\" third\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var noId = "{\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m-up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" fourth\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var finish = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}";
        var usage = "{" + Head + ",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}";
        var upstream = string.Concat(new[] { opening, noLogprobs, twice, noId, finish, usage }.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n";

        var events = await StreamAsync(upstream);

        events.Should().HaveCount(7);
        events[0].Should().Be(opening, "an event in the gateway's shape is forwarded byte for byte");
        Node(events[0])["choices"]![0]!["delta"]!["reasoning_content"]!.GetValue<string>().Should().Be("because");

        events[1].Should().NotBe(noLogprobs, "a choice without logprobs is written by the gateway, which always writes it");
        Node(events[1])["choices"]![0]!.AsObject().Should().ContainKey("logprobs");
        Node(events[1])["choices"]![0]!["delta"]!["content"]!.GetValue<string>().Should().Be(" second");
        Node(events[1])["service_tier"]!.GetValue<string>().Should().Be("default", "a member the gateway does not model is written back");
        Node(events[1])["choices"]![0]!["content_filter_results"]!["hate"]!["filtered"]!.GetValue<bool>().Should().BeFalse("a choice's too (Azure's filter results)");

        events[2].Should().NotBe(twice, "a member given twice is written once, with the value the gateway read (the last)");
        Node(events[2])["choices"]![0]!["delta"]!["content"]!.GetValue<string>().Should().Be(" third");

        Node(events[3])["id"]!.GetValue<string>().Should().StartWith("chatcmpl-", "what the upstream left out is filled in");
        events[4].Should().Be(finish);
        Node(events[5])["usage"]!["cost"].Should().NotBeNull("the usage chunk is rewritten to carry the request's cost");
        events[6].Should().Be("[DONE]");
    }

    [Fact]
    public async Task Events_of_every_size_around_the_output_buffer_go_out_byte_for_byte()
    {
        // Written with one span when the event fits Kestrel's 4 KB buffer, in parts when it does not: the bytes are the
        // same either way, next to each other and across the buffer's end.
        int[] contentLengths = [0, 1, 3913, 3914, 3915, 2000, 2000, 4100, 9000, 70_000, 3]; // 3914: an event of exactly 4,096 bytes
        var sent = contentLengths.Select((n, i) => "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + new string((char)('a' + i), n) + "\"},\"logprobs\":null,\"finish_reason\":null}]}").ToList();
        var upstream = string.Concat(sent.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n";

        var events = await StreamAsync(upstream);

        events.Should().HaveCount(sent.Count + 2, "then the usage chunk the caller asked for, and [DONE]");
        for (var i = 0; i < sent.Count; i++)
        {
            (events[i] == sent[i]).Should().BeTrue($"event {i} ({sent[i].Length} bytes of JSON) goes out as the upstream sent it");
        }
    }

    [Fact]
    public async Task OpenAIs_padded_events_and_a_reasoning_models_go_out_byte_for_byte_and_a_broken_text_is_refused()
    {
        // Each token's event the same bytes around other text (and OpenAI's obfuscation padding): all but the first of a
        // run are taken from the stream's template (StreamTemplate). Escapes, literal UTF-8 and an empty text among them;
        // a reasoning model's events vary their reasoning text beside an empty content.
        string Padded(string text, string padding) => "{" + Head + ",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":" + text + "},\"logprobs\":null,\"finish_reason\":null}],\"obfuscation\":" + padding + "}";
        string Reasoning(string text) => "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":" + text + ",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}";
        List<string> sent =
        [
            Padded("\"Hello\"", "\"a1\""), Padded("\" wörld \\\"quoted\\\"\"", "\"xYz9\""), Padded("\"\"", "\"q\""),
            Padded("\"\\n\\u00e9\\\\\"", "\"\""), Padded("\"世界\"", "\"0123456789ab\""),
            Reasoning("\"Let me\""), Reasoning("\" think\\n\""), Reasoning("\" again.\""),
        ];
        var upstream = string.Concat(sent.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n";

        var events = await StreamAsync(upstream);

        events.Should().HaveCount(sent.Count + 2, "then the usage chunk the caller asked for, and [DONE]");
        for (var i = 0; i < sent.Count; i++)
        {
            events[i].Should().Be(sent[i], $"event {i} goes out as the upstream sent it");
        }

        // The same frame around a text that is not a string's body (a raw control character): not taken from the
        // template — read in full, refused as the invalid event it is, as without a template.
        var broken = Padded("\"ok\"", "\"p\"") + "\n\ndata: " + Padded("\"bad\u0001text\"", "\"p\"");
        var failed = await StreamAsync($"data: {broken}\n\ndata: [DONE]\n\n");
        failed[0].Should().Be(Padded("\"ok\"", "\"p\""));
        failed.Should().Contain(e => e.Contains("invalid event", StringComparison.Ordinal), "the broken event ends the stream with an error, as it did before the template");
    }

    [Theory]
    [InlineData("{\"id\":\"chatcmpl-up1\",\n\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m-up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}")]
    [InlineData("{" + Head + ",\"gateway\":{\"provider\":\"forged\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}")]
    [InlineData("{" + Head + ",\"model\":\"other\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}")]
    public async Task An_event_that_is_two_lines_carries_aGateway_member_or_repeats_a_member_is_rewritten(string event1)
    {
        // Two data lines are one event joined by a line break (written as-is it would break the SSE framing); the
        // gateway's own member and a repeated one are what its reader drops or reads last.
        var upstream = string.Concat(event1.Split('\n').Select(line => $"data: {line}\n")) + "\n"
            + "data: {" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

        var events = await StreamAsync(upstream);

        var first = Node(events[0]);
        events[0].Should().NotContain("\n").And.NotContain("forged").And.NotBe(event1);
        first["choices"]![0]!["delta"]!["content"]!.GetValue<string>().Should().Be("hi");
        first["model"]!.GetValue<string>().Should().Be(event1.Contains("\"other\"", StringComparison.Ordinal) ? "other" : "m-up");
    }

    [Fact]
    public async Task AnUpstream_error_right_after_content_follows_that_content_in_the_stream()
    {
        // One write upstream: the content and then the error reach the gateway together, so the content is written to
        // the client's response but not yet flushed when the error comes; it must still go out, the error after it.
        var content = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var upstream = $"data: {content}\n\ndata: {{\"error\":{{\"message\":\"upstream broke\",\"type\":\"server_error\"}}}}\n\n";

        var events = await StreamAsync(upstream);

        events.Should().HaveCount(2);
        events[0].Should().Be(content);
        Node(events[1])["error"]!["message"]!.GetValue<string>().Should().Contain("upstream broke");
    }

    /// <summary>The data of each event the client got for a streamed request whose upstream sends <paramref name="sse"/>.</summary>
    [Fact]
    public async Task Text_theGateway_writes_itself_stays_literal_UTF_8_on_both_routes_as_OpenAI_and_Anthropic_send_it()
    {
        // An event the gateway rewrites (no logprobs) and the /v1/messages events it translates: non-ASCII text and HTML
        // characters go out as UTF-8, not as \uXXXX escapes (WireJson), and read back as the same text. (An emoji, outside
        // the Basic Multilingual Plane, is still escaped as a surrogate pair by System.Text.Json: valid, and read back.)
        const string Literal = "héllo 世界 <b>&'";
        const string Text = Literal + "🙂";
        var content = JsonSerializer.Serialize(Text);
        var upstream = "data: {" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":" + content + "},\"finish_reason\":null}]}\n\n"
            + "data: {" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

        var chat = await StreamAsync(upstream);
        chat[0].Should().Contain(Literal, "the gateway's own writer keeps UTF-8 as UTF-8").And.NotContain("\\u00");
        Node(chat[0])["choices"]![0]!["delta"]!["content"]!.GetValue<string>().Should().Be(Text);

        var body = JsonSerializer.Serialize(new { model = "m", max_tokens = 100, stream = true, messages = new[] { new { role = "user", content = upstream } } });
        using var response = await Http.PostAsync("v1/messages", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        response.IsSuccessStatusCode.Should().BeTrue(await response.Content.ReadAsStringAsync(Ct));
        var events = Encoding.UTF8.GetString(await response.Content.ReadAsByteArrayAsync(Ct));
        var delta = events.Split("\n").Single(l => l.StartsWith("data: ", StringComparison.Ordinal) && l.Contains("text_delta", StringComparison.Ordinal));
        delta.Should().Contain(Literal).And.NotContain("\\u00");
        Node(delta["data: ".Length..])["delta"]!["text"]!.GetValue<string>().Should().Be(Text);
    }

    /// <summary>
    /// Servers that never send <c>[DONE]</c> (llama.cpp forks, older TGI): a body that ends cleanly after the answer's
    /// finish is a whole answer — the caller gets the finish with the gateway's usage on it (the upstream reported none:
    /// estimated, the events' text at about four characters a token, marked) and <c>[DONE]</c>; a body that ends before the finish is still a
    /// broken stream.
    /// </summary>
    [Fact]
    public async Task A_stream_that_ends_after_its_finish_without_DONE_is_whole_and_one_cut_before_its_finish_is_not()
    {
        var one = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var two = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" two\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var finish = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}";

        var whole = await StreamAsync(string.Concat(new[] { one, two, finish }.Select(e => $"data: {e}\n\n")));

        whole.Should().HaveCount(4);
        whole.Take(2).Should().Equal(one, two);
        var last = Node(whole[2]);
        last["id"]!.GetValue<string>().Should().Be("chatcmpl-up1");
        last["choices"]![0]!["finish_reason"]!.GetValue<string>().Should().Be("stop");
        last["usage"]!["completion_tokens"]!.GetValue<int>().Should().Be(2, "at least one token an event that carried content");
        last["usage"]!["prompt_tokens"]!.GetValue<int>().Should().BePositive();
        last["usage"]!["estimated"]!.GetValue<bool>().Should().BeTrue();
        last["usage"]!["cost"]!.GetValue<decimal>().Should().Be(0, "m-up has no price");
        whole[3].Should().Be("[DONE]");

        // Nor a finish: the gateway's own closing chunk carries the estimate, as part of the stream.
        var noFinish = await StreamAsync(string.Concat(new[] { one, two }.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n");

        noFinish.Should().HaveCount(4);
        var closing = Node(noFinish[2]);
        closing["id"]!.GetValue<string>().Should().Be("chatcmpl-up1", "the gateway's own closing chunk belongs to the stream");
        closing["model"]!.GetValue<string>().Should().Be("m-up");
        closing["created"]!.GetValue<long>().Should().Be(1700000000);
        closing["choices"]!.AsArray().Should().BeEmpty();
        closing["usage"]!["completion_tokens"]!.GetValue<int>().Should().Be(2);
        closing["usage"]!["estimated"]!.GetValue<bool>().Should().BeTrue();

        var cut = await StreamAsync(string.Concat(new[] { one, two }.Select(e => $"data: {e}\n\n")));

        cut.Take(2).Should().Equal(one, two);
        Node(cut[^1])["error"]!["message"]!.GetValue<string>().Should().Contain("ended before [DONE]");
    }

    /// <summary>
    /// A stream the upstream reported no usage for is billed what its events carried — about four characters a token, at
    /// least one an event that carried content — counted per event as the events pass (the text, reasoning text and tool
    /// calls of events forwarded unread as of those read in full), not one token an event: a server that sends a
    /// sentence an event was under-billed.
    /// </summary>
    [Fact]
    public async Task A_stream_without_usage_is_billed_the_text_its_events_carried_not_one_token_an_event()
    {
        var sentence = new string('a', 80);
        var thought = new string('b', 40);
        var one = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var said = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + sentence + "\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var thinking = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"" + thought + "\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var call = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}";
        var finish = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}";

        var events = await StreamAsync(string.Concat(new[] { one, said, thinking, call, finish }.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n");

        var usage = Node(events[^2])["usage"]!;
        usage["estimated"]!.GetValue<bool>().Should().BeTrue();
        usage["completion_tokens"]!.GetValue<int>().Should().Be(1 + 80 / 4 + 40 / 4 + (11 + 16) / 4,
            "'one' at least one token; the sentence, the reasoning and the call's name and arguments about four characters a token");
    }

    /// <summary>
    /// An upstream that sends the whole answer in one chunk — content, finish and usage together — had that chunk sent
    /// and then a closing chunk of the gateway's own saying the usage again: a client that adds up the usage of the
    /// chunks counted it twice. The chunk is now the stream's last, with the request's cost, and no chunk follows it;
    /// an empty answer in one chunk too. A <c>/v1/messages</c> caller gets the whole answer from it.
    /// </summary>
    [Fact]
    public async Task A_whole_answer_in_one_chunk_says_its_usage_once_with_its_cost()
    {
        var whole = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"All at once.\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":4,\"total_tokens\":14}}";
        var empty = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":0,\"total_tokens\":10}}";
        foreach (var (chunk, content, tokens) in new[] { (whole, "All at once.", 4), (empty, "", 0) })
        {
            var events = await StreamAsync($"data: {chunk}\n\ndata: [DONE]\n\n");

            events.Should().HaveCount(2, "the one chunk, then [DONE]: " + string.Join(" | ", events));
            var only = Node(events[0]);
            only["choices"]![0]!["delta"]!["content"]!.GetValue<string>().Should().Be(content);
            only["usage"]!["completion_tokens"]!.GetValue<int>().Should().Be(tokens);
            only["usage"]!["cost"]!.GetValue<decimal>().Should().Be(0, "the request's cost, said on the stream's last chunk (m-up has no price)");
            events[1].Should().Be("[DONE]");
        }

        var messages = await MessagesAsync($"data: {whole}\n\ndata: [DONE]\n\n", "m");
        messages.Where(e => e["type"]!.GetValue<string>() == "content_block_delta").Select(e => e["delta"]!["text"]!.GetValue<string>()).Should().Equal("All at once.");
        var delta = messages.Should().ContainSingle(e => e["type"]!.GetValue<string>() == "message_delta").Subject;
        (delta["delta"]!["stop_reason"]!.GetValue<string>(), delta["usage"]!["output_tokens"]!.GetValue<int>()).Should().Be(("end_turn", 4));
        messages[^1]["type"]!.GetValue<string>().Should().Be("message_stop");
    }

    /// <summary>
    /// OpenAI's stream says its usage once, on the last chunk; an upstream that says it on a chunk in the middle of the
    /// stream (or on its finishing chunk and again in a usage-only one) had it written where it came, and the last chunk
    /// said no cost. The usage now goes out once, on the last chunk, with the cost — unless the caller asked for one on
    /// every chunk (vLLM's <c>continuous_usage_stats</c>).
    /// </summary>
    [Fact]
    public async Task A_usage_said_before_the_last_chunk_goes_out_once_on_the_last_with_its_cost()
    {
        var hel = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var lo = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}";
        var finish = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}";
        var early = string.Concat(new[] { hel, lo, finish }.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n";

        var events = await StreamAsync(early);

        events.Should().HaveCount(4);
        events[0].Should().Be(hel);
        Node(events[1])["choices"]![0]!["delta"]!["content"]!.GetValue<string>().Should().Be("lo");
        Node(events[1])["usage"].Should().BeNull("said on the last chunk instead");
        var last = Node(events[2]);
        last["choices"]![0]!["finish_reason"]!.GetValue<string>().Should().Be("stop");
        (last["usage"]!["prompt_tokens"]!.GetValue<int>(), last["usage"]!["completion_tokens"]!.GetValue<int>(), last["usage"]!["cost"]!.GetValue<decimal>()).Should().Be((11, 7, 0m));
        events.Count(e => e.Contains("\"usage\":{", StringComparison.Ordinal)).Should().Be(1);

        // Another request each (an SSE comment first): the same one again would be the first one's cached answer.
        var continuous = await StreamAsync(": continuous\n\n" + early, streamOptions: new { include_usage = true, continuous_usage_stats = true });
        var kept = Node(continuous[1]);
        (kept["choices"]![0]!["delta"]!["content"]!.GetValue<string>(), kept["usage"]!["completion_tokens"]!.GetValue<int>()).Should().Be(("lo", 7),
            "the caller asked for a usage on every chunk the upstream sends one on");
        kept["usage"]!["cost"].Should().BeNull("the cost is the last chunk's");
        Node(continuous[2])["usage"]!["cost"]!.GetValue<decimal>().Should().Be(0);

        // Said on the finishing chunk and again in a usage-only chunk: once, on the usage-only chunk.
        var finishWithUsage = "{" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}";
        var usageOnly = "{" + Head + ",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}";
        var twice = await StreamAsync(string.Concat(new[] { hel, finishWithUsage, usageOnly }.Select(e => $"data: {e}\n\n")) + "data: [DONE]\n\n");
        twice.Should().HaveCount(4);
        Node(twice[1])["usage"].Should().BeNull();
        Node(twice[2])["choices"]!.AsArray().Should().BeEmpty();
        Node(twice[2])["usage"]!["cost"]!.GetValue<decimal>().Should().Be(0);

        // Not asked for: no usage anywhere.
        var unasked = await StreamAsync(": unasked\n\n" + early, streamOptions: new { include_usage = false });
        unasked.Should().HaveCount(4).And.NotContain(e => e.Contains("\"usage\":{", StringComparison.Ordinal));
    }

    private async Task<List<string>> StreamAsync(string sse, string model = "m", object? streamOptions = null)
    {
        var body = JsonSerializer.Serialize(new { model, stream = true, stream_options = streamOptions ?? new { include_usage = true }, messages = new[] { new { role = "user", content = sse } } });
        using var response = await Http.PostAsync("v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        response.IsSuccessStatusCode.Should().BeTrue(await response.Content.ReadAsStringAsync(Ct));
        var text = Encoding.UTF8.GetString(await response.Content.ReadAsByteArrayAsync(Ct));
        text.Should().EndWith("\n\n");
        return text[..^2].Split("\n\n").Select(e => e.StartsWith("data: ", StringComparison.Ordinal) ? e["data: ".Length..] : throw new InvalidOperationException($"not a data event: {e}")).ToList();
    }

    private static JsonNode Node(string json) => JsonNode.Parse(json)!;

    /// <summary>
    /// A <c>/v1/messages</c> caller's <c>message_start</c> says the prompt's tokens, as Claude's does — clients (LangChain,
    /// the Vercel AI SDK) take them from there alone: from an Anthropic deployment, as Claude's own <c>message_start</c>
    /// said them (its cache's counts too); from an OpenAI-format one, whose usage comes only at the end, the prompt as
    /// the gateway counts it. Both read 0 before; <c>message_delta</c> still carries the upstream's exact count.
    /// </summary>
    [Fact]
    public async Task A_messages_callers_message_start_says_the_prompts_tokens_from_eitherUpstream()
    {
        var claude = await MessagesAsync(string.Concat(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"one\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"), "claude");

        var opening = claude.First(e => e["type"]!.GetValue<string>() == "message_start")["message"]!["usage"]!;
        (opening["input_tokens"]!.GetValue<int>(), opening["cache_read_input_tokens"]!.GetValue<int>()).Should().Be((7, 3), "as Claude's message_start said them");

        var sse = string.Concat(
            "data: {" + Head + ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {" + Head + ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
            "data: {" + Head + ",\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":1,\"total_tokens\":41}}\n\n",
            "data: [DONE]\n\n");
        var openAI = await MessagesAsync(sse, "m");

        var start = openAI.First(e => e["type"]!.GetValue<string>() == "message_start")["message"]!["usage"]!["input_tokens"]!.GetValue<int>();
        var request = new ChatCompletionRequest { Model = "m", Messages = [new ChatCompletionMessage { Role = "user", Content = sse }], MaxTokens = 16 };
        start.Should().Be(PipelineGateway.Admission.TokenCounter.ApproximatePrompt(request), "the prompt at ~4 characters a token (no tokenizer loaded for it), not 0");
        openAI.First(e => e["type"]!.GetValue<string>() == "message_delta")["usage"]!["input_tokens"]!.GetValue<int>().Should().Be(40, "the upstream's exact count at the end");
    }

    private async Task<List<JsonNode>> MessagesAsync(string sse, string model)
    {
        var body = JsonSerializer.Serialize(new { model, max_tokens = 16, stream = true, messages = new[] { new { role = "user", content = sse } } });
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/messages") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Add("anthropic-version", "2023-06-01");
        using var response = await Http.SendAsync(request, Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(text);
        return text.Split('\n').Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => Node(l[6..])).ToList();
    }

    /// <summary>
    /// Claude's content events are written to a <c>/v1/messages</c> caller as they came — but under the protocol's own
    /// event names, each on one <c>data:</c> line: an upstream event whose type carries a line break (to write an event
    /// of its choosing), or whose JSON spans several <c>data:</c> lines, cannot break the caller's stream.
    /// </summary>
    [Fact]
    public async Task An_AnthropicUpstreams_events_cannot_write_events_of_their_choosing_to_a_messages_caller()
    {
        var sse = string.Concat(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"one\"}}\n\n",
            // Its type names another event after a line break.
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\\nevent: error\\ndata: {}\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" injected\"}}\n\n",
            // Its JSON on two data: lines (SSE joins them with a line break).
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\ndata: \"delta\":{\"type\":\"text_delta\",\"text\":\" two\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        var body = JsonSerializer.Serialize(new { model = "claude", max_tokens = 16, stream = true, messages = new[] { new { role = "user", content = sse } } });
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/messages") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Add("anthropic-version", "2023-06-01");
        using var response = await Http.SendAsync(request, Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        response.IsSuccessStatusCode.Should().BeTrue(text);

        var lines = text.Split('\n');
        lines.Where(l => l.StartsWith("event: ", StringComparison.Ordinal)).Select(l => l[7..]).Distinct().Should()
            .BeSubsetOf(["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]);
        lines.Should().OnlyContain(l => l.Length == 0 || l.StartsWith("event: ", StringComparison.Ordinal) || l.StartsWith("data: {", StringComparison.Ordinal), "every data line is one whole JSON event");
        var deltas = lines.Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => Node(l[6..]))
            .Where(e => e["type"]!.GetValue<string>() == "content_block_delta").Select(e => e["delta"]!["text"]!.GetValue<string>());
        string.Concat(deltas).Should().Be("one two", "the event with a forged type is not Claude's content");
    }

    /// <summary>
    /// The same for an Anthropic-format upstream: a body that ends after the message_delta with its stop_reason is whole
    /// without message_stop, one that ends before it is broken; an upstream that reports no usage anywhere (an
    /// Anthropic-compatible server) is billed the gateway's estimate, marked — not a zero.
    /// </summary>
    [Fact]
    public async Task An_Anthropic_stream_is_whole_after_its_stop_reason_and_one_without_usage_is_billed_the_estimate()
    {
        const string Start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[]}}\n\n";
        const string Text = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
            + "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"one two\"}}\n\n"
            + "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
        const string Delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n";

        var events = await StreamAsync(Start + Text + Delta, "claude");

        events[^1].Should().Be("[DONE]");
        var usage = events.Where(e => e != "[DONE]").Select(Node).Where(e => e is JsonObject o && o.ContainsKey("usage")).Should().ContainSingle().Subject!["usage"]!;
        usage["estimated"]!.GetValue<bool>().Should().BeTrue("no usage came: the gateway's estimate, said to be one");
        usage["completion_tokens"]!.GetValue<int>().Should().BePositive();
        usage["prompt_tokens"]!.GetValue<int>().Should().BePositive();
        usage["cost"]!.GetValue<decimal>().Should().BePositive("claude-sonnet-4-5 is priced: the estimate is billed");

        var cut = await StreamAsync(Start + Text, "claude");

        Node(cut[^1])["error"]!["message"]!.GetValue<string>().Should().Contain("ended before message_stop");
    }
}
