#pragma warning disable OPENAI001 // the OpenAI SDK marks its Responses client as evaluation-only
using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using Anthropic;
using Anthropic.Models.Messages;
using FluentAssertions;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Responses;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Answers of an upstream that is not our simulator, through every front door. A model that declines (OpenAI's
/// <c>refusal</c>) reaches each with its words, whole and streamed, read by its official SDK: the chat format's refusal
/// as it came, the Responses API's refusal content part (and its <c>response.refusal.*</c> events), and a Claude
/// caller's text with the stop reason <c>refusal</c> (it reached the last two as an empty answer). Parallel tool calls
/// whose argument deltas interleave — the OpenAI format allows it (each delta names its call) and servers other than
/// OpenAI's send them so — reach a <c>/v1/messages</c> caller as Claude's blocks come, and a Responses caller with no
/// event after an item's done (before, the first call's block was stopped when the second began and its later deltas
/// went to a stopped block; a client that takes a call at its block's stop read <c>{"city":</c>).
/// </summary>
public sealed class AnswerShapesTests : IAsyncLifetime
{
    private const string Words = "I can't help with that.";
    private ScriptedUpstream _upstream = null!;
    private ScriptedGateway _gateway = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Uri V1 => new(_gateway.Http.BaseAddress!, "v1");

    public async ValueTask InitializeAsync()
    {
        _upstream = await ScriptedUpstream.StartAsync(Ct);
        _gateway = await ScriptedGateway.StartAsync(_upstream.BaseAddress, _upstream, ["refusal", "tools-interleaved"], "gpt-4o", Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _gateway.DisposeAsync();
        await _upstream.DisposeAsync();
    }

    [Fact]
    public async Task The_chat_format_carries_the_refusal_whole_and_streamed()
    {
        var client = new ChatClient("refusal", new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = V1 });

        var whole = (await client.CompleteChatAsync([new UserChatMessage("Do something bad")], cancellationToken: Ct)).Value;
        whole.Refusal.Should().Be(Words);
        whole.Content.Should().BeEmpty();

        var streamed = new List<string>();
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Do something bad")], cancellationToken: Ct))
        {
            streamed.Add(update.RefusalUpdate ?? string.Empty);
        }

        string.Concat(streamed).Should().Be(Words);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_Responses_API_gives_the_refusal_as_the_messages_refusal_part(bool stream)
    {
        var client = new ResponsesClient(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = V1 });
        var options = new CreateResponseOptions("refusal", [ResponseItem.CreateUserMessageItem("Do something bad")]);
        ResponseResult? response = null;
        var deltas = new List<string>();
        string? done = null;
        if (!stream)
        {
            response = (await client.CreateResponseAsync(options, Ct)).Value;
        }
        else
        {
            options.StreamingEnabled = true;
            await foreach (var update in await client.CreateResponseStreamingAsync(options, Ct))
            {
                switch (update)
                {
                    case StreamingResponseRefusalDeltaUpdate delta:
                        deltas.Add(delta.Delta);
                        break;
                    case StreamingResponseRefusalDoneUpdate refusalDone:
                        done = refusalDone.Refusal;
                        break;
                    case StreamingResponseCompletedUpdate completed:
                        response = completed.Response;
                        break;
                }
            }

            string.Concat(deltas).Should().Be(Words);
            done.Should().Be(Words);
        }

        var message = response!.OutputItems.Should().ContainSingle().Which.Should().BeAssignableTo<MessageResponseItem>().Which;
        var part = message.Content.Should().ContainSingle().Which;
        part.Kind.Should().Be(ResponseContentPartKind.Refusal);
        part.Refusal.Should().Be(Words);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_Claude_caller_gets_the_refusals_words_and_the_stop_reason_refusal(bool stream)
    {
        var client = new AnthropicClient { ApiKey = "sk-unused", BaseUrl = _gateway.Http.BaseAddress!.ToString().TrimEnd('/'), MaxRetries = 0 };
        var ask = new MessageCreateParams { Model = "refusal", MaxTokens = 64, Messages = [new UserMessageParam { Content = "Do something bad" }] };
        if (!stream)
        {
            var message = await client.Messages.Create(ask, Ct);
            message.Content.Should().ContainSingle().Which.TryPickText(out var text).Should().BeTrue();
            text!.Text.Should().Be(Words);
            message.StopReason!.Raw().Should().Be("refusal");
            return;
        }

        var pieces = new List<string>();
        string? stop = null;
        await foreach (var ev in client.Messages.CreateStreaming(ask, Ct))
        {
            if (ev.TryPickContentBlockDelta(out var delta) && delta.Delta.TryPickText(out var piece))
            {
                pieces.Add(piece.Text);
            }
            else if (ev.TryPickDelta(out var end))
            {
                stop = end.Delta.StopReason?.Raw();
            }
        }

        string.Concat(pieces).Should().Be(Words);
        stop.Should().Be("refusal");
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

        events.Single(e => e.GetProperty("type").GetString() == "message_delta").GetProperty("delta").GetProperty("stop_reason").GetString().Should().Be("tool_use");
        var blocks = StreamShapes.ClaudeBlocks(events);
        blocks.Select(b => (b.Type, b.Name, b.Text)).Should().Equal(
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

        var completed = StreamShapes.ResponsesItems(events.Select(e => (e.GetProperty("type").GetString()!, e)));
        var output = completed.GetProperty("output").EnumerateArray().Select(i => i.GetProperty("type").GetString() == "message"
            ? "message:" + i.GetProperty("content")[0].GetProperty("text").GetString()
            : $"{i.GetProperty("name").GetString()}:{i.GetProperty("arguments").GetString()}").ToList();
        output.Should().Equal("message:Checking.", """get_weather:{"city":"Paris"}""", """get_time:{"tz":"UTC"}""", "message: Done.");
        completed.GetProperty("output").GetArrayLength().Should().Be(4);
    }
}
