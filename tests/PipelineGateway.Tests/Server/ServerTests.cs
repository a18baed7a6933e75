using System.ClientModel;
using Anthropic;
using Anthropic.Exceptions;
using Anthropic.Models.Messages;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using OpenAI;
using OpenAI.Chat;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>A real Kestrel on 127.0.0.1 (port 0) in front of the pipeline with simulated providers.</summary>
public sealed class ServerTests : IAsyncLifetime
{
    private const string Key = "sk-gw-test-0123456789";
    private const string AdminKey = "sk-gw-admin-0123456789";
    private WebApplication _app = null!;
    private readonly CapturingLoggerProvider _logs = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Uri Base { get; set; } = null!;

    private HttpClient Http { get; } = new();

    public async ValueTask InitializeAsync()
    {
        var config = TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Models:1:Name"] = "restricted",
            ["Gateway:Models:1:Deployments:0:Provider"] = "sim",
            ["Gateway:Admission:RateLimits:0:Limit"] = "1000",
            ["Gateway:Admission:RateLimits:0:Window"] = "00:01:00",
            ["Gateway:Admission:RateLimits:1:Name"] = "tiny",
            ["Gateway:Admission:RateLimits:1:Limit"] = "5",
            ["Gateway:Admission:RateLimits:1:Window"] = "00:10:00",
            ["Gateway:Admission:PartitionBy"] = "Key, User",
            ["Gateway:Server:Keys:0:Id"] = "team-a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:0:AllowedModels:0"] = "gpt-4o-mini",
            ["Gateway:Server:MaxRequestBodyBytes"] = "65536",
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Providers:1:Name"] = "sim-slow",
            ["Gateway:Providers:1:Type"] = "Simulated",
            ["Gateway:Providers:1:Simulated:LatencyMs"] = "600000",
            ["Gateway:Models:2:Name"] = "slow",
            ["Gateway:Models:2:Deployments:0:Provider"] = "sim-slow",
            ["Gateway:Server:Keys:1:Id"] = "team-b",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(Key + "-b"),
            ["Gateway:Server:Keys:2:Id"] = "ops",
            ["Gateway:Server:Keys:2:Sha256"] = GatewayKeys.Hash(AdminKey),
            ["Gateway:Server:Keys:2:Admin"] = "true",
        });
        _app = GatewayServer.Build(config, "http://127.0.0.1:0", l => l.AddProvider(_logs));
        Base = await GatewayServer.StartAsync(_app, Ct);
        Http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key);
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private Task<HttpResponseMessage> Post(string json, string path = "v1/chat/completions", Action<HttpRequestMessage>? tweak = null)
    {
        var message = new HttpRequestMessage(HttpMethod.Post, new Uri(Base, path)) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        tweak?.Invoke(message);
        return Http.SendAsync(message, Ct);
    }

    private static string Chat(string text = "Hello!", string model = "gpt-4o-mini", bool stream = false, string? user = null) =>
        JsonSerializer.Serialize(new Dictionary<string, object?> { ["model"] = model, ["messages"] = new[] { new { role = "user", content = text } }, ["stream"] = stream, ["user"] = user });

    private static bool HasUsage(JsonElement chunk) => chunk.TryGetProperty("usage", out _);

    private static async Task<JsonElement> Error(HttpResponseMessage r) => (await r.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error");

    [Fact]
    public async Task A_chat_completion_answers_in_the_OpenAI_format_with_gateway_headers()
    {
        var r = await Post(Chat(user: "u1"));

        r.StatusCode.Should().Be(HttpStatusCode.OK);
        var body = await r.Content.ReadFromJsonAsync<JsonElement>(Ct);
        body.GetProperty("object").GetString().Should().Be("chat.completion");
        body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString().Should().NotBeEmpty();
        r.Headers.GetValues("x-gateway-provider").Should().Equal("sim");
        r.Headers.GetValues("x-gateway-cache").Should().Equal("miss");
        r.Headers.GetValues("x-gateway-attempts").Should().Equal("1");
        r.Headers.Contains("x-gateway-cost-usd").Should().BeTrue();
        r.Headers.Contains("x-request-id").Should().BeTrue();
        r.Headers.GetValues("x-ratelimit-limit-requests").Should().Equal("5");
        r.Headers.GetValues("x-ratelimit-remaining-requests").Should().Equal("4");
        r.Content.Headers.ContentLength.Should().Be((await r.Content.ReadAsByteArrayAsync(Ct)).Length, "the answer is sent with its length, not chunked");
    }

    /// <summary>
    /// <c>/v1/messages</c> answers with the same gateway headers as the chat route — who answered, cache, attempts, cost,
    /// the caller's rate-limit state — whole and streamed, and its 429 says when to come back (none of them before).
    /// </summary>
    [Fact]
    public async Task The_messages_route_carries_the_gateway_headers_whole_streamed_and_on_a_429()
    {
        string Messages(bool stream) => JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["model"] = "gpt-4o-mini",
            ["max_tokens"] = 16,
            ["stream"] = stream,
            ["metadata"] = new { user_id = "messages-user" },
            ["messages"] = new[] { new { role = "user", content = "Hello!" } },
        });
        void Anthropic(HttpRequestMessage m) => m.Headers.Add("anthropic-version", "2023-06-01");

        var whole = await Post(Messages(stream: false), "v1/messages", Anthropic);
        whole.StatusCode.Should().Be(HttpStatusCode.OK);
        whole.Headers.GetValues("x-gateway-provider").Should().Equal("sim");
        whole.Headers.GetValues("x-gateway-cache").Should().Equal("miss");
        whole.Headers.GetValues("x-gateway-attempts").Should().Equal("1");
        whole.Headers.Contains("x-gateway-cost-usd").Should().BeTrue();
        whole.Headers.GetValues("x-ratelimit-remaining-requests").Should().Equal("4");

        var streamed = await Post(Messages(stream: true), "v1/messages", Anthropic);
        streamed.StatusCode.Should().Be(HttpStatusCode.OK);
        (await streamed.Content.ReadAsStringAsync(Ct)).Should().Contain("message_stop");
        streamed.Headers.GetValues("x-gateway-provider").Should().Equal("sim");
        streamed.Headers.GetValues("x-ratelimit-remaining-requests").Should().Equal("3");

        HttpResponseMessage last = null!;
        for (var i = 0; i < 4; i++)
        {
            last = await Post(Messages(stream: i % 2 == 0), "v1/messages", Anthropic);
        }

        last.StatusCode.Should().Be((HttpStatusCode)429);
        last.Headers.RetryAfter!.Delta.Should().BePositive();
        last.Headers.GetValues("x-ratelimit-remaining-requests").Should().Equal("0");
        (await last.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("error").GetProperty("type").GetString().Should().Be("rate_limit_error");
    }

    [Fact]
    public async Task A_body_of_several_kilobytes_sent_in_chunks_is_read_whole()
    {
        // 40 KB in 1 KB writes without a Content-Length: the body arrives chunked, over several pipe segments.
        var text = new string('y', 40_000);
        var json = Encoding.UTF8.GetBytes(Chat(text: text));
        var content = new PushStreamContent(json, 1024);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");

        var r = await Http.PostAsync(new Uri(Base, "v1/chat/completions"), content, Ct);

        r.StatusCode.Should().Be(HttpStatusCode.OK);
        (await r.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("usage").GetProperty("prompt_tokens").GetInt32().Should().BeGreaterThan(1000);
    }

    [Fact]
    public async Task A_chunked_body_over_the_limit_is_413_too()
    {
        var content = new PushStreamContent(Encoding.UTF8.GetBytes(Chat(text: new string('x', 70_000))), 4096);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");

        var r = await Http.PostAsync(new Uri(Base, "v1/chat/completions"), content, Ct);

        r.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
        (await Error(r)).GetProperty("code").GetString().Should().Be("request_too_large");
    }

    /// <summary>Writes a body in pieces and announces no length, so HttpClient sends it chunked.</summary>
    private sealed class PushStreamContent(byte[] body, int piece) : HttpContent
    {
        protected override async Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context)
        {
            for (var i = 0; i < body.Length; i += piece)
            {
                await stream.WriteAsync(body.AsMemory(i, Math.Min(piece, body.Length - i)));
                await stream.FlushAsync();
            }
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }

    [Fact]
    public async Task Streaming_answers_with_server_sent_events_ending_in_DONE()
    {
        var r = await Post(Chat(stream: true));

        r.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        var lines = (await r.Content.ReadAsStringAsync(Ct)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.Should().OnlyContain(l => l.StartsWith("data: ", StringComparison.Ordinal));
        lines[^1].Should().Be("data: [DONE]");
        var chunks = lines[..^1].Select(l => JsonDocument.Parse(l[6..]).RootElement).ToList();
        chunks.Should().OnlyContain(c => c.GetProperty("object").GetString() == "chat.completion.chunk");
        chunks.Count(HasUsage).Should().Be(0, "usage was not asked for");
    }

    [Fact]
    public async Task A_stream_asked_for_usage_ends_with_its_cost_in_the_usage_chunk()
    {
        var body = JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["model"] = "gpt-4o-mini",
            ["stream"] = true,
            ["stream_options"] = new { include_usage = true },
            ["messages"] = new[] { new { role = "user", content = "What does it cost?" } },
        });

        var r = await Post(body, tweak: m => m.Headers.Add("x-gateway-cache", "no-store"));

        r.Headers.Contains("x-gateway-cost-usd").Should().BeFalse("a live stream's cost is not known when its headers go out");
        var lines = (await r.Content.ReadAsStringAsync(Ct)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var last = JsonDocument.Parse(lines[^2][6..]).RootElement;
        var usage = last.GetProperty("usage");
        usage.GetProperty("prompt_tokens").GetInt32().Should().BePositive();
        usage.GetProperty("cost").GetDecimal().Should().BePositive("gpt-4o-mini is priced by the shipped defaults");
    }

    public static TheoryData<string, string, HttpStatusCode, string?> BadRequests => new()
    {
        { "malformed JSON", """{"model": "gpt-4o-mini", "messages": [""", HttpStatusCode.BadRequest, null },
        { "empty body", "", HttpStatusCode.BadRequest, null },
        { "data after the JSON", """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]} {"again":1}""", HttpStatusCode.BadRequest, null },
        { "missing messages", """{"model":"gpt-4o-mini"}""", HttpStatusCode.BadRequest, "messages" },
        { "bad temperature", """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"temperature":9}""", HttpStatusCode.BadRequest, "temperature" },
        { "wrong type", """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}""", HttpStatusCode.BadRequest, "max_tokens" },
        { "unknown model", """{"model":"nope","messages":[{"role":"user","content":"x"}]}""", HttpStatusCode.NotFound, "model" },
        { "model not allowed for the key", """{"model":"restricted","messages":[{"role":"user","content":"x"}]}""", HttpStatusCode.Forbidden, "model" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Client_mistakes_get_the_OpenAI_error_shape_never_a_500(string why, string json, HttpStatusCode status, string? param)
    {
        var r = await Post(json);

        r.StatusCode.Should().Be(status, why);
        var error = await Error(r);
        error.GetProperty("message").GetString().Should().NotBeNullOrEmpty();
        error.GetProperty("type").GetString().Should().NotBeNullOrEmpty();
        if (param is not null)
        {
            error.GetProperty("param").GetString().Should().Be(param, why);
        }
    }

    [Fact]
    public async Task A_bad_or_missing_key_is_401_and_the_key_is_never_logged()
    {
        using var anonymous = new HttpClient(); // no default Authorization header
        async Task<HttpResponseMessage> Send(Action<HttpRequestMessage> tweak)
        {
            var m = new HttpRequestMessage(HttpMethod.Post, new Uri(Base, "v1/chat/completions")) { Content = new StringContent(Chat(), Encoding.UTF8, "application/json") };
            tweak(m);
            return await anonymous.SendAsync(m, Ct);
        }

        var wrong = await Send(m => m.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "sk-wrong-key-987654"));
        var none = await Send(_ => { });
        var viaHeader = await Send(m => m.Headers.Add("x-api-key", Key));

        wrong.StatusCode.Should().Be(HttpStatusCode.Unauthorized);
        none.StatusCode.Should().Be(HttpStatusCode.Unauthorized);
        viaHeader.StatusCode.Should().Be(HttpStatusCode.OK);
        (await Error(wrong)).GetProperty("type").GetString().Should().Be("authentication_error");
        _logs.All.Should().NotContain(Key).And.NotContain("sk-wrong-key-987654");
    }

    [Fact]
    public async Task Rate_limited_requests_get_429_with_retry_after()
    {
        HttpResponseMessage last = null!;
        for (var i = 0; i < 6; i++)
        {
            last = await Post(Chat(user: "limited-user"));
        }

        last.StatusCode.Should().Be((HttpStatusCode)429);
        last.Headers.RetryAfter!.Delta.Should().BePositive();
        (await Error(last)).GetProperty("code").GetString().Should().Be("rate_limit_exceeded");
        last.Headers.GetValues("x-ratelimit-remaining-requests").Should().Equal("0");
    }

    [Fact]
    public async Task A_body_over_the_limit_is_413()
    {
        var r = await Post(Chat(text: new string('x', 70_000)));

        r.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
        (await Error(r)).GetProperty("code").GetString().Should().Be("request_too_large");
    }

    [Fact]
    public async Task Per_request_cache_headers_are_honoured()
    {
        await Post(Chat(text: "cache me"));
        var hit = await Post(Chat(text: "cache me"));
        var skipped = await Post(Chat(text: "cache me"), tweak: m => m.Headers.Add("x-gateway-cache", "no-cache"));
        var bad = await Post(Chat(text: "cache me"), tweak: m => m.Headers.Add("x-gateway-cache", "sometimes"));

        hit.Headers.GetValues("x-gateway-cache").Should().Equal("hit");
        skipped.Headers.GetValues("x-gateway-cache").Should().Equal("miss");
        bad.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        (await Error(bad)).GetProperty("param").GetString().Should().Be("x-gateway-cache");
    }

    [Fact]
    public async Task Models_metrics_health_and_readiness_endpoints()
    {
        var models = await Http.GetFromJsonAsync<JsonElement>(new Uri(Base, "v1/models"), Ct);
        models.GetProperty("object").GetString().Should().Be("list");
        models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).Should().BeEquivalentTo(["gpt-4o-mini"], "team-a may use only gpt-4o-mini: it sees only that");

        using var admin = new HttpClient();
        admin.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", AdminKey);
        var all = await admin.GetFromJsonAsync<JsonElement>(new Uri(Base, "v1/models"), Ct);
        all.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).Should().BeEquivalentTo(["gpt-4o-mini", "restricted", "slow"]);

        await Post(Chat());
        (await Http.GetAsync(new Uri(Base, "v1/gateway/metrics"), Ct)).StatusCode.Should().Be(HttpStatusCode.Forbidden, "metrics are the admin's");
        (await new HttpClient().GetAsync(new Uri(Base, "metrics"), Ct)).StatusCode.Should().Be(HttpStatusCode.Unauthorized);
        var metrics = await admin.GetFromJsonAsync<JsonElement>(new Uri(Base, "v1/gateway/metrics"), Ct);
        metrics.GetProperty("total_requests").GetInt64().Should().BeGreaterThan(0);
        metrics.GetProperty("providers").GetProperty("sim").GetProperty("success_rate").GetDouble().Should().Be(1);

        var prometheus = await admin.GetStringAsync(new Uri(Base, "metrics"), Ct);
        prometheus.Should().Contain("gen_ai_client_operation_duration").And.Contain("gen_ai_client_token_usage").And.Contain("gen_ai_request_model=\"gpt-4o-mini\"");
        prometheus.Should().MatchRegex("pgw_requests_total\\{[^}]*gen_ai_request_model=\"gpt-4o-mini\"[^}]*pgw_outcome=\"success\"[^}]*\\} [1-9]", "the counters are observed at the scrape (InstrumentTotals)")
            .And.MatchRegex("pgw_attempts_total\\{[^}]*pgw_outcome=\"success\"[^}]*\\} [1-9]");

        using var anonymous = new HttpClient();
        (await anonymous.GetAsync(new Uri(Base, "healthz"), Ct)).StatusCode.Should().Be(HttpStatusCode.OK, "health stays open");
        (await anonymous.GetAsync(new Uri(Base, "readyz"), Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Http.GetAsync(new Uri(Base, "v1/nothing"), Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);

        // An error body echoing the client's input (HTML characters unescaped in JSON) may not be sniffed as a page.
        using var echo = await Http.GetAsync(new Uri(Base, "v1/%3Cscript%3Ealert(1)%3C/script%3E"), Ct);
        echo.StatusCode.Should().Be(HttpStatusCode.NotFound);
        echo.Content.Headers.ContentType!.MediaType.Should().Be("application/json");
        echo.Headers.GetValues("X-Content-Type-Options").Should().Equal("nosniff");
        (await anonymous.GetAsync(new Uri(Base, "healthz"), Ct)).Headers.GetValues("X-Content-Type-Options").Should().Equal("nosniff");
    }

    [Fact]
    public async Task The_official_OpenAI_SDK_works_against_the_gateway()
    {
        var client = new ChatClient("gpt-4o-mini", new ApiKeyCredential(Key), new OpenAIClientOptions { Endpoint = new Uri(Base, "v1") });

        ChatCompletion completion = await client.CompleteChatAsync([new UserChatMessage("Hello from the SDK")], cancellationToken: Ct);
        completion.Content[0].Text.Should().NotBeEmpty();
        completion.Usage.OutputTokenCount.Should().BePositive();

        var streamed = new StringBuilder();
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Stream please")], cancellationToken: Ct))
        {
            foreach (var part in update.ContentUpdate)
            {
                streamed.Append(part.Text);
            }
        }

        streamed.Length.Should().BePositive();

        var unknown = new ChatClient("no-such-model", new ApiKeyCredential(Key), new OpenAIClientOptions { Endpoint = new Uri(Base, "v1") });
        var act = async () => await unknown.CompleteChatAsync([new UserChatMessage("x")], cancellationToken: Ct);
        (await act.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(404);
    }

    /// <summary>
    /// A client's tool loop and structured-output parsing run against the simulated providers of the default
    /// configuration, whole and streamed, through the official SDK: a required tool is called with arguments of its
    /// schema's shape (it answered text before), a JSON schema is answered with an object of that shape.
    /// </summary>
    [Fact]
    public async Task The_simulated_provider_calls_a_required_tool_and_answers_a_json_schema_through_the_SDK()
    {
        var client = new ChatClient("gpt-4o-mini", new ApiKeyCredential(Key), new OpenAIClientOptions { Endpoint = new Uri(Base, "v1") });
        var weather = ChatTool.CreateFunctionTool("get_weather", "The weather", BinaryData.FromString("""{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}}}"""));
        var tools = new ChatCompletionOptions { Tools = { weather }, ToolChoice = ChatToolChoice.CreateRequiredChoice() };

        ChatCompletion called = await client.CompleteChatAsync([new UserChatMessage("Weather in Paris?")], tools, Ct);

        called.FinishReason.Should().Be(ChatFinishReason.ToolCalls);
        var call = called.ToolCalls.Should().ContainSingle().Subject;
        call.FunctionName.Should().Be("get_weather");
        using (var args = JsonDocument.Parse(call.FunctionArguments))
        {
            args.RootElement.GetProperty("city").ValueKind.Should().Be(JsonValueKind.String);
            args.RootElement.GetProperty("days").GetInt32().Should().Be(3);
        }

        var streamedArgs = new StringBuilder();
        string? streamedName = null;
        // Another question: not the cache's replay of the answer above (this server caches), the provider's own stream.
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Weather in Rome?")], tools, Ct))
        {
            foreach (var part in update.ToolCallUpdates)
            {
                streamedName ??= part.FunctionName;
                streamedArgs.Append(part.FunctionArgumentsUpdate?.ToString());
            }
        }

        streamedName.Should().Be("get_weather");
        using (var joined = JsonDocument.Parse(streamedArgs.ToString()))
        {
            joined.RootElement.GetProperty("days").GetInt32().Should().Be(3, "the streamed fragments join into arguments of the schema's shape");
        }

        // After the tool's result, the model answers in text.
        ChatCompletion answered = await client.CompleteChatAsync([new UserChatMessage("Weather in Paris?"), new AssistantChatMessage(called), new ToolChatMessage(call.Id, "sunny")], tools, Ct);
        answered.FinishReason.Should().Be(ChatFinishReason.Stop);
        answered.Content[0].Text.Should().NotBeEmpty();

        var schema = new ChatCompletionOptions
        {
            ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("forecast", BinaryData.FromString("""{"type":"object","properties":{"summary":{"type":"string"},"high":{"type":"number"},"rain":{"type":"boolean"}}}""")),
        };
        ChatCompletion structured = await client.CompleteChatAsync([new UserChatMessage("Forecast?")], schema, Ct);
        using (var json = JsonDocument.Parse(structured.Content[0].Text))
        {
            json.RootElement.EnumerateObject().Select(p => p.Name).Should().Equal("summary", "high", "rain");
            json.RootElement.GetProperty("rain").GetBoolean().Should().BeTrue();
        }
    }

    /// <summary>
    /// The default configuration's simulated provider answers <c>n</c> choices (it answered one, silently dropping the
    /// rest), whole and streamed, each with its index, the usage counting them all.
    /// </summary>
    [Fact]
    public async Task The_simulated_provider_answers_every_choice_n_asks_for()
    {
        var whole = await (await Post("""{"model":"gpt-4o-mini","n":3,"max_tokens":4,"messages":[{"role":"user","content":"three choices"}]}""")).Content.ReadFromJsonAsync<JsonElement>(Ct);

        var choices = whole.GetProperty("choices").EnumerateArray().ToList();
        choices.Select(c => c.GetProperty("index").GetInt32()).Should().Equal(0, 1, 2);
        choices.Select(c => c.GetProperty("message").GetProperty("content").GetString()).Should().OnlyHaveUniqueItems();
        whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32().Should().Be(12, "four words for each of three choices");

        var streamed = await (await Post("""{"model":"gpt-4o-mini","n":2,"max_tokens":4,"stream":true,"messages":[{"role":"user","content":"two streamed choices"}]}""")).Content.ReadAsStringAsync(Ct);
        var events = streamed.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e["data: ".Length..]).Where(e => e != "[DONE]").Select(e => JsonDocument.Parse(e).RootElement).ToList();
        var byIndex = events.SelectMany(e => e.GetProperty("choices").EnumerateArray()).GroupBy(c => c.GetProperty("index").GetInt32()).ToDictionary(g => g.Key, g => g.ToList());
        byIndex.Keys.Should().BeEquivalentTo([0, 1]);
        byIndex.Values.Should().OnlyContain(c => c.Count(x => x.GetProperty("finish_reason").ValueKind == JsonValueKind.String) == 1, "each choice finishes once");
    }

    [Fact]
    public async Task The_official_Anthropic_SDK_works_against_the_gateway()
    {
        using var client = new AnthropicClient { ApiKey = Key, BaseUrl = Base.ToString().TrimEnd('/'), MaxRetries = 0 };
        MessageCreateParams Ask(string model, string text) => new()
        {
            Model = model,
            MaxTokens = 32,
            Messages = [new UserMessageParam { Content = text }],
        };

        var message = await client.Messages.Create(Ask("gpt-4o-mini", "Hello from the Anthropic SDK"), Ct);
        message.Content.Should().NotBeEmpty();
        message.Content[0].TryPickText(out var text).Should().BeTrue();
        text!.Text.Should().NotBeEmpty();
        message.Usage.OutputTokens.Should().BePositive();

        var streamed = new StringBuilder();
        var kinds = new List<string>();
        await foreach (var ev in client.Messages.CreateStreaming(Ask("gpt-4o-mini", "Stream please"), Ct))
        {
            kinds.Add(ev.Json.GetProperty("type").GetString()!);
            if (ev.TryPickContentBlockDelta(out var delta) && delta.Delta.TryPickText(out var piece))
            {
                streamed.Append(piece.Text);
            }
        }

        streamed.Length.Should().BePositive();
        kinds.First().Should().Be("message_start");
        kinds.Last().Should().Be("message_stop");

        var act = async () => await client.Messages.Create(Ask("no-such-model", "x"), Ct);
        await act.Should().ThrowAsync<AnthropicNotFoundException>();
    }

    [Fact]
    public async Task Anthropic_messages_answers_in_the_Anthropic_format()
    {
        var r = await Post("""{"model":"gpt-4o-mini","max_tokens":16,"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"Hello"}]}]}""", "v1/messages", m =>
        {
            m.Headers.Authorization = null;
            m.Headers.Add("x-api-key", Key);
            m.Headers.Add("anthropic-version", "2023-06-01");
        });

        r.StatusCode.Should().Be(HttpStatusCode.OK);
        var body = await r.Content.ReadFromJsonAsync<JsonElement>(Ct);
        body.GetProperty("type").GetString().Should().Be("message");
        body.GetProperty("role").GetString().Should().Be("assistant");
        body.GetProperty("content")[0].GetProperty("type").GetString().Should().Be("text");
        body.GetProperty("content")[0].GetProperty("text").GetString().Should().NotBeEmpty();
        body.GetProperty("stop_reason").GetString().Should().Be("max_tokens", "the answer was cut at max_tokens (16 of the simulator's words)");
        body.GetProperty("usage").GetProperty("output_tokens").GetInt32().Should().BePositive();
    }

    [Fact]
    public async Task Anthropic_messages_streams_the_Anthropic_events_in_order()
    {
        var r = await Post("""{"model":"gpt-4o-mini","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"Hi"}]}""", "v1/messages");

        var text = await r.Content.ReadAsStringAsync(Ct);
        var events = text.Split('\n').Where(l => l.StartsWith("event: ", StringComparison.Ordinal)).Select(l => l[7..]).ToList();
        events.First().Should().Be("message_start");
        events.Should().ContainInOrder("message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop");
        events.Last().Should().Be("message_stop");
        var deltas = text.Split('\n').Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => JsonDocument.Parse(l[6..]).RootElement)
            .Where(e => e.GetProperty("type").GetString() == "content_block_delta").Select(e => e.GetProperty("delta").GetProperty("text").GetString());
        string.Concat(deltas).Split(' ').Should().HaveCount(5);
    }

    [Fact]
    public async Task Anthropic_messages_errors_use_the_Anthropic_error_shape()
    {
        var missingMax = await Post("""{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}""", "v1/messages");
        var unknown = await Post("""{"model":"nope","max_tokens":5,"messages":[{"role":"user","content":"x"}]}""", "v1/messages");

        missingMax.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e1 = await missingMax.Content.ReadFromJsonAsync<JsonElement>(Ct);
        e1.GetProperty("type").GetString().Should().Be("error");
        e1.GetProperty("error").GetProperty("type").GetString().Should().Be("invalid_request_error");
        e1.GetProperty("error").GetProperty("message").GetString().Should().Contain("max_tokens");
        unknown.StatusCode.Should().Be(HttpStatusCode.NotFound);
        (await unknown.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("error").GetProperty("type").GetString().Should().Be("not_found_error");
    }

    [Fact]
    public async Task A_client_that_disconnects_cancels_its_upstream_call()
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key + "-b");
        using var cts = new CancellationTokenSource();
        var metrics = _app.Services.GetService(typeof(PipelineGateway.Metrics.IGatewayMetrics)) as PipelineGateway.Metrics.IGatewayMetrics;

        var pending = http.PostAsync(new Uri(Base, "v1/chat/completions"), new StringContent(Chat(model: "slow"), Encoding.UTF8, "application/json"), cts.Token);
        await Wait.Until(() => metrics!.GetSnapshot().Providers["sim-slow"].InFlight == 1, "the upstream call is running");
        await cts.CancelAsync();

        var act = async () => await pending;
        await act.Should().ThrowAsync<OperationCanceledException>();
        await Wait.Until(() => metrics!.GetSnapshot().CancelledRequests == 1, "the gateway cancels the request");

        // The caller is answered first; the worker's own bookkeeping follows once the upstream call has unwound.
        await Wait.Until(() => metrics!.GetSnapshot().Providers["sim-slow"].InFlight == 0, "the upstream call is cancelled and leaves the provider");
    }

    [Fact]
    public async Task Refuses_to_start_off_loopback_without_keys()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Models:0:Name"] = "m",
            ["Gateway:Models:0:Deployments:0:Provider"] = "sim",
        }).Build();
        await using var app = GatewayServer.Build(config, "http://0.0.0.0:0", l => { });

        var act = async () => await GatewayServer.StartAsync(app, Ct);

        (await act.Should().ThrowAsync<InvalidOperationException>()).Which.Message.Should().Contain("without gateway keys");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Inline_scheduling_is_Kestrels_setting_and_serves_whole_and_streamed_answers(bool inline)
    {
        var config = TestServerConfig.Simulated(new Dictionary<string, string?> { ["Gateway:Server:InlineScheduling"] = inline ? "true" : null });
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", l => { });
        app.Services.GetRequiredService<IOptions<SocketTransportOptions>>().Value.UnsafePreferInlineScheduling.Should().Be(inline);
        var baseUri = await GatewayServer.StartAsync(app, Ct);
        using var http = new HttpClient { BaseAddress = baseUri };

        using var whole = await http.PostAsync("v1/chat/completions", new StringContent(Chat(), Encoding.UTF8, "application/json"), Ct);
        whole.StatusCode.Should().Be(HttpStatusCode.OK);
        (await whole.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString().Should().NotBeNullOrEmpty();

        using var streamed = await http.PostAsync("v1/chat/completions", new StringContent(Chat(stream: true), Encoding.UTF8, "application/json"), Ct);
        streamed.StatusCode.Should().Be(HttpStatusCode.OK);
        var events = (await streamed.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        events.Length.Should().BeGreaterThan(2);
        events[^1].Should().Be("data: [DONE]");
        await app.StopAsync(Ct);
    }
}
