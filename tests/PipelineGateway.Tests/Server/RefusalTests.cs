#pragma warning disable OPENAI001 // the OpenAI SDK marks its Responses client as evaluation-only
using System.ClientModel;
using Anthropic;
using Anthropic.Models.Messages;
using FluentAssertions;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Responses;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// A model that declines (OpenAI's <c>refusal</c>, from an upstream that is not our simulator) reaches every front door
/// with its words, whole and streamed, each read by its official SDK: the chat format's refusal as it came, the Responses
/// API's refusal content part (and its <c>response.refusal.*</c> events), and a Claude caller's text with the stop reason
/// <c>refusal</c>. It reached the last two as an empty answer.
/// </summary>
public sealed class RefusalTests : IAsyncLifetime
{
    private const string Words = "I can't help with that.";
    private ScriptedUpstream _upstream = null!;
    private ScriptedGateway _gateway = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Uri V1 => new(_gateway.Http.BaseAddress!, "v1");

    public async ValueTask InitializeAsync()
    {
        _upstream = await ScriptedUpstream.StartAsync(Ct);
        _gateway = await ScriptedGateway.StartAsync(_upstream.BaseAddress, _upstream, ["refusal"], "gpt-4o", Ct);
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
}
