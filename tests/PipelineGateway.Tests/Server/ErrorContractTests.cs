using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Anthropic;
using Anthropic.Exceptions;
using Anthropic.Models.Messages;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using OpenAI;
using OpenAI.Chat;
using PipelineGateway.Metrics;
using PipelineGateway.Server;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// What clients are told when upstreams fail (docs/routing.md, the error table), checked with the official OpenAI and
/// Anthropic SDKs against the gateway's HTTP server in front of real simulators with scripted faults — one simulator
/// per provider, so every upstream call is counted.
/// </summary>
public sealed class ErrorContractTests : IAsyncLifetime
{
    private const string Key = "sk-gw-contract-0123456789";
    private const string OtherKey = "sk-gw-contract-other-0123456789";
    private SimulatorFleet _fleet = null!;

    private Dictionary<string, SimulatorServer> _sims => _fleet.Sims;

    private WebApplication _app => _fleet.App;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Uri Base => _fleet.Base;

    /// <summary>Provider name → (type, scripted fault): each gets its own simulator.</summary>
    private static readonly (string Name, string Type, string? Fault)[] Providers =
    [
        ("bad-request", "OpenAICompatible", "status=400;code=invalid_value;param=temperature;message=Invalid value for temperature"),
        ("too-long", "OpenAICompatible", "context-length"),
        ("limited-a", "OpenAICompatible", "status=429;retry-after=3"),
        ("limited-b", "OpenAICompatible", "status=429;retry-after=5"),
        ("revoked", "OpenAICompatible", "status=401;code=invalid_api_key;message=Incorrect API key provided"),
        ("overloaded-stream", "OpenAICompatible", "stream-error=server_error"),
        ("down", "OpenAICompatible", "status=503"),
        ("anthropic-bad", "Anthropic", "status=400;message=max_tokens: must be positive"),
        ("anthropic-overloaded", "Anthropic", "stream-error=overloaded_error"),
        ("anthropic-plain", "Anthropic", null),
        ("backup", "OpenAICompatible", null),
    ];

    /// <summary>Model → its deployments' providers, in priority order.</summary>
    private static readonly (string Model, string[] Providers)[] Models =
    [
        ("invalid", ["bad-request", "backup"]),
        ("context", ["too-long"]),
        ("limited", ["limited-a", "limited-b"]),
        ("revoked", ["revoked", "backup"]),
        ("revoked-only", ["revoked"]),
        ("overloaded-stream", ["overloaded-stream", "backup"]),
        ("down", ["down"]),
        ("anthropic-invalid", ["anthropic-bad", "backup"]),
        ("anthropic-overloaded", ["anthropic-overloaded", "backup"]),
        ("anthropic-only", ["anthropic-plain"]),
        ("anthropic-first", ["anthropic-plain", "backup"]),
    ];

    public async ValueTask InitializeAsync()
    {
        _fleet = await SimulatorFleet.StartAsync(Providers, Models, "gpt-4o-mini", new Dictionary<string, string?>
        {
            ["Gateway:Server:Keys:0:Id"] = "contract",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:1:Id"] = "other",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(OtherKey),
            ["Gateway:Pipeline:RetryBaseDelay"] = "00:00:00.010",
            ["Gateway:Pipeline:RetryMaxDelay"] = "00:00:00.020",
            ["Gateway:Server:CountTokensPerMinute"] = "2",
        }, Ct);
    }

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private long Calls(string provider) => _sims[provider].Requests;

    private ChatClient OpenAIClient(string model, int? retries = null) => new(model, new ApiKeyCredential(Key), new OpenAIClientOptions
    {
        Endpoint = new Uri(Base, "v1"),
        RetryPolicy = retries is { } n ? new ClientRetryPolicy(n) : null,
    });

    private AnthropicClient AnthropicClient(int retries = 0) => new() { ApiKey = Key, BaseUrl = Base.ToString().TrimEnd('/'), MaxRetries = retries };

    private static MessageCreateParams Ask(string model, string text = "Hello") => new() { Model = model, MaxTokens = 32, Messages = [new UserMessageParam { Content = text }] };

    private static JsonElement ErrorOf(ClientResultException ex) => JsonDocument.Parse(ex.GetRawResponse()!.Content.ToString()).RootElement.GetProperty("error");

    /// <summary>A plain client with the gateway key and Anthropic's version header, for bodies the SDKs do not build.</summary>
    private static HttpClient AnthropicHttp()
    {
        var http = new HttpClient();
        http.DefaultRequestHeaders.Add("x-api-key", Key);
        http.DefaultRequestHeaders.Add("anthropic-version", "2023-06-01");
        return http;
    }

    private async Task<(HttpStatusCode Status, string Body)> PostAsync(HttpClient http, string path, object body)
    {
        var response = await http.PostAsync(new Uri(Base, path), new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"), Ct);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }

    /// <summary>A stream's events (the <c>data:</c> lines' JSON).</summary>
    private static List<JsonElement> SseEvents(string stream) =>
        [.. stream.Split('\n').Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => JsonDocument.Parse(l[6..]).RootElement)];

    [Fact]
    public async Task An_upstream_400_reaches_the_OpenAI_SDK_as_a_400_with_the_upstreams_code_and_param_and_is_sent_once()
    {
        // The SDK's default retry policy is on: it retries 5xx and 429, so a 400 must arrive as a 400 to be sent once.
        var act = async () => await OpenAIClient("invalid").CompleteChatAsync([new UserChatMessage("hi")], cancellationToken: Ct);

        var ex = (await act.Should().ThrowAsync<ClientResultException>()).Which;
        ex.Status.Should().Be(400);
        var error = ErrorOf(ex);
        error.GetProperty("type").GetString().Should().Be("invalid_request_error");
        error.GetProperty("code").GetString().Should().Be("invalid_value");
        error.GetProperty("param").GetString().Should().Be("temperature");
        error.GetProperty("message").GetString().Should().Be("Invalid value for temperature");
        Calls("bad-request").Should().Be(1, "not retried by the gateway, nor by the SDK");
        Calls("backup").Should().Be(0, "a client's mistake is not failed over");
    }

    /// <summary>A tool call and its result: <paramref name="arguments"/> as the assistant's call carried them.</summary>
    private static List<ChatMessage> ToolTurn(string arguments) =>
    [
        new UserChatMessage("Weather in Paris?"),
        new AssistantChatMessage([ChatToolCall.CreateFunctionToolCall("call_1", "get_weather", BinaryData.FromString(arguments))]),
        new ToolChatMessage("call_1", "18C and sunny"),
    ];

    [Fact]
    public async Task Tool_arguments_an_Anthropic_deployment_cannot_carry_are_a_400_naming_them_and_nothing_is_sent()
    {
        // Arguments a model produced that are not a JSON object: Anthropic's input must be one. Sending {} instead
        // would ask the upstream about another call than the caller's.
        for (var i = 0; i < 6; i++)
        {
            var act = async () => await OpenAIClient("anthropic-only").CompleteChatAsync(ToolTurn("city=Paris"), cancellationToken: Ct);

            var ex = (await act.Should().ThrowAsync<ClientResultException>()).Which;
            ex.Status.Should().Be(400, "the request as sent cannot be carried: the SDK must not retry it");
            var error = ErrorOf(ex);
            error.GetProperty("type").GetString().Should().Be("invalid_request_error");
            error.GetProperty("code").GetString().Should().Be("unsupported_value");
            error.GetProperty("param").GetString().Should().Be("messages[1].tool_calls[0].function.arguments");
            error.GetProperty("message").GetString().Should().Contain("not JSON").And.NotContain("city=Paris");
        }

        Calls("anthropic-plain").Should().Be(0, "nothing was sent in place of the caller's arguments");
        var snapshot = _app.Services.GetRequiredService<IGatewayMetrics>().GetSnapshot();
        var health = snapshot.Deployments["anthropic-only/anthropic-plain/gpt-4o-mini"];
        health.HealthState.Should().Be("closed", "more failures than ConsecutiveFailures, none of them the deployment's");
        health.Requests.Should().Be(0, "no attempt reached it");
        snapshot.Providers["anthropic-plain"].Requests.Should().Be(0, "attempts sent to the provider: none");
        snapshot.FailedRequests.Should().Be(6, "the callers' requests did fail");

        var answer = await OpenAIClient("anthropic-only").CompleteChatAsync(ToolTurn("""{"city":"Paris"}"""), cancellationToken: Ct);
        answer.Value.Content[0].Text.Should().NotBeEmpty();
        Calls("anthropic-plain").Should().Be(1);
    }

    [Fact]
    public async Task A_conversation_begun_on_another_model_goes_on_with_Claude_whatever_its_tool_ids()
    {
        // Kimi K2's tool ids: Claude refuses a tool_use or tool_result id outside ^[a-zA-Z0-9_-]+$ with a 400, and so does
        // the simulator (in Anthropic's words). A conversation moved to Claude — a model switch, a fallback — carries them.
        const string KimiId = "functions.get_weather:0";
        List<ChatMessage> turn =
        [
            new UserChatMessage("Weather in Paris?"),
            new AssistantChatMessage([ChatToolCall.CreateFunctionToolCall(KimiId, "get_weather", BinaryData.FromString("""{"city":"Paris"}"""))]),
            new ToolChatMessage(KimiId, "18C and sunny"),
        ];

        var answer = await OpenAIClient("anthropic-only").CompleteChatAsync(turn, cancellationToken: Ct);
        answer.Value.Content[0].Text.Should().NotBeEmpty();

        // An Anthropic client whose history came from a Kimi deployment, whole and streamed.
        using var http = AnthropicHttp();
        foreach (var stream in new[] { false, true })
        {
            var body = $$$"""{"model":"anthropic-only","max_tokens":32,"stream":{{{(stream ? "true" : "false")}}},"messages":[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":[{"type":"tool_use","id":"{{{KimiId}}}","name":"get_weather","input":{"city":"Paris"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"{{{KimiId}}}","content":"18C and sunny"}]}]}""";
            using var response = await http.PostAsync(new Uri(Base, "v1/messages"), new StringContent(body, System.Text.Encoding.UTF8, "application/json"), Ct);
            var text = await response.Content.ReadAsStringAsync(Ct);
            ((int)response.StatusCode).Should().Be(200, text);
            text.Should().NotContain("should match pattern");
        }
    }

    [Fact]
    public async Task A_request_one_deployment_cannot_carry_goes_as_it_is_to_one_that_can_whole_and_streamed()
    {
        var answer = await OpenAIClient("anthropic-first", retries: 0).CompleteChatAsync(ToolTurn("city=Paris"), cancellationToken: Ct);
        answer.Value.Content[0].Text.Should().NotBeEmpty();
        Calls("anthropic-plain").Should().Be(0);
        Calls("backup").Should().Be(1, "the OpenAI-compatible deployment takes any arguments text");

        var text = new StringBuilder();
        await foreach (var update in OpenAIClient("anthropic-first", retries: 0).CompleteChatStreamingAsync(ToolTurn("[1, 2]"), cancellationToken: Ct))
        {
            foreach (var part in update.ContentUpdate)
            {
                text.Append(part.Text);
            }
        }

        text.Length.Should().BePositive();
        Calls("anthropic-plain").Should().Be(0);
        Calls("backup").Should().Be(2);
    }

    [Fact]
    public async Task Log_probabilities_an_Anthropic_deployment_cannot_give_are_a_400_or_come_from_a_deployment_that_can()
    {
        var options = new ChatCompletionOptions { IncludeLogProbabilities = true, TopLogProbabilityCount = 2 };

        var act = async () => await OpenAIClient("anthropic-only").CompleteChatAsync([new UserChatMessage("hi")], options, Ct);
        var ex = (await act.Should().ThrowAsync<ClientResultException>()).Which;
        ex.Status.Should().Be(400);
        ErrorOf(ex).GetProperty("param").GetString().Should().Be("logprobs");
        ErrorOf(ex).GetProperty("code").GetString().Should().Be("unsupported_value");
        Calls("anthropic-plain").Should().Be(0, "an answer without the log probabilities asked for is not the answer asked for");

        var answer = await OpenAIClient("anthropic-first").CompleteChatAsync([new UserChatMessage("hi")], options, Ct);
        answer.Value.Content[0].Text.Should().NotBeEmpty();
        Calls("anthropic-plain").Should().Be(0);
        Calls("backup").Should().Be(1);
    }

    /// <summary>
    /// Prompt caching from an Anthropic client (Claude Code marks its system prompt and latest turn): the marks reach the
    /// Anthropic upstream (the simulator caches a marked prefix of 1,024 tokens or more, as Anthropic does), the
    /// cache's writes and reads come back in Anthropic's usage fields, and a streamed answer is priced exactly as the
    /// same whole answer is (cache reads at the cached rate) — the stream used to lose the cache's share.
    /// </summary>
    [Fact]
    public async Task Prompt_caching_reaches_Claude_and_its_reads_and_writes_are_reported_and_priced_alike_whole_and_streamed()
    {
        using var http = AnthropicHttp();
        var rules = string.Join(' ', Enumerable.Repeat("Answer briefly, precisely, and cite the rule you follow.", 120));
        async Task<JsonElement> Ask(bool stream)
        {
            var (status, text) = await PostAsync(http, "v1/messages", new Dictionary<string, object>
            {
                ["model"] = "anthropic-only",
                ["max_tokens"] = 32,
                ["stream"] = stream,
                ["system"] = new object[] { new Dictionary<string, object> { ["type"] = "text", ["text"] = rules, ["cache_control"] = new Dictionary<string, string> { ["type"] = "ephemeral" } } },
                ["messages"] = new object[] { new Dictionary<string, object> { ["role"] = "user", ["content"] = "What is rule one?" } },
            });
            status.Should().Be(HttpStatusCode.OK, text);
            return stream
                ? SseEvents(text).Single(e => e.GetProperty("type").GetString() == "message_delta").GetProperty("usage").Clone()
                : JsonDocument.Parse(text).RootElement.GetProperty("usage").Clone();
        }

        decimal Spent() => _app.Services.GetRequiredService<IGatewayMetrics>().GetSnapshot().TotalCost;

        var first = await Ask(stream: false);
        first.GetProperty("cache_creation_input_tokens").GetInt32().Should().BeGreaterThanOrEqualTo(1024, "the marked system prompt was written to the cache");
        first.TryGetProperty("cache_read_input_tokens", out _).Should().BeFalse();
        var written = first.GetProperty("cache_creation_input_tokens").GetInt32();

        var before = Spent();
        var whole = await Ask(stream: false);
        var wholeCost = Spent() - before;
        before = Spent();
        var streamed = await Ask(stream: true);
        var streamedCost = Spent() - before;

        whole.GetProperty("cache_read_input_tokens").GetInt32().Should().Be(written, "the same prefix is read from the cache");
        streamed.GetProperty("cache_read_input_tokens").GetInt32().Should().Be(written);
        streamed.GetProperty("input_tokens").GetInt32().Should().Be(whole.GetProperty("input_tokens").GetInt32());
        wholeCost.Should().BePositive();
        streamedCost.Should().Be(wholeCost, "the same usage costs the same, streamed or not");
        Calls("anthropic-plain").Should().Be(3);
    }

    /// <summary>
    /// A tool loop with <c>reasoning_effort</c> on Claude from an OpenAI-format client: the first step thinks and calls the
    /// tool; the next comes as OpenAI's clients send it, the assistant's tool call without <c>thinking_blocks</c> — which
    /// Claude (and the simulator) refuses with thinking on ("a final assistant message must start with a thinking block"),
    /// so every such loop failed at its second step, then was answered without thinking. The gateway kept the first
    /// step's blocks under its tool call's id (per key) and gives them back: Claude thinks on, with its own signed blocks
    /// (the simulator, like Claude, refuses a block whose signature does not match) — the official OpenAI SDK unchanged,
    /// whole and streamed. A tool call the gateway did not answer for this key: answered without thinking, as before.
    /// </summary>
    [Fact]
    public async Task A_tool_loops_next_step_gets_its_thinking_back_from_the_gateway()
    {
        var weather = ChatTool.CreateFunctionTool("get_weather", "The weather in a city.", BinaryData.FromString("""{"type":"object","properties":{"city":{"type":"string"}}}"""));
#pragma warning disable OPENAI001 // reasoning_effort: marked experimental in the SDK, as its users set it
        var options = new ChatCompletionOptions { ReasoningEffortLevel = ChatReasoningEffortLevel.Low, MaxOutputTokenCount = 2048, Tools = { weather } };
#pragma warning restore OPENAI001
        var client = OpenAIClient("anthropic-only");
        static JsonElement Message(ClientResult result) => JsonDocument.Parse(result.GetRawResponse().Content.ToString()).RootElement.GetProperty("choices")[0].GetProperty("message");
        static int Blocks(JsonElement message) => message.TryGetProperty("thinking_blocks", out var b) && b.ValueKind == JsonValueKind.Array ? b.GetArrayLength() : 0;

        var ask = new UserChatMessage("Use get_weather for Oslo.");
        var first = await client.CompleteChatAsync([ask], options, Ct);
        Blocks(Message(first)).Should().BePositive("the first step thinks");
        var call = first.Value.ToolCalls.Single();

        var next = await client.CompleteChatAsync([ask, new AssistantChatMessage([call]), new ToolChatMessage(call.Id, "Sunny")], options, Ct);
        next.Value.Content[0].Text.Should().NotBeNullOrEmpty();
        Blocks(Message(next)).Should().BePositive("the gateway gave Claude its blocks back: it thinks on");

        // Streamed: the blocks gathered from the stream's pieces are kept the same way.
        var ids = new List<string>();
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Use get_weather for Bergen.")], options, Ct))
        {
            ids.AddRange(update.ToolCallUpdates.Where(u => !string.IsNullOrEmpty(u.ToolCallId)).Select(u => u.ToolCallId));
        }

        var streamedCall = ChatToolCall.CreateFunctionToolCall(ids.Single(), "get_weather", BinaryData.FromString("""{"city":"Bergen"}"""));
        var afterStream = await client.CompleteChatAsync([new UserChatMessage("Use get_weather for Bergen."), new AssistantChatMessage([streamedCall]), new ToolChatMessage(streamedCall.Id, "Rain")], options, Ct);
        Blocks(Message(afterStream)).Should().BePositive("a streamed step's thinking is kept too");

        // A tool call this gateway did not answer (a loop begun elsewhere): nothing to give back, answered without thinking.
        var elsewhere = ChatToolCall.CreateFunctionToolCall("toolu_begun_elsewhere_0001", "get_weather", BinaryData.FromString("""{"city":"Oslo"}"""));
        var plain = await client.CompleteChatAsync([ask, new AssistantChatMessage([elsewhere]), new ToolChatMessage(elsewhere.Id, "Sunny")], options, Ct);
        plain.Value.Content[0].Text.Should().NotBeNullOrEmpty();
        Blocks(Message(plain)).Should().Be(0, "this step was answered without thinking");

        // Another key's step naming this key's tool call gets nothing of it: the blocks are kept per key.
        var other = new ChatClient("anthropic-only", new ApiKeyCredential(OtherKey), new OpenAIClientOptions { Endpoint = new Uri(Base, "v1") });
        var foreign = await other.CompleteChatAsync([ask, new AssistantChatMessage([call]), new ToolChatMessage(call.Id, "Sunny")], options, Ct);
        Blocks(Message(foreign)).Should().Be(0, "another key's thinking is not given");
    }

    /// <summary>
    /// Extended thinking from an Anthropic client (Claude Code): <c>thinking</c> reaches Claude, its thinking blocks come
    /// back whole and streamed (text and signature), and given back in the next turn they reach Claude unchanged — the
    /// simulator, like Claude, refuses a thinking block whose signature does not match. An OpenAI-format caller gets
    /// the same thinking as <c>reasoning_content</c> and <c>thinking_blocks</c> (LiteLLM's members).
    /// </summary>
    [Fact]
    public async Task Claudes_thinking_goes_out_comes_back_whole_and_streamed_and_returns_unchanged_in_the_next_turn()
    {
        using var http = AnthropicHttp();
        Task<(HttpStatusCode Status, string Body)> Post(string path, object body) => PostAsync(http, path, body);

        var thinking = new Dictionary<string, object> { ["type"] = "enabled", ["budget_tokens"] = 1024 };
        var question = new Dictionary<string, object> { ["role"] = "user", ["content"] = "Why is the sky blue?" };
        Dictionary<string, object> Ask(bool stream, params object[] messages) => new()
        {
            ["model"] = "anthropic-only",
            ["max_tokens"] = 2048,
            ["stream"] = stream,
            ["thinking"] = thinking,
            ["messages"] = messages,
        };

        var (status, text) = await Post("v1/messages", Ask(false, question));
        status.Should().Be(HttpStatusCode.OK, text);
        var content = JsonDocument.Parse(text).RootElement.GetProperty("content");
        content[0].GetProperty("type").GetString().Should().Be("thinking");
        var thought = content[0].GetProperty("thinking").GetString()!;
        var signature = content[0].GetProperty("signature").GetString()!;
        thought.Should().StartWith("Considering:");
        signature.Should().NotBeEmpty();
        content[1].GetProperty("type").GetString().Should().Be("text");

        (status, text) = await Post("v1/messages", Ask(true, question));
        status.Should().Be(HttpStatusCode.OK, text);
        var events = SseEvents(text);
        events.Single(e => e.GetProperty("type").GetString() == "content_block_start" && e.GetProperty("index").GetInt32() == 0)
            .GetProperty("content_block").GetProperty("type").GetString().Should().Be("thinking");
        var deltas = events.Where(e => e.GetProperty("type").GetString() == "content_block_delta").Select(e => e.GetProperty("delta")).ToList();
        string.Concat(deltas.Where(d => d.GetProperty("type").GetString() == "thinking_delta").Select(d => d.GetProperty("thinking").GetString())).Should().Be(thought);
        deltas.Single(d => d.GetProperty("type").GetString() == "signature_delta").GetProperty("signature").GetString().Should().Be(signature);
        events.Where(e => e.GetProperty("type").GetString() == "content_block_start").Select(e => e.GetProperty("content_block").GetProperty("type").GetString())
            .Should().Equal("thinking", "text");

        object Turn(string said) => new Dictionary<string, object>
        {
            ["role"] = "assistant",
            ["content"] = new object[]
            {
                new Dictionary<string, object> { ["type"] = "thinking", ["thinking"] = said, ["signature"] = signature },
                new Dictionary<string, object> { ["type"] = "text", ["text"] = "Rayleigh scattering." },
            },
        };
        var followUp = new Dictionary<string, object> { ["role"] = "user", ["content"] = "And sunsets?" };
        (status, text) = await Post("v1/messages", Ask(false, question, Turn(thought), followUp));
        status.Should().Be(HttpStatusCode.OK, "the thinking went back to Claude as Claude wrote it: " + text);
        (status, text) = await Post("v1/messages", Ask(false, question, Turn(thought + " (edited)"), followUp));
        status.Should().Be(HttpStatusCode.BadRequest, "Claude refuses altered thinking, and says so to the caller");
        text.Should().Contain("signature");

        // The OpenAI SDK's reasoning effort: Claude thinks (a budget within max_tokens), and the raw answer has the thinking.
#pragma warning disable OPENAI001 // the SDK marks reasoning effort as evaluation-only; the wire member is stable
        var effort = await OpenAIClient("anthropic-only").CompleteChatAsync([new UserChatMessage("Why is the sky blue?")], new ChatCompletionOptions { ReasoningEffortLevel = ChatReasoningEffortLevel.High, MaxOutputTokenCount = 8000 }, Ct);
#pragma warning restore OPENAI001
        JsonDocument.Parse(effort.GetRawResponse().Content.ToString()).RootElement.GetProperty("choices")[0].GetProperty("message")
            .GetProperty("reasoning_content").GetString().Should().Be(thought);

        // The OpenAI route: the same thinking as LiteLLM carries it.
        (status, text) = await Post("v1/chat/completions", new Dictionary<string, object> { ["model"] = "anthropic-only", ["thinking"] = thinking, ["messages"] = new object[] { question } });
        status.Should().Be(HttpStatusCode.OK, text);
        var message = JsonDocument.Parse(text).RootElement.GetProperty("choices")[0].GetProperty("message");
        message.GetProperty("reasoning_content").GetString().Should().Be(thought);
        message.GetProperty("thinking_blocks")[0].GetProperty("signature").GetString().Should().Be(signature);
    }

    /// <summary>
    /// <c>/v1/messages/count_tokens</c>, which Claude Code asks every turn: Claude's own count for a group with an
    /// Anthropic deployment (the same input tokens the messages route then reports; only the members count_tokens takes
    /// are sent — the simulator, as strict as Claude, refuses others), the gateway's tokenizer otherwise; never a 404.
    /// </summary>
    [Fact]
    public async Task Count_tokens_is_Claudes_own_count_where_Claude_serves_the_model_and_the_tokenizers_elsewhere()
    {
        using var http = AnthropicHttp();
        var body = new Dictionary<string, object>
        {
            ["model"] = "anthropic-only",
            ["system"] = "You are terse.",
            ["temperature"] = 0.2,
            ["metadata"] = new Dictionary<string, string> { ["user_id"] = "u1" },
            ["tools"] = new object[] { new Dictionary<string, object> { ["name"] = "lookup", ["input_schema"] = new Dictionary<string, string> { ["type"] = "object" } } },
            ["messages"] = new object[] { new Dictionary<string, object> { ["role"] = "user", ["content"] = "How many tokens is this question?" } },
        };

        var response = await http.PostAsync(new Uri(Base, "v1/messages/count_tokens"), new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"), Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK, text);
        response.Headers.GetValues("x-gateway-token-count").Single().Should().Be("upstream");
        var counted = JsonDocument.Parse(text).RootElement.GetProperty("input_tokens").GetInt32();
        _sims["anthropic-plain"].CountRequests.Should().Be(1);
        Calls("anthropic-plain").Should().Be(0, "a count is not a chat call");

        body["max_tokens"] = 16;
        var (status, answer) = await PostAsync(http, "v1/messages", body);
        status.Should().Be(HttpStatusCode.OK, answer);
        JsonDocument.Parse(answer).RootElement.GetProperty("usage").GetProperty("input_tokens").GetInt32().Should().Be(counted, "the count is the one the answer is billed by");

        body["model"] = "down";
        response = await http.PostAsync(new Uri(Base, "v1/messages/count_tokens"), new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"), Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        response.Headers.GetValues("x-gateway-token-count").Single().Should().Be("tokenizer");
        JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("input_tokens").GetInt32().Should().BePositive();
        Calls("down").Should().Be(0);

        body["model"] = "no-such-model";
        (status, answer) = await PostAsync(http, "v1/messages/count_tokens", body);
        status.Should().Be(HttpStatusCode.NotFound);
        JsonDocument.Parse(answer).RootElement.GetProperty("error").GetProperty("type").GetString().Should().Be("not_found_error");
        (status, answer) = await PostAsync(http, "v1/messages/count_tokens", new Dictionary<string, object> { ["model"] = "anthropic-only" });
        status.Should().Be(HttpStatusCode.BadRequest);
        answer.Should().Contain("messages");
    }

    /// <summary>
    /// A key asks Claude for at most <c>Server:CountTokensPerMinute</c> counts a minute (2 here): its next counts are the
    /// tokenizer's, answered 200 all the same — one tenant cannot spend the organisation's count_tokens rate at Anthropic.
    /// </summary>
    [Fact]
    public async Task Count_tokens_past_the_keys_rate_is_the_tokenizers_count_and_Claude_is_not_asked()
    {
        using var http = AnthropicHttp();
        var body = new Dictionary<string, object>
        {
            ["model"] = "anthropic-only",
            ["messages"] = new object[] { new Dictionary<string, object> { ["role"] = "user", ["content"] = "Count me." } },
        };

        var sources = new List<string>();
        for (var i = 0; i < 4; i++)
        {
            var response = await http.PostAsync(new Uri(Base, "v1/messages/count_tokens"), new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"), Ct);
            var text = await response.Content.ReadAsStringAsync(Ct);
            response.StatusCode.Should().Be(HttpStatusCode.OK, text);
            JsonDocument.Parse(text).RootElement.GetProperty("input_tokens").GetInt32().Should().BePositive();
            sources.Add(response.Headers.GetValues("x-gateway-token-count").Single());
        }

        sources.Should().Equal("upstream", "upstream", "tokenizer", "tokenizer");
        _sims["anthropic-plain"].CountRequests.Should().Be(2);
    }

    /// <summary>
    /// Claude stopping at a caller's stop sequence says so, and which one: Anthropic clients read <c>stop_reason</c>
    /// <c>stop_sequence</c> and <c>stop_sequence</c> (the canonical finish reason, <c>stop</c>, reached them as
    /// <c>end_turn</c> before). Whole and streamed.
    /// </summary>
    [Fact]
    public async Task A_stop_sequence_Claude_stopped_at_reaches_an_Anthropic_caller_with_the_sequence_whole_and_streamed()
    {
        using var http = AnthropicHttp();
        var body = new Dictionary<string, object>
        {
            ["model"] = "anthropic-only",
            ["max_tokens"] = 32,
            ["messages"] = new object[] { new Dictionary<string, object> { ["role"] = "user", ["content"] = "Tell me about stop sequences." } },
        };
        var (status, text) = await PostAsync(http, "v1/messages", body);
        status.Should().Be(HttpStatusCode.OK, text);
        var whole = JsonDocument.Parse(text).RootElement;
        whole.GetProperty("stop_reason").GetString().Should().Be("end_turn");
        var words = whole.GetProperty("content")[0].GetProperty("text").GetString()!.Split(' ');
        var at = Array.FindIndex(words, w => Array.IndexOf(words, w) > 0 && Array.IndexOf(words, w) == Array.LastIndexOf(words, w));
        at.Should().BePositive("an answer of several words has a word that appears once, after the first");
        body["stop_sequences"] = new[] { words[at] };

        (status, text) = await PostAsync(http, "v1/messages", body);
        status.Should().Be(HttpStatusCode.OK, text);
        whole = JsonDocument.Parse(text).RootElement;
        whole.GetProperty("stop_reason").GetString().Should().Be("stop_sequence");
        whole.GetProperty("stop_sequence").GetString().Should().Be(words[at]);
        whole.GetProperty("content")[0].GetProperty("text").GetString().Should().Be(string.Join(' ', words[..at]));

        body["stream"] = true;
        (status, text) = await PostAsync(http, "v1/messages", body);
        status.Should().Be(HttpStatusCode.OK, text);
        var delta = SseEvents(text).Single(e => e.GetProperty("type").GetString() == "message_delta").GetProperty("delta");
        delta.GetProperty("stop_reason").GetString().Should().Be("stop_sequence");
        delta.GetProperty("stop_sequence").GetString().Should().Be(words[at]);
    }

    /// <summary>
    /// Both SDKs list and retrieve the gateway's models at the path their APIs share, each in its own shape (the
    /// Anthropic SDK reads <c>type</c>, <c>display_name</c>, <c>created_at</c>, <c>has_more</c>: the gateway answers so
    /// when <c>anthropic-version</c> is sent); an unknown model is a 404 each SDK reads as one.
    /// </summary>
    [Fact]
    public async Task The_OpenAI_and_Anthropic_SDKs_list_and_retrieve_models_each_in_its_shape()
    {
        var openai = new OpenAI.Models.OpenAIModelClient(new ApiKeyCredential(Key), new OpenAIClientOptions { Endpoint = new Uri(Base, "v1") });
        var listed = (await openai.GetModelsAsync(Ct)).Value;
        listed.Select(m => m.Id).Should().Contain(["anthropic-only", "invalid"]);
        (await openai.GetModelAsync("anthropic-only", Ct)).Value.Id.Should().Be("anthropic-only");
        var missing = async () => await openai.GetModelAsync("no-such-model", Ct);
        (await missing.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(404);

        using var anthropic = AnthropicClient();
        var page = await anthropic.Models.List(null, Ct);
        page.Items.Select(m => m.ID).Should().Contain(["anthropic-only", "invalid"]);
        page.Items.Should().OnlyContain(m => m.DisplayName == m.ID);
        (await anthropic.Models.Retrieve("anthropic-only", null, Ct)).ID.Should().Be("anthropic-only");
        var absent = async () => await anthropic.Models.Retrieve("no-such-model", null, Ct);
        (await absent.Should().ThrowAsync<AnthropicNotFoundException>()).Which.Message.Should().Contain("no-such-model");
    }

    [Fact]
    public async Task An_upstream_400_reaches_the_Anthropic_SDK_as_a_bad_request_and_is_sent_once()
    {
        using var client = AnthropicClient(retries: 2);
        var act = async () => await client.Messages.Create(Ask("anthropic-invalid"), Ct);

        (await act.Should().ThrowAsync<AnthropicBadRequestException>()).Which.Message.Should().Contain("max_tokens: must be positive");
        Calls("anthropic-bad").Should().Be(1);
        Calls("backup").Should().Be(0);
    }

    [Fact]
    public async Task A_context_window_error_without_a_fallback_is_a_400_context_length_exceeded()
    {
        var act = async () => await OpenAIClient("context").CompleteChatAsync([new UserChatMessage("a very long prompt")], cancellationToken: Ct);

        var ex = (await act.Should().ThrowAsync<ClientResultException>()).Which;
        ex.Status.Should().Be(400);
        var error = ErrorOf(ex);
        error.GetProperty("code").GetString().Should().Be("context_length_exceeded");
        error.GetProperty("param").GetString().Should().Be("messages");
        Calls("too-long").Should().Be(1);
    }

    [Fact]
    public async Task Every_deployment_rate_limited_is_a_429_with_the_earliest_Retry_After_on_both_routes()
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key);
        var response = await http.PostAsync(new Uri(Base, "v1/chat/completions"),
            new StringContent("""{"model":"limited","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.TooManyRequests);
        response.Headers.GetValues("x-ratelimit-remaining-requests").Single().Should().Be("0");
        response.Headers.RetryAfter!.Delta.Should().BeGreaterThanOrEqualTo(TimeSpan.FromSeconds(2)).And.BeLessThanOrEqualTo(TimeSpan.FromSeconds(3), "the earlier of the two cooldowns (3 s and 5 s)");
        var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("error");
        body.GetProperty("code").GetString().Should().Be("rate_limit_exceeded");
        (Calls("limited-a") + Calls("limited-b")).Should().Be(2, "each deployment once: nothing sent into a known cooldown");

        // The next request waits out the shorter pause (3 s, within MaxQueueWait) rather than being sent into it.
        using var client = AnthropicClient();
        var act = async () => await client.Messages.Create(Ask("limited"), Ct);
        await act.Should().ThrowAsync<AnthropicRateLimitException>();
        (Calls("limited-a") + Calls("limited-b")).Should().BeLessThanOrEqualTo(4);
    }

    [Fact]
    public async Task A_revoked_key_takes_its_deployment_out_of_rotation_and_the_request_fails_over()
    {
        var answer = await OpenAIClient("revoked").CompleteChatAsync([new UserChatMessage("hi")], cancellationToken: Ct);
        answer.Value.Content[0].Text.Should().NotBeEmpty();
        Calls("revoked").Should().Be(1);
        Calls("backup").Should().Be(1);

        await OpenAIClient("revoked").CompleteChatAsync([new UserChatMessage("again")], cancellationToken: Ct);
        Calls("revoked").Should().Be(1, "the rejected deployment is out of rotation");
        Calls("backup").Should().Be(2);

        var health = _app.Services.GetRequiredService<IGatewayMetrics>().GetSnapshot().Deployments["revoked/revoked/gpt-4o-mini"];
        health.HealthState.Should().Be("rejected");
        health.RejectedBecause.Should().Contain("401").And.Contain("Incorrect API key");
    }

    [Fact]
    public async Task A_model_whose_only_deployment_is_revoked_is_a_502_naming_the_cause_never_a_401()
    {
        var act = async () => await OpenAIClient("revoked-only", retries: 0).CompleteChatAsync([new UserChatMessage("hi")], cancellationToken: Ct);

        var ex = (await act.Should().ThrowAsync<ClientResultException>()).Which;
        ex.Status.Should().Be(502, "the caller's own key is fine: a 401 would tell it otherwise");
        var error = ErrorOf(ex);
        error.GetProperty("code").GetString().Should().Be("deployment_unavailable");
        error.GetProperty("message").GetString().Should().Contain("DeploymentUnavailable (401)");

        // The next request is answered from health, without calling the provider that refuses the key.
        var again = (await act.Should().ThrowAsync<ClientResultException>()).Which;
        again.Status.Should().Be(502);
        ErrorOf(again).GetProperty("message").GetString().Should().Contain("credentials or model");
        Calls("revoked").Should().Be(1);
        again.GetRawResponse()!.Headers.TryGetValue("x-should-retry", out var retry).Should().BeTrue();
        retry.Should().Be("false", "a retry now cannot succeed: the SDKs that obey it (OpenAI's, Anthropic's) do not send it twice more");

        // On /v1/messages too (the Anthropic SDKs obey it as well).
        using var http = AnthropicHttp();
        var messages = await http.PostAsync(new Uri(Base, "v1/messages"), new StringContent("""{"model":"revoked-only","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), Ct);
        ((int)messages.StatusCode).Should().Be(502);
        messages.Headers.GetValues("x-should-retry").Should().Equal("false");
    }

    [Fact]
    public async Task Upstream_5xx_after_every_attempt_is_a_502_listing_each_attempts_real_outcome()
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key);
        var response = await http.PostAsync(new Uri(Base, "v1/chat/completions"),
            new StringContent("""{"model":"down","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable, "the upstream said 503: overloaded");
        response.Headers.RetryAfter.Should().NotBeNull();
        var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("error");
        error.GetProperty("code").GetString().Should().Be("upstream_overloaded");
        error.GetProperty("message").GetString().Should().Contain("RetryableError (503)").And.NotContain("success");
        Calls("down").Should().Be(3, "MaxAttempts");
        response.Headers.Contains("x-should-retry").Should().BeFalse("an overloaded upstream may answer a later try: the SDKs' own retry stands");
    }

    [Fact]
    public async Task An_OpenAI_stream_that_errors_after_its_role_chunk_falls_back_before_any_content()
    {
        var text = new StringBuilder();
        await foreach (var update in OpenAIClient("overloaded-stream").CompleteChatStreamingAsync([new UserChatMessage("stream please")], cancellationToken: Ct))
        {
            foreach (var part in update.ContentUpdate)
            {
                text.Append(part.Text);
            }
        }

        text.Length.Should().BePositive("the backup answered the whole stream");
        Calls("overloaded-stream").Should().Be(1);
        Calls("backup").Should().Be(1);
    }

    [Fact]
    public async Task An_Anthropic_overloaded_event_right_after_message_start_falls_back_before_any_content()
    {
        using var client = AnthropicClient();
        var text = new StringBuilder();
        var kinds = new List<string>();
        await foreach (var ev in client.Messages.CreateStreaming(Ask("anthropic-overloaded", "stream please"), Ct))
        {
            kinds.Add(ev.Json.GetProperty("type").GetString()!);
            if (ev.TryPickContentBlockDelta(out var delta) && delta.Delta.TryPickText(out var piece))
            {
                text.Append(piece.Text);
            }
        }

        text.Length.Should().BePositive("the backup answered the whole stream");
        kinds.Should().NotContain("error");
        kinds.Count(k => k == "message_start").Should().Be(1, "the caller saw one stream, not the failed opening");
        Calls("anthropic-overloaded").Should().Be(1);
        Calls("backup").Should().Be(1);
    }
}
