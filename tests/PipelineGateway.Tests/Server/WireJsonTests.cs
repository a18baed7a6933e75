using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Serialization;
using PipelineGateway.Server;

namespace PipelineGateway.Tests.Server;

/// <summary>A non-streamed answer the gateway writes keeps non-ASCII text as UTF-8 (streamed events: StreamPassThroughTests).</summary>
public sealed class WireJsonTests
{
    [Fact]
    public async Task A_whole_answer_is_written_with_its_text_as_UTF_8_and_reads_back_the_same()
    {
        const string Text = "héllo 世界 <b>&'";
        var context = new DefaultHttpContext();
        using var body = new MemoryStream();
        context.Response.Body = body;
        var answer = new ChatCompletionResponse
        {
            Id = "chatcmpl-1",
            Model = "m",
            Choices = [new ChatChoice { Index = 0, Message = ChatCompletionMessage.Assistant(Text), FinishReason = "stop" }],
        };

        await JsonBody.WriteAsync(context.Response, answer, GatewayJsonContext.Default.ChatCompletionResponse, TestContext.Current.CancellationToken);

        var json = Encoding.UTF8.GetString(body.ToArray());
        json.Should().Contain(Text);
        JsonSerializer.Deserialize(json, GatewayJsonContext.Default.ChatCompletionResponse)!.Content.Should().Be(Text);
    }
}
