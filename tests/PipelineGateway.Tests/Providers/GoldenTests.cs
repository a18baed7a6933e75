using System.Net;
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.Logging.Abstractions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.OpenAI;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>Bodies written from the public OpenAI and Anthropic API references, parsed by the adapters.</summary>
public sealed class GoldenTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static string Golden(string name) => File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Providers", "Golden", name));

    private static OpenAIChatProvider OpenAI(StubHandler stub) =>
        new("openai", new HttpClient(stub), new ProviderOptions { Name = "openai", Type = ProviderTypes.OpenAI, BaseUrl = "https://api.example.test/v1" }, "sk-golden-key-0000", TimeProvider.System, NullLogger.Instance);

    private static AnthropicChatProvider Anthropic(StubHandler stub) =>
        new("anthropic", new HttpClient(stub), new ProviderOptions { Name = "anthropic", Type = ProviderTypes.Anthropic, BaseUrl = "https://api.example.test/v1" }, "sk-ant-golden", TimeProvider.System, NullLogger.Instance);

    private static ProviderRequest Ask() => new(new ChatCompletionRequest { Model = "g", Messages = [ChatCompletionMessage.User("Weather in Boston?")] }, "gpt-4o-mini");

    [Fact]
    public async Task OpenAI_tool_call_response_is_parsed_with_every_field()
    {
        var response = await OpenAI(new StubHandler(HttpStatusCode.OK, Golden("openai-tool-call.json"))).CompleteAsync(Ask(), Ct);

        response.Id.Should().Be("chatcmpl-abc123");
        response.Model.Should().Be("gpt-4o-mini-2024-07-18");
        response.SystemFingerprint.Should().Be("fp_44709d6fcb");
        response.FinishReason.Should().Be("tool_calls");
        var call = response.Choices[0].Message!.ToolCalls!.Single();
        call.Id.Should().Be("call_abc123");
        call.Function!.Name.Should().Be("get_current_weather");
        JsonDocument.Parse(call.Function.Arguments!).RootElement.GetProperty("location").GetString().Should().Be("Boston, MA");
        response.Usage!.TotalTokens.Should().Be(99);
        response.Usage.AdditionalProperties!.Should().ContainKey("prompt_tokens_details");
        response.AdditionalProperties!.Should().ContainKey("service_tier", "unknown fields are kept");
    }

    [Fact]
    public async Task OpenAI_tool_call_only_answer_is_passed_on_in_the_OpenAI_shape_field_for_field()
    {
        // What OpenAI sends for a tool-call-only answer (content null, refusal null, logprobs null, unknown fields) is
        // what the gateway's own clients receive: parsed by the adapter and written by the gateway's serializer.
        var response = await OpenAI(new StubHandler(HttpStatusCode.OK, Golden("openai-tool-call.json"))).CompleteAsync(Ask(), Ct);

        var written = System.Text.Json.Nodes.JsonNode.Parse(JsonSerializer.Serialize(response, GatewayJsonContext.Default.ChatCompletionResponse));
        var golden = System.Text.Json.Nodes.JsonNode.Parse(Golden("openai-tool-call.json"));
        System.Text.Json.Nodes.JsonNode.DeepEquals(written, golden).Should().BeTrue($"the gateway writes\n{written}\nand OpenAI's reference is\n{golden}");
        var message = written!["choices"]![0]!["message"]!.AsObject();
        message.Should().ContainKey("content").WhoseValue.Should().BeNull("a tool-call-only answer has \"content\": null, not no content key");
    }

    [Fact]
    public async Task Anthropic_tool_use_only_answer_is_written_with_content_null_refusal_null_and_logprobs_null()
    {
        const string body = """{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"toolu_01","name":"get_current_weather","input":{"location":"Boston, MA"}}],"stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":5}}""";
        var response = await Anthropic(new StubHandler(HttpStatusCode.OK, body)).CompleteAsync(Ask(), Ct);

        var choice = JsonDocument.Parse(JsonSerializer.Serialize(response, GatewayJsonContext.Default.ChatCompletionResponse)).RootElement.GetProperty("choices")[0];
        choice.GetProperty("message").GetProperty("content").ValueKind.Should().Be(JsonValueKind.Null);
        choice.GetProperty("message").GetProperty("refusal").ValueKind.Should().Be(JsonValueKind.Null);
        choice.GetProperty("logprobs").ValueKind.Should().Be(JsonValueKind.Null);
        choice.GetProperty("finish_reason").GetString().Should().Be("tool_calls");
        choice.GetProperty("message").GetProperty("tool_calls")[0].GetProperty("function").GetProperty("name").GetString().Should().Be("get_current_weather");
    }

    [Fact]
    public async Task Parallel_tool_calls_false_reaches_Anthropic_as_disable_parallel_tool_use()
    {
        var stub = new StubHandler(HttpStatusCode.OK, """{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}""");
        var request = JsonSerializer.Deserialize("""
            {"model":"g","messages":[{"role":"user","content":"What is the weather in Boston and in Paris?"}],"max_tokens":1024,"parallel_tool_calls":false,
             "tools":[{"type":"function","function":{"name":"get_current_weather","description":"Get the current weather in a given location",
               "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}}]}
            """, GatewayJsonContext.Default.ChatCompletionRequest)!;

        await Anthropic(stub).CompleteAsync(new ProviderRequest(request, "claude-sonnet-4-5"), Ct);

        var sent = System.Text.Json.Nodes.JsonNode.Parse(stub.LastBody!);
        var golden = System.Text.Json.Nodes.JsonNode.Parse(Golden("anthropic-request-parallel-tools.json"));
        System.Text.Json.Nodes.JsonNode.DeepEquals(sent, golden).Should().BeTrue($"the adapter sent\n{sent}\nand the golden request is\n{golden}");
    }

    [Fact]
    public async Task OpenAI_context_length_error_body_is_its_own_failure_class()
    {
        var act = async () => await OpenAI(new StubHandler(HttpStatusCode.BadRequest, Golden("openai-error-context.json"))).CompleteAsync(Ask(), Ct);

        var failure = (await act.Should().ThrowAsync<ProviderException>()).Which;
        failure.Outcome.Should().Be(AttemptOutcome.ContextLengthExceeded);
        failure.Message.Should().Contain("maximum context length is 128000 tokens");
    }

    [Fact]
    public async Task OpenAI_stream_with_usage_in_its_last_chunk()
    {
        var chunks = await OpenAI(new StubHandler(HttpStatusCode.OK, Golden("openai-stream-usage.sse"), "text/event-stream")).StreamAsync(Ask(), Ct).ToListAsync(Ct);

        chunks.Should().HaveCount(5);
        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("Hello there");
        chunks[3].Choices[0].FinishReason.Should().Be("stop");
        chunks[^1].Choices.Should().BeEmpty();
        chunks[^1].Usage!.Should().BeEquivalentTo(new { PromptTokens = 9, CompletionTokens = 2, TotalTokens = 11 });
    }

    [Fact]
    public async Task OpenAI_streamed_tool_call_deltas_assemble_into_the_arguments()
    {
        var chunks = await OpenAI(new StubHandler(HttpStatusCode.OK, Golden("openai-stream-tool-call.sse"), "text/event-stream")).StreamAsync(Ask(), Ct).ToListAsync(Ct);

        var deltas = chunks.SelectMany(c => c.Choices).SelectMany(c => c.Delta.ToolCalls ?? []).ToList();
        deltas[0].Id.Should().Be("call_DdmO9pD3xa9XTPNJ32zg2hcA");
        deltas[0].Function!.Name.Should().Be("get_weather");
        string.Concat(deltas.Select(d => d.Function!.Arguments)).Should().Be("""{"location":"Paris"}""");
        chunks[^1].Choices[0].FinishReason.Should().Be("tool_calls");
    }

    [Fact]
    public async Task OpenAI_request_carries_unknown_fields_and_asks_for_streamed_usage()
    {
        var stub = new StubHandler(HttpStatusCode.OK, Golden("openai-stream-usage.sse"), "text/event-stream");
        var request = JsonSerializer.Deserialize("""
            {"model":"group","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"logit_bias":{"50256":-100},"reasoning_effort":"low","stop":"END"}
            """, GatewayJsonContext.Default.ChatCompletionRequest)!;

        await OpenAI(stub).StreamAsync(new ProviderRequest(request, "gpt-4o"), Ct).ToListAsync(Ct);

        var sent = JsonDocument.Parse(stub.LastBody!).RootElement;
        sent.GetProperty("model").GetString().Should().Be("gpt-4o");
        sent.GetProperty("stream").GetBoolean().Should().BeTrue();
        sent.GetProperty("stream_options").GetProperty("include_usage").GetBoolean().Should().BeTrue();
        sent.GetProperty("logit_bias").GetProperty("50256").GetInt32().Should().Be(-100);
        sent.GetProperty("reasoning_effort").GetString().Should().Be("low");
        sent.GetProperty("stop").GetString().Should().Be("END");
        stub.LastRequest!.Headers.Authorization!.ToString().Should().Be("Bearer sk-golden-key-0000");
        stub.LastRequest.RequestUri!.ToString().Should().Be("https://api.example.test/v1/chat/completions");
        request.Model.Should().Be("group", "the caller's request is never modified");
    }

    [Fact]
    public async Task Azure_uses_the_deployment_url_the_api_key_header_and_the_api_version()
    {
        var stub = new StubHandler(HttpStatusCode.OK, Golden("openai-tool-call.json"));
        var azure = new OpenAIChatProvider("azure", new HttpClient(stub), new ProviderOptions { Name = "azure", Type = ProviderTypes.AzureOpenAI, BaseUrl = "https://myres.openai.azure.com", AzureApiVersion = "2024-10-21" }, "azure-key", TimeProvider.System, NullLogger.Instance);

        await azure.CompleteAsync(new ProviderRequest(Ask().Request, "my-gpt4o-deployment"), Ct);

        stub.LastRequest!.RequestUri!.ToString().Should().Be("https://myres.openai.azure.com/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21");
        stub.LastRequest.Headers.GetValues("api-key").Should().Equal("azure-key");
        stub.LastRequest.Headers.Authorization.Should().BeNull();
    }

    [Fact]
    public async Task Anthropic_message_with_tool_use_becomes_a_canonical_tool_call()
    {
        var response = await Anthropic(new StubHandler(HttpStatusCode.OK, Golden("anthropic-message.json"))).CompleteAsync(Ask(), Ct);

        response.Id.Should().Be("msg_01Aq9w938a90dw8q");
        response.FinishReason.Should().Be(FinishReasons.ToolCalls);
        response.Content.Should().Be("I'll check the weather.");
        var call = response.Choices[0].Message!.ToolCalls!.Single();
        call.Id.Should().Be("toolu_01A09q90qw90lq917835lq9");
        call.Function!.Name.Should().Be("get_weather");
        JsonDocument.Parse(call.Function.Arguments!).RootElement.GetProperty("unit").GetString().Should().Be("celsius");
        response.Usage!.PromptTokens.Should().Be(2195, "cache reads count as prompt tokens");
        response.Usage.CompletionTokens.Should().Be(503);
    }

    [Fact]
    public async Task Anthropic_stream_with_ping_and_input_json_delta_becomes_canonical_chunks()
    {
        var chunks = await Anthropic(new StubHandler(HttpStatusCode.OK, Golden("anthropic-stream-tool-use.sse"), "text/event-stream")).StreamAsync(Ask(), Ct).ToListAsync(Ct);

        chunks[0].Id.Should().Be("msg_014p7gG3wDgGV9EUtLvnow3U");
        chunks[0].Choices[0].Delta.Role.Should().Be("assistant");
        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("Okay, let me check.");
        var deltas = chunks.SelectMany(c => c.Choices).SelectMany(c => c.Delta.ToolCalls ?? []).ToList();
        deltas[0].Should().Match<ToolCall>(t => t.Index == 0 && t.Id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" && t.Function!.Name == "get_weather");
        string.Concat(deltas.Select(d => d.Function!.Arguments)).Should().Be("""{"location": "San Francisco, CA"}""");
        chunks.SelectMany(c => c.Choices).Select(c => c.FinishReason).Should().Contain(FinishReasons.ToolCalls);
        chunks[^1].Usage!.Should().BeEquivalentTo(new { PromptTokens = 472, CompletionTokens = 89, TotalTokens = 561 });
    }

    [Fact]
    public async Task Anthropic_overloaded_error_event_is_retryable()
    {
        var act = async () => await Anthropic(new StubHandler(HttpStatusCode.OK, Golden("anthropic-error-overloaded.sse"), "text/event-stream")).StreamAsync(Ask(), Ct).ToListAsync(Ct);

        var failure = (await act.Should().ThrowAsync<ProviderException>()).Which;
        failure.Outcome.Should().Be(AttemptOutcome.RetryableError);
        failure.StatusCode.Should().Be(529);
    }

    [Fact]
    public async Task Anthropic_rate_limit_error_body_is_rate_limited_with_retry_after()
    {
        var stub = new StubHandler((HttpStatusCode)429, """{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}""");
        stub.ResponseHeaders["retry-after"] = "17";

        var act = async () => await Anthropic(stub).CompleteAsync(Ask(), Ct);

        var failure = (await act.Should().ThrowAsync<ProviderException>()).Which;
        failure.Outcome.Should().Be(AttemptOutcome.RateLimited);
        failure.RetryAfter.Should().Be(TimeSpan.FromSeconds(17));
    }
}
