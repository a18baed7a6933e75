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

    /// <summary>
    /// A kept value (a tool's schema) goes upstream as the client's bytes — the same JSON, its spacing and escapes the
    /// client's — and a value holding bytes that are not UTF-8 (possible only for a library caller's own value: the
    /// front door refuses such a body) is written as UTF-8.
    /// </summary>
    [Fact]
    public void A_kept_value_is_written_as_its_own_bytes_when_they_are_UTF_8()
    {
        var schema = JsonDocument.Parse("{ \"type\" : \"object\", \"description\": \"a \\u0026 b\" }"u8.ToArray()).RootElement;
        Written(schema).Should().Equal("{ \"type\" : \"object\", \"description\": \"a \\u0026 b\" }"u8.ToArray());

        var notUtf8 = JsonDocument.Parse(new byte[] { (byte)'{', (byte)'"', (byte)'a', (byte)'"', (byte)':', (byte)'"', 0xFF, 0xFE, (byte)'"', (byte)'}' }).RootElement;
        var written = Written(notUtf8);
        System.Text.Unicode.Utf8.IsValid(written).Should().BeTrue();
        JsonDocument.Parse(written).RootElement.GetProperty("a").GetString().Should().Be("\uFFFD\uFFFD");
    }

    private static byte[] Written(JsonElement value)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = WireJson.Encoder }))
        {
            WireJson.WriteValue(w, value);
        }

        return buffer.ToArray();
    }
}
