using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// A whole answer already in the gateway's own shape reaches the client as the upstream's bytes (docs/server.md,
/// "Whole answers"); one that is not — a member the gateway always writes left out, one given twice, a usage it fixes or
/// estimates — is written by the gateway, with what it fills in. The upstream is a real Kestrel that is not our
/// simulator, sending the bytes the test chose.
/// </summary>
public sealed class AnswerPassThroughTests() : EchoGatewayTests("body-echo")
{
    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Gateway:Cache:Enabled"] = "true";
    }

    /// <summary>An answer as OpenAI sends one today (its member order, <c>annotations</c>, <c>service_tier</c>, usage details).</summary>
    private static string OpenAIAnswer(string content, string finish = "\"stop\"", string message = "\"refusal\":null,\"annotations\":[]", string usage = "\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12", string choiceExtra = "") =>
        "{\n  \"id\": \"chatcmpl-up1\",\n  \"object\": \"chat.completion\",\n  \"created\": 1700000000,\n  \"model\": \"m-up-2024\",\n  \"choices\": [\n    {\n      \"index\": 0,\n"
        + $"      \"message\": {{\n        \"role\": \"assistant\",\n        \"content\": {content},\n        {message}\n      }},\n      \"logprobs\": null,\n      \"finish_reason\": {finish}{choiceExtra}\n    }}\n  ],\n"
        + $"  \"usage\": {{\n    {usage},\n    \"prompt_tokens_details\": {{ \"cached_tokens\": 0, \"audio_tokens\": 0 }},\n    \"completion_tokens_details\": {{ \"reasoning_tokens\": 0 }}\n  }},\n"
        + "  \"service_tier\": \"default\",\n  \"system_fingerprint\": \"fp_1\"\n}\n";

    [Fact]
    public async Task An_answer_in_theGateways_shape_goes_out_as_theUpstream_sent_it()
    {
        // Pretty-printed, literal UTF-8 and HTML characters, an emoji unescaped (the gateway's writer would escape it as a
        // surrogate pair), members the gateway does not model at every level (Azure's content_filter_results in the choice).
        var sent = OpenAIAnswer("\"héllo 世界 <b>& 🙂\"", choiceExtra: ",\n      \"content_filter_results\": { \"hate\": { \"filtered\": false } }");

        var (body, response) = await AskAsync(sent);

        body.Should().Be(sent, "an answer in the gateway's shape is forwarded byte for byte");
        response.Content.Headers.ContentLength.Should().Be(Encoding.UTF8.GetByteCount(sent));
        response.Content.Headers.ContentType!.MediaType.Should().Be("application/json");
        response.Headers.GetValues("x-gateway-provider").Should().Equal("echo");
        decimal.Parse(response.Headers.GetValues("x-gateway-cost-usd").Single(), System.Globalization.CultureInfo.InvariantCulture).Should().Be(0m, "m-up has no price; the header is the gateway's, whatever the body");
    }

    /// <summary>
    /// Answers the gateway must change, or that a client might read otherwise than it does: written by the gateway
    /// (every member it always writes present once, what it fills filled, its fixes applied).
    /// </summary>
    [Theory]
    [InlineData("no refusal", "\"annotations\":[]", null, null)]
    [InlineData("no finish reason", null, "null", null)]
    [InlineData("a total below its parts", null, null, "\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":5")]
    [InlineData("content twice", "\"refusal\":null,\"content\":\"second\"", null, null)]
    [InlineData("an unknown member twice", "\"refusal\":null,\"audio\":1,\"audio\":2", null, null)]
    [InlineData("content as parts", null, null, null)]
    public async Task An_answer_off_theGateways_shape_is_written_by_theGateway(string why, string? message, string? finish, string? usage)
    {
        var content = why == "content as parts" ? "[{\"type\":\"text\",\"text\":\"hi\"}]" : "\"hi\"";
        var sent = OpenAIAnswer(content, finish ?? "\"stop\"", message ?? "\"refusal\":null,\"annotations\":[]", usage ?? "\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12");

        var (body, _) = await AskAsync(sent);

        body.Should().NotBe(sent, why);
        body.Should().NotContain("\n  ", "the gateway writes it compact");
        var answer = JsonNode.Parse(body)!;
        var written = answer["choices"]![0]!;
        written["message"]!.AsObject().Should().ContainKey("refusal", "the gateway always writes refusal (null when absent)");
        written["finish_reason"]!.GetValue<string>().Should().Be("stop");
        answer["usage"]!["total_tokens"]!.GetValue<int>().Should().Be(12, "a total below its parts is raised to their sum");
        answer["service_tier"]!.GetValue<string>().Should().Be("default", "members the gateway does not model are written back");
        if (why == "content twice")
        {
            written["message"]!["content"]!.GetValue<string>().Should().Be("second", "the gateway reads the last, and writes only that one");
        }
        else if (why == "an unknown member twice")
        {
            body.Split("\"audio\"").Should().HaveCount(2, "written once, the last value");
            written["message"]!["audio"]!.GetValue<int>().Should().Be(2);
        }
    }

    [Theory]
    [InlineData("{\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m-up\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}]}", "no usage: the gateway's estimate")]
    [InlineData("{\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m-up\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}", "no id: the gateway's")]
    [InlineData("{\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m-up\",\"gateway\":{\"provider\":\"forged\"},\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}", "a gateway member: dropped")]
    [InlineData("{\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m-up\",\"choices\":[{\"index\":0,\"message\":{\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}", "no role: assistant")]
    public async Task What_theGateway_fills_or_drops_is_in_what_the_client_gets(string sent, string why)
    {
        var (body, _) = await AskAsync(sent);

        body.Should().NotBe(sent, why);
        var answer = JsonNode.Parse(body)!;
        answer["id"]!.GetValue<string>().Should().StartWith("chatcmpl-");
        answer["usage"]!["total_tokens"]!.GetValue<int>().Should().BePositive();
        answer["choices"]![0]!["message"]!["role"]!.GetValue<string>().Should().Be("assistant");
        body.Should().NotContain("forged");
        if (why.StartsWith("no usage", StringComparison.Ordinal))
        {
            answer["usage"]!["estimated"]!.GetValue<bool>().Should().BeTrue();
        }
    }

    [Fact]
    public async Task A_cache_hit_of_an_answer_kept_as_its_bytes_says_what_theUpstreams_answer_said()
    {
        var sent = OpenAIAnswer("\"cached 世界 🙂\"", choiceExtra: ",\n      \"content_filter_results\": { \"hate\": { \"filtered\": false } }");

        var (first, firstResponse) = await AskAsync(sent);
        var (hit, hitResponse) = await AskAsync(sent);

        first.Should().Be(sent);
        firstResponse.Headers.GetValues("x-gateway-cache").Should().Equal("miss");
        hitResponse.Headers.GetValues("x-gateway-cache").Should().Equal("hit");
        JsonNode.DeepEquals(JsonNode.Parse(hit), JsonNode.Parse(sent)).Should().BeTrue($"the cache stored the upstream's answer and the hit writes it, Azure's filter results and all:\n{hit}");
    }

    /// <summary>
    /// A queue of the user's own between the endpoint and the gateway's (registered before the gateway's) may change
    /// the answers it hands on: the endpoint then writes the objects, never bytes that no longer say what they do —
    /// whole answers and stream chunks alike.
    /// </summary>
    [Fact]
    public async Task Answers_through_a_users_own_queue_are_written_as_that_queue_left_them()
    {
        var settings = Upstream.EchoSettings("body-echo");
        Upstream.AddProvider(settings, 1, "sse", "OpenAICompatible", "sse-echo", "s");
        await using var gateway = await GatewayApp.StartAsync(settings, Ct, services =>
        {
            services.AddSingleton<PipelineGateway.Pipeline.GatewayQueue>();
            services.AddSingleton<IGatewayQueue>(sp => new StampingQueue(sp.GetRequiredService<PipelineGateway.Pipeline.GatewayQueue>()));
        });
        var http = gateway.Http;

        var whole = await AskAsync(OpenAIAnswer("\"hi\""), http: http);
        JsonNode.Parse(whole.Body)!["choices"]![0]!["message"]!["content"]!.GetValue<string>().Should().Be("hi (checked)");

        var chunk = "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"s\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}";
        var sse = $"data: {chunk}\n\ndata: {chunk.Replace("{\"content\":\"hi\"}", "{}", StringComparison.Ordinal).Replace("\"finish_reason\":null", "\"finish_reason\":\"stop\"", StringComparison.Ordinal)}\n\ndata: [DONE]\n\n";
        var streamed = JsonSerializer.Serialize(new { model = "s", stream = true, messages = new[] { new { role = "user", content = sse } } });
        using var response = await http.PostAsync("v1/chat/completions", new StringContent(streamed, Encoding.UTF8, "application/json"), Ct);
        var events = await response.Content.ReadAsStringAsync(Ct);
        events.Should().Contain("hi (checked)").And.NotContain("\"hi\"");
    }

    /// <summary>A user's queue that changes each answer's text on its way through.</summary>
    private sealed class StampingQueue(IGatewayQueue inner) : IGatewayQueue
    {
        public ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
            SubmitAsync(request, SubmitMode.Wait, cancellationToken);

        public async ValueTask<ChatCompletionResponse> SubmitAsync(ChatCompletionRequest request, SubmitMode mode, CancellationToken cancellationToken = default)
        {
            var response = await inner.SubmitAsync(request, mode, cancellationToken);
            response.Choices[0].Message!.Content = new MessageContent(response.Content + " (checked)");
            return response;
        }

        public IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, CancellationToken cancellationToken = default) =>
            StreamAsync(request, SubmitMode.Wait, cancellationToken);

        public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ChatCompletionRequest request, SubmitMode mode, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
        {
            await foreach (var chunk in inner.StreamAsync(request, mode, cancellationToken))
            {
                if (chunk.Choices is [{ Delta.Content: { } text } choice, ..])
                {
                    choice.Delta.Content = text + " (checked)";
                }

                yield return chunk;
            }
        }
    }

    private async Task<(string Body, HttpResponseMessage Response)> AskAsync(string answer, HttpClient? http = null)
    {
        var request = JsonSerializer.Serialize(new { model = "m", messages = new[] { new { role = "user", content = answer } } });
        var response = await (http ?? Gateway.Http).PostAsync("v1/chat/completions", new StringContent(request, Encoding.UTF8, "application/json"), Ct);
        var body = Encoding.UTF8.GetString(await response.Content.ReadAsByteArrayAsync(Ct));
        response.IsSuccessStatusCode.Should().BeTrue(body);
        return (body, response);
    }
}
