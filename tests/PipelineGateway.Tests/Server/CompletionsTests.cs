using System.Net;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/completions</c> over real HTTP: a native upstream (the simulator's completions route, as vLLM serves it)
/// through the gateway and directly, whole and streamed; a chat deployment (Claude) answering the prompt as chat; what
/// only the native route has (suffix, echo, logprobs, several prompts) passed over to a deployment that has it or refused;
/// a chat-only upstream's 404 passing the deployment over without cooling it down; the cache, cost, the request log;
/// refusals of bad requests; upstream errors keeping their status without the key.
/// </summary>
public sealed class CompletionsTests : LoggedFleetTests
{

    internal override Task<SimulatorFleet> StartAsync(string database) => SimulatorFleet.StartLoggedAsync(
        [("sim", "OpenAICompatible", null), ("bad", "OpenAICompatible", "status=503"), ("claude", "Anthropic", null), ("broken", "OpenAICompatible", "stream-error=server_error"), ("cut", "OpenAICompatible", "truncate-after=4")],
        [("base", ["sim"]), ("base-failover", ["bad", "sim"]), ("mixed", ["claude", "sim"]), ("claude", ["claude"]), ("broken", ["broken"]), ("cut", ["cut"])],
        "gpt-4o-mini",
        database,
        new Dictionary<string, string?>
        {
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Pipeline:RetryBaseDelay"] = "00:00:00.001",
        },
        Ct);

    private async Task<(HttpResponseMessage Response, string Text)> PostAsync(string body, string path = "v1/completions", HttpClient? http = null)
    {
        var response = await (http ?? Http).PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        return (response, await response.Content.ReadAsStringAsync(Ct));
    }

    private async Task<(HttpResponseMessage Response, JsonElement Body)> CompleteAsync(string body)
    {
        var (response, text) = await PostAsync(body);
        return (response, JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>A stream's <c>data:</c> events' JSON, in order, and whether it ended with <c>[DONE]</c>.</summary>
    private static (List<JsonElement> Events, bool Done) Events(string text)
    {
        var events = new List<JsonElement>();
        var done = false;
        foreach (var line in text.Split('\n'))
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal))
            {
                continue;
            }

            var data = line["data: ".Length..];
            done.Should().BeFalse("nothing comes after [DONE]");
            if (data == "[DONE]")
            {
                done = true;
                continue;
            }

            events.Add(JsonDocument.Parse(data).RootElement.Clone());
        }

        return (events, done);
    }

    [Fact]
    public async Task A_native_upstreams_answer_reaches_the_caller_as_it_does_directly_whole_and_streamed_and_is_billed_once()
    {
        // Suffix, echo, log probabilities and a server's own member (vLLM's top_k): the upstream gets them as sent.
        const string Body = """{"model":"base","prompt":"def fib(n):","suffix":"    return a","max_tokens":6,"echo":true,"logprobs":2,"top_k":5}""";
        var (response, answer) = await CompleteAsync(Body);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var (direct, directText) = await PostAsync(Body.Replace("\"base\"", "\"gpt-4o-mini\"", StringComparison.Ordinal), "v1/completions", new HttpClient { BaseAddress = Fleet.Sims["sim"].BaseAddress });
        direct.StatusCode.Should().Be(HttpStatusCode.OK);
        var expected = JsonDocument.Parse(directText).RootElement;

        answer.GetProperty("object").GetString().Should().Be("text_completion");
        answer.GetProperty("id").GetString().Should().Be(expected.GetProperty("id").GetString());
        answer.GetProperty("model").GetString().Should().Be("gpt-4o-mini");
        answer.GetProperty("choices").GetRawText().Should().Be(expected.GetProperty("choices").GetRawText(), "text, log probabilities and finish reason as the upstream wrote them");
        answer.GetProperty("choices")[0].GetProperty("text").GetString().Should().StartWith("def fib(n):", "echo went to the upstream");
        answer.GetProperty("usage").GetRawText().Should().Be(expected.GetProperty("usage").GetRawText());
        Header(response, "x-gateway-provider").Should().Be("sim");

        // Streamed: the same text, a piece an event, each event in the Completions shape, the usage last when asked.
        var (streamed, text) = await PostAsync("""{"model":"base","prompt":"def fib(n):","max_tokens":6,"stream":true,"stream_options":{"include_usage":true}}""");
        streamed.StatusCode.Should().Be(HttpStatusCode.OK);
        streamed.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        var (events, done) = Events(text);
        done.Should().BeTrue();
        events.Should().OnlyContain(e => e.GetProperty("object").GetString() == "text_completion");
        events.SkipLast(1).SelectMany(e => e.GetProperty("choices").EnumerateArray()).Select(c => c.TryGetProperty("logprobs", out var l) && c.TryGetProperty("finish_reason", out var f))
            .Should().OnlyContain(has => has, "every choice has its members, null or not");
        var whole = (await CompleteAsync("""{"model":"base","prompt":"def fib(n):","max_tokens":6}""")).Body.GetProperty("choices")[0];
        string.Concat(events.SelectMany(e => e.GetProperty("choices").EnumerateArray()).Select(c => c.GetProperty("text").GetString())).Should().Be(whole.GetProperty("text").GetString());
        events.SelectMany(e => e.GetProperty("choices").EnumerateArray()).Last().GetProperty("finish_reason").GetString().Should().Be(whole.GetProperty("finish_reason").GetString());
        var usage = events[^1].GetProperty("usage");
        events[^1].GetProperty("choices").GetArrayLength().Should().Be(0);
        usage.GetProperty("completion_tokens").GetInt32().Should().Be(6);

        // Billed once, the same in the header, the request log and the metrics.
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        row.GetProperty("prompt").GetString().Should().Contain("def fib(n):");
        row.GetProperty("answer").GetString().Should().Be(answer.GetProperty("choices")[0].GetProperty("text").GetString());
        row.GetProperty("prompt_tokens").GetInt32().Should().Be(answer.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        row.GetProperty("cost_usd").GetDecimal().Should().Be(decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture)).And.BePositive();
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);
    }

    [Fact]
    public async Task Several_prompts_and_n_get_a_choice_each_prompt_major_and_token_id_prompts_go_as_sent()
    {
        var (response, answer) = await CompleteAsync("""{"model":"base","prompt":["first","second"],"n":2,"max_tokens":3}""");
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var choices = answer.GetProperty("choices").EnumerateArray().ToList();
        choices.Select(c => c.GetProperty("index").GetInt32()).Should().Equal(0, 1, 2, 3);
        choices[0].GetProperty("text").GetString().Should().Be(choices[1].GetProperty("text").GetString()).And.NotBe(choices[2].GetProperty("text").GetString());

        var (streamed, text) = await PostAsync("""{"model":"base","prompt":["first","second"],"max_tokens":3,"stream":true}""");
        streamed.StatusCode.Should().Be(HttpStatusCode.OK);
        var (events, done) = Events(text);
        done.Should().BeTrue("the stream is whole once both choices finished");
        events.SelectMany(e => e.GetProperty("choices").EnumerateArray()).Where(c => c.GetProperty("finish_reason").ValueKind == JsonValueKind.String)
            .Select(c => c.GetProperty("index").GetInt32()).Should().Equal(0, 1);
        events.Select(e => e.TryGetProperty("usage", out var u)).Should().NotContain(true, "usage was not asked for");

        var (tokens, ids) = await CompleteAsync("""{"model":"base","prompt":[[1,2,3],[4]],"max_tokens":2}""");
        tokens.StatusCode.Should().Be(HttpStatusCode.OK);
        ids.GetProperty("choices").GetArrayLength().Should().Be(2);
    }

    [Fact]
    public async Task A_chat_deployment_answers_the_prompt_as_chat_and_what_only_the_native_route_has_goes_to_one_that_has_it()
    {
        var (response, answer) = await CompleteAsync("""{"model":"claude","prompt":"Say hello","max_tokens":5}""");
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        Header(response, "x-gateway-provider").Should().Be("claude");
        answer.GetProperty("object").GetString().Should().Be("text_completion");
        answer.GetProperty("id").GetString().Should().StartWith("cmpl-");
        var choice = answer.GetProperty("choices")[0];
        choice.GetProperty("text").GetString().Should().NotBeNullOrWhiteSpace();
        choice.GetProperty("finish_reason").GetString().Should().Be("length", "five tokens asked, fewer than the answer");
        choice.GetProperty("logprobs").ValueKind.Should().Be(JsonValueKind.Null);
        answer.GetProperty("usage").GetProperty("completion_tokens").GetInt32().Should().Be(5);

        var (streamed, text) = await PostAsync("""{"model":"claude","prompt":"Say hello","max_tokens":5,"stream":true}""");
        streamed.StatusCode.Should().Be(HttpStatusCode.OK);
        var (events, done) = Events(text);
        done.Should().BeTrue();
        string.Concat(events.SelectMany(e => e.GetProperty("choices").EnumerateArray()).Select(c => c.GetProperty("text").GetString())).Should().Be(choice.GetProperty("text").GetString());
        events.Should().OnlyContain(e => e.GetProperty("choices").GetArrayLength() == 1, "the chat stream's role-only opening is no event of its own");

        // No max_tokens: the API's default of 16 reaches Claude as the chat request's.
        var (_, defaulted) = await CompleteAsync("""{"model":"claude","prompt":"Count on"}""");
        defaulted.GetProperty("usage").GetProperty("completion_tokens").GetInt32().Should().Be(TextCompletions.DefaultMaxTokens);

        // A suffix (fill in the middle): passed over Claude, unsent, to the deployment with the native route.
        var before = Fleet.Sims["claude"].Requests;
        var (mixed, _) = await CompleteAsync("""{"model":"mixed","prompt":"def f(x):","suffix":"    return y"}""");
        mixed.StatusCode.Should().Be(HttpStatusCode.OK);
        Header(mixed, "x-gateway-provider").Should().Be("sim");
        foreach (var (member, value) in new[] { ("suffix", "\"x\""), ("echo", "true"), ("logprobs", "1"), ("best_of", "2"), ("prompt", "[\"a\",\"b\"]"), ("prompt", "[1,2]") })
        {
            var body = member == "prompt" ? $$"""{"model":"claude","prompt":{{value}}}""" : $$"""{"model":"claude","prompt":"p","{{member}}":{{value}}}""";
            var (refused, error) = await CompleteAsync(body);
            refused.StatusCode.Should().Be(HttpStatusCode.BadRequest, body);
            error.GetProperty("error").GetProperty("param").GetString().Should().Be(member, body);
            error.GetProperty("error").GetProperty("code").GetString().Should().Be("unsupported_value", body);
        }

        // Streamed alike: passed over to the native route, or refused before the stream starts.
        var (mixedStream, mixedText) = await PostAsync("""{"model":"mixed","prompt":"def f(x):","suffix":"    return y","stream":true}""");
        (mixedStream.StatusCode, Header(mixedStream, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        Events(mixedText).Done.Should().BeTrue();
        var (refusedStream, refusal) = await PostAsync("""{"model":"claude","prompt":"p","echo":true,"stream":true}""");
        refusedStream.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        JsonDocument.Parse(refusal).RootElement.GetProperty("error").GetProperty("param").GetString().Should().Be("echo");
        Fleet.Sims["claude"].Requests.Should().Be(before, "nothing only the native route can serve is sent to Claude");
    }

    [Fact]
    public async Task A_failing_deployment_fails_over_and_an_error_mid_stream_ends_the_stream_in_the_completions_shape()
    {
        var (failedOver, _) = await CompleteAsync("""{"model":"base-failover","prompt":"fail over"}""");
        failedOver.StatusCode.Should().Be(HttpStatusCode.OK);
        (Header(failedOver, "x-gateway-provider"), Header(failedOver, "x-gateway-attempts")).Should().Be(("sim", "2"));

        // The upstream's error right after its first event: that event reached the caller, so the error follows it.
        var (broken, text) = await PostAsync("""{"model":"broken","prompt":"break","stream":true}""");
        broken.StatusCode.Should().Be(HttpStatusCode.OK);
        var (events, done) = Events(text);
        done.Should().BeFalse("a broken stream does not end as a whole one");
        events[^1].GetProperty("error").GetProperty("message").GetString().Should().NotBeNullOrEmpty();
        events.SkipLast(1).Should().OnlyContain(e => e.GetProperty("object").GetString() == "text_completion");

        // Two prompts, the stream cut (no [DONE]) right after the first one's finish: not whole until both finished.
        var (cut, cutText) = await PostAsync("""{"model":"cut","prompt":["first","second"],"max_tokens":3,"stream":true}""");
        cut.StatusCode.Should().Be(HttpStatusCode.OK);
        var (cutEvents, cutDone) = Events(cutText);
        cutDone.Should().BeFalse("one choice of two finished: the answer is not whole");
        cutEvents[^1].GetProperty("error").GetProperty("message").GetString().Should().NotBeNullOrEmpty();
    }

    [Fact]
    public async Task The_cache_serves_the_same_completion_and_never_a_chat_answer_or_log_probabilities_from_a_stream()
    {
        async Task<string> Cache(string body)
        {
            var (response, _) = await PostAsync(body);
            response.StatusCode.Should().Be(HttpStatusCode.OK, body);
            return Header(response, "x-gateway-cache");
        }

        (await Cache("""{"model":"base","prompt":"cached prompt","max_tokens":4,"user":"a"}""")).Should().Be("miss");
        var calls = Fleet.Sims["sim"].Requests;
        (await Cache("""{"model":"base","prompt":"cached prompt","max_tokens":4,"user":"b"}""")).Should().Be("hit");
        var (replayed, text) = await PostAsync("""{"model":"base","prompt":"cached prompt","max_tokens":4,"stream":true}""");
        Header(replayed, "x-gateway-cache").Should().Be("hit", "a stream of a stored answer is replayed");
        Events(text).Done.Should().BeTrue();
        Fleet.Sims["sim"].Requests.Should().Be(calls, "hits are not sent");

        (await Cache("""{"model":"base","prompt":"cached prompt","max_tokens":5}""")).Should().Be("miss");
        (await Cache("""{"model":"base","prompt":"cached prompt","max_tokens":4,"suffix":"s"}""")).Should().Be("miss");
        using (var chat = await Http.PostAsync("v1/chat/completions", new StringContent("""{"model":"base","messages":[{"role":"user","content":"cached prompt"}],"max_tokens":4}""", Encoding.UTF8, "application/json"), Ct))
        {
            Header(chat, "x-gateway-cache").Should().Be("miss", "a chat request whose message is the prompt is another request");
        }

        (await Cache("""{"model":"base","prompt":"with logprobs","logprobs":1,"stream":true}""")).Should().Be("miss");
        (await Cache("""{"model":"base","prompt":"with logprobs","logprobs":1}""")).Should().Be("miss", "log probabilities of the completions form are not cached");
    }

    /// <summary>A native choice's own members (vLLM's <c>stop_reason</c>, <c>prompt_logprobs</c>) reach the caller, whole and streamed.</summary>
    [Fact]
    public void A_native_choices_own_members_are_written_back_into_it()
    {
        var answer = TextCompletions.ReadAnswer("""{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":" hi","index":0,"logprobs":null,"finish_reason":"stop","stop_reason":"\n\n","prompt_logprobs":null}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"""u8, out _);
        var choice = JsonDocument.Parse(TextCompletions.WriteAnswer(answer)).RootElement.GetProperty("choices")[0];
        (choice.GetProperty("stop_reason").GetString(), choice.GetProperty("prompt_logprobs").ValueKind, choice.GetProperty("text").GetString()).Should().Be(("\n\n", JsonValueKind.Null, " hi"));

        var chunk = TextCompletions.ReadEvent("""{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop","stop_reason":42}]}"""u8, out _);
        var written = JsonDocument.Parse(TextCompletions.WriteEvent(chunk, null)!).RootElement.GetProperty("choices")[0];
        written.GetProperty("stop_reason").GetInt32().Should().Be(42);

        // A chat deployment's message members are not a choice's: never written into it.
        var chat = new ChatCompletionResponse { Id = "chatcmpl-1", Model = "m", Choices = [new ChatChoice { Message = new ChatCompletionMessage { Role = "assistant", Content = new MessageContent("x"), AdditionalProperties = new() { ["reasoning_content"] = JsonDocument.Parse("\"thought\"").RootElement } }, FinishReason = "stop" }] };
        JsonDocument.Parse(TextCompletions.WriteAnswer(chat)).RootElement.GetProperty("choices")[0].TryGetProperty("reasoning_content", out _).Should().BeFalse();
    }

    [Theory]
    [InlineData("""{"prompt":"x"}""", "model")]
    [InlineData("""{"model":"base"}""", "prompt")]
    [InlineData("""{"model":"base","prompt":null}""", "prompt")]
    [InlineData("""{"model":"base","prompt":[]}""", "prompt")]
    [InlineData("""{"model":"base","prompt":{"text":"x"}}""", "prompt")]
    [InlineData("""{"model":"base","prompt":["a",[1]]}""", "prompt[1]")]
    [InlineData("""{"model":"base","prompt":[1,-2]}""", "prompt[1]")]
    [InlineData("""{"model":"base","prompt":[[1],[]]}""", "prompt[1]")]
    [InlineData("""{"model":"base","prompt":"x","max_tokens":-1}""", "max_tokens")]
    [InlineData("""{"model":"base","prompt":"x","max_tokens":"8"}""", "max_tokens")]
    [InlineData("""{"model":"base","prompt":"x","n":0}""", "n")]
    [InlineData("""{"model":"base","prompt":["a","b"],"n":100}""", "n")]
    [InlineData("""{"model":"base","prompt":"x","n":2,"best_of":1}""", "best_of")]
    [InlineData("""{"model":"base","prompt":["a","b"],"best_of":100}""", "best_of")]
    [InlineData("""{"model":"base","prompt":"x","logprobs":-1}""", "logprobs")]
    [InlineData("""{"model":"base","prompt":"x","echo":"yes"}""", "echo")]
    [InlineData("""{"model":"base","prompt":"x","suffix":5}""", "suffix")]
    [InlineData("""{"model":"base","prompt":"x","temperature":2.5}""", "temperature")]
    [InlineData("""{"model":"base","prompt":"x","top_p":-0.1}""", "top_p")]
    [InlineData("""{"model":"base","prompt":"x","presence_penalty":3}""", "presence_penalty")]
    [InlineData("""{"model":"base","prompt":"x","logit_bias":{"1":"a"}}""", "logit_bias")]
    [InlineData("""{"model":"base","prompt":"x","stop":["a","b","c","d","e"]}""", "stop")]
    [InlineData("""{"model":"base","prompt":"x","seed":1.5}""", "seed")]
    [InlineData("""{"model":"base","prompt":"x","user":1}""", "user")]
    [InlineData("""{"model":"base","prompt":"x","stream_options":{"include_usage":true}}""", "stream_options")]
    [InlineData("""{"model":"base","prompt":"x","stream":true,"stream_options":{"include_usage":1}}""", "stream_options.include_usage")]
    [InlineData("""["base"]""", null)]
    [InlineData("""{"model":"base","prompt":"x"} {}""", null)]
    [InlineData("""{"model":"base","prompt":"\ud800"}""", null)]
    [InlineData("", null)]
    public async Task A_bad_request_is_a_400_naming_its_field_and_reaches_no_upstream(string body, string? param)
    {
        var before = Fleet.Sims["sim"].Requests;
        var (response, error) = await CompleteAsync(body);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = FrontDoorTests.ErrorIn("v1/completions", error);
        e.GetProperty("type").GetString().Should().Be("invalid_request_error");
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        Fleet.Sims["sim"].Requests.Should().Be(before);
    }

    /// <summary>
    /// Token limits and budgets hold back <c>max_tokens</c> for every completion the upstream writes and bills: <c>n</c>
    /// for each prompt, or <c>best_of</c> when more (they held back one completion's).
    /// </summary>
    [Theory]
    [InlineData("""{"model":"m","prompt":"x","max_tokens":10}""", 10)]
    [InlineData("""{"model":"m","prompt":"x"}""", 16)]
    [InlineData("""{"model":"m","prompt":["a","b"],"n":3,"max_tokens":10}""", 60)]
    [InlineData("""{"model":"m","prompt":["a","b"],"n":2,"best_of":5,"max_tokens":10}""", 100)]
    public void Limits_and_budgets_hold_back_max_tokens_for_each_completion_the_upstream_bills(string body, long tokens) =>
        TextCompletions.Read(Encoding.UTF8.GetBytes(body)).CompletionTokensAsked(256).Should().Be(tokens);

    [Fact]
    public void The_request_reader_refuses_any_mutation_with_a_request_error_and_never_anything_else()
    {
        Fuzz.CheckReader(Fuzz.CompletionsTemplate, Fuzz.Seed + 13, body => TextCompletions.Read(body), request =>
        {
            var completion = request.TextCompletion!;
            completion.Choices.Should().BePositive();
            request.N.Should().Be(completion.Choices);
            completion.Generated.Should().BeInRange(completion.Choices, TextCompletions.MaxChoices);
            request.CompletionTokensAsked(256).Should().Be((long)request.MaxTokens!.Value * completion.Generated);
            request.MaxTokens.Should().NotBeNull("the API's default when none is given");
            (completion.ChatOnlyParam is null).Should().Be(completion.ChatOnlyReason is null);
            var sent = JsonDocument.Parse(TextCompletions.UpstreamBody(completion, "m", stream: true)).RootElement;
            sent.GetProperty("model").GetString().Should().Be("m");
            sent.GetProperty("stream_options").GetProperty("include_usage").GetBoolean().Should().BeTrue();
            JsonElement.DeepEquals(sent.GetProperty("prompt"), completion.Body.GetProperty("prompt")).Should().BeTrue("the prompt as sent");
        }, emptyMessage: true);
    }

    /// <summary>
    /// Which route the OpenAI-format adapter asks: an OpenAI-compatible server's completions route for any model; OpenAI's
    /// (and Azure's) only for its instruct models — its chat models get the prompt as chat; the option decides when set.
    /// </summary>
    [Theory]
    [InlineData("OpenAICompatible", "qwen2.5-coder", null, "https://up.test/v1/completions")]
    [InlineData("OpenAI", "gpt-3.5-turbo-instruct", null, "https://up.test/v1/completions")]
    [InlineData("OpenAI", "gpt-4o-mini", null, "https://up.test/v1/chat/completions")]
    [InlineData("OpenAI", "gpt-4o-mini", true, "https://up.test/v1/completions")]
    [InlineData("OpenAICompatible", "qwen2.5-coder", false, "https://up.test/v1/chat/completions")]
    [InlineData("AzureOpenAI", "my-instruct", true, "https://up.test/openai/deployments/my-instruct/completions?api-version=2024-10-21")]
    public async Task The_adapter_asks_the_native_route_for_the_models_that_have_it(string type, string model, bool? native, string url)
    {
        var nativeRoute = url.Contains("/completions", StringComparison.Ordinal) && !url.Contains("chat/", StringComparison.Ordinal);
        var answer = nativeRoute
            ? """{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"""
            : """{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":" world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}""";
        var stub = new StubHandler(HttpStatusCode.OK, answer);
        var options = new ProviderOptions { Name = "p", Type = type, BaseUrl = type == "AzureOpenAI" ? "https://up.test" : "https://up.test/v1", NativeTextCompletions = native };
        using var provider = new PipelineGateway.Providers.OpenAI.OpenAIChatProvider("p", new HttpClient(stub), options, "sk-test", TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var request = TextCompletions.Read("""{"model":"group","prompt":"hello","max_tokens":3,"min_p":0.1}"""u8);

        var response = await provider.CompleteAsync(new ProviderRequest(request, model), Ct);

        stub.LastRequest!.RequestUri!.ToString().Should().Be(url);
        var sent = JsonDocument.Parse(stub.LastBody!).RootElement;
        sent.GetProperty("model").GetString().Should().Be(model);
        if (nativeRoute)
        {
            (sent.GetProperty("prompt").GetString(), sent.GetProperty("min_p").GetDouble()).Should().Be(("hello", 0.1), "the caller's body as sent");
        }
        else
        {
            sent.GetProperty("messages")[0].GetProperty("content").GetString().Should().Be("hello", "the prompt as the one user message");
            sent.TryGetProperty("prompt", out _).Should().BeFalse();
        }

        (response.Choices[0].Message!.Content!.GetText(), response.Choices[0].FinishReason).Should().Be((" world", "stop"));
    }

    [Fact]
    public async Task A_chat_only_upstreams_404_passes_the_deployment_over_and_upstream_refusals_keep_their_status_without_the_key()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        const string KeyVariable = "PGW_TEST_COMPLETIONS_SCRIPTED_KEY";
        const string UpstreamKey = "sk-completions-upstream-secret-0123456789";
        Environment.SetEnvironmentVariable(KeyVariable, UpstreamKey);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["embeddings-404", "echo-400", "masked-429"], "m", Ct, KeyVariable);
        var http = gateway.Http;
        async Task<(HttpStatusCode Status, string Text, string Provider)> Complete(string model, bool stream = false)
        {
            var (response, text) = await PostAsync($$"""{"model":"{{model}}","prompt":"p","stream":{{(stream ? "true" : "false")}}}""", http: http);
            return (response.StatusCode, text, Header(response, "x-gateway-provider"));
        }

        foreach (var stream in new[] { false, true })
        {
            // A chat-only server (404 on its completions route): passed over, not taken out of rotation — its chat still answers.
            var (chatOnly, refusal, _) = await Complete("embeddings-404", stream);
            chatOnly.Should().Be(HttpStatusCode.BadRequest, "no deployment of the model serves completions");
            refusal.Should().Contain("serves no completions");
            (await Complete("embeddings-404-then-sim", stream)).Should().Match<(HttpStatusCode Status, string Text, string Provider)>(r => r.Status == HttpStatusCode.OK && r.Provider == "sim");

            var (rejected, rejection, _) = await Complete("echo-400", stream);
            rejected.Should().Be(HttpStatusCode.BadRequest, "the upstream refused the request itself: its status, not a 502");
            rejection.Should().Contain("temperature is too high").And.NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);
            (await Complete("masked-429", stream)).Status.Should().Be(HttpStatusCode.TooManyRequests);
        }

        using (var chat = await http.PostAsync("v1/chat/completions", new StringContent("""{"model":"embeddings-404","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), Ct))
        {
            chat.StatusCode.Should().Be(HttpStatusCode.OK, "a caller asking for completions does not cool the deployment down for chat");
        }

    }

    [Fact]
    public async Task Azures_completions_route_serves_the_deployment_in_its_path()
    {
        var (response, text) = await PostAsync("""{"prompt":"azure prompt","max_tokens":3}""", "openai/deployments/base/completions?api-version=2024-10-21");
        response.StatusCode.Should().Be(HttpStatusCode.OK, text);
        JsonDocument.Parse(text).RootElement.GetProperty("choices")[0].GetProperty("text").GetString().Should().NotBeNullOrEmpty();
        Header(response, "x-gateway-provider").Should().Be("sim");
    }
}
