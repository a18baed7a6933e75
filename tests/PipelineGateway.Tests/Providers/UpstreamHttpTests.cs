using FluentAssertions;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.Http;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The adapters' HTTP exchange with an upstream that is not our simulator (a real Kestrel on 127.0.0.1): compressed
/// answers and streams undone, an encoding nobody asked for refused, redirects reported instead of followed, and the
/// per-attempt timeout covering a body that stalls after its headers — for the OpenAI and the Anthropic wire formats.
/// </summary>
public sealed class UpstreamHttpTests : IAsyncLifetime
{
    private readonly List<HttpChatProvider> _created = [];
    private ScriptedUpstream _upstream = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Types => [ProviderTypes.OpenAICompatible, ProviderTypes.Anthropic];

    public async ValueTask InitializeAsync() => _upstream = await ScriptedUpstream.StartAsync(Ct);

    public async ValueTask DisposeAsync()
    {
        _created.ForEach(p => p.Dispose());
        await _upstream.DisposeAsync();
    }

    private HttpChatProvider Create(string type, string fault, TimeProvider? time = null, Action<ProviderOptions>? tweak = null)
    {
        var options = new ProviderOptions { Name = "scripted", Type = type, BaseUrl = new Uri(_upstream.BaseAddress, "v1").ToString() };
        options.Headers["x-fault"] = fault;
        tweak?.Invoke(options);
        var provider = (HttpChatProvider)new HttpProviderFactory(type).Create(options, time ?? TimeProvider.System, NullLoggerFactory.Instance);
        _created.Add(provider);
        return provider;
    }

    private static ProviderRequest Ask() =>
        new(new ChatCompletionRequest { Model = "group", Messages = [ChatCompletionMessage.User("Hello")] }, "upstream-model");

    [Fact]
    public async Task A_successs_rate_limit_headers_are_read_at_most_every_100_ms_and_a_failures_always()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var ok = Create("openai", "ratelimit-200", clock);

        await ok.CompleteAsync(Ask(), Ct);
        ok.RateLimits!.RemainingRequests.Should().Be(99, "the first answer is always read");
        (ok.RateLimits.LimitRequests, ok.RateLimits.ResetRequests).Should().Be((100L, TimeSpan.FromSeconds(1)));

        await ok.CompleteAsync(Ask(), Ct);
        ok.RateLimits!.RemainingRequests.Should().Be(99, "a success within 100 ms of the last reading is not read");

        clock.Advance(HttpChatProvider.RateLimitsReadInterval);
        await ok.CompleteAsync(Ask(), Ct);
        ok.RateLimits!.RemainingRequests.Should().Be(97, "100 ms later the headers are read again");

        var limited = Create("openai", "ratelimit-429", clock);
        for (var expected = 96; expected >= 95; expected--)
        {
            var act = async () => await limited.CompleteAsync(Ask(), Ct);
            await act.Should().ThrowAsync<ProviderException>();
            limited.RateLimits!.RemainingRequests.Should().Be(expected, "a failure's headers are always read");
        }
    }

    /// <summary>
    /// The error shapes OpenAI-compatible servers answer with, each read for its message (and code, and whether the prompt
    /// was too long): OpenAI's, Ollama's and LM Studio's <c>{"error":"…"}</c>, vLLM's top-level <c>message</c>, TGI's
    /// <c>error</c> with <c>error_type</c>, FastAPI's <c>detail</c> as text and as its validation list — the field and
    /// what is wrong with it, never the <c>input</c> the list echoes back.
    /// </summary>
    [Theory]
    [InlineData(400, """{"error":{"message":"Invalid value for temperature","type":"invalid_request_error","code":"invalid_value","param":"temperature"}}""", "Invalid value for temperature", "invalid_value")]
    [InlineData(400, """{"error":"invalid message format: messages[0].role must be one of system, user"}""", "invalid message format: messages[0].role must be one of system, user", null)]
    [InlineData(400, """{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","param":null,"code":400}""", "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", "context_length_exceeded")]
    [InlineData(422, """{"error":"Input validation error: `temperature` must be strictly positive","error_type":"validation"}""", "Input validation error: `temperature` must be strictly positive", null)]
    [InlineData(400, """{"detail":"Invalid request: messages must not be empty"}""", "Invalid request: messages must not be empty", null)]
    [InlineData(422, """{"detail":[{"type":"less_than_equal","loc":["body","temperature"],"msg":"Input should be less than or equal to 2","input":"sk-proj-abcdefghijklmnopqrstuvwx","ctx":{"le":2}},{"loc":["body","messages",0,"role"],"msg":"Field required"},{"msg":"Extra inputs are not permitted"},3]}""", "body.temperature: Input should be less than or equal to 2; body.messages.0.role: Field required; Extra inputs are not permitted", null)]
    [InlineData(422, """{"detail":[{"loc":["body"],"input":"x"}]}""", "(a JSON body without an error message, 41 characters)", null)]
    public async Task An_upstreams_own_error_shape_is_read_for_its_message(int status, string body, string message, string? code)
    {
        var provider = Create(ProviderTypes.OpenAICompatible, "raw", tweak: o =>
        {
            o.Headers["x-raw-status"] = status.ToString(System.Globalization.CultureInfo.InvariantCulture);
            o.Headers["x-raw-body"] = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(body));
        });

        var act = async () => await provider.CompleteAsync(Ask(), Ct);

        var ex = (await act.Should().ThrowAsync<ProviderException>()).Which;
        ex.StatusCode.Should().Be(status);
        ex.UpstreamMessage.Should().Be(message);
        ex.ErrorCode.Should().Be(code);
        ex.Outcome.Should().Be(code == "context_length_exceeded" ? AttemptOutcome.ContextLengthExceeded : AttemptOutcome.NonRetryableError);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public async Task Gzip_deflate_and_Brotli_answers_are_asked_for_and_undone(string type)
    {
        foreach (var encoding in new[] { "gzip", "deflate", "br" })
        {
            var response = await Create(type, $"{encoding}-200").CompleteAsync(Ask(), Ct);

            response.Content.Should().Be("Hello compressed", encoding);
            response.Usage!.CompletionTokens.Should().Be(2, encoding);
            _upstream.LastAcceptEncoding.Should().Be("gzip, deflate, br");
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public async Task A_compressed_stream_is_undone_as_it_arrives(string type)
    {
        var text = new System.Text.StringBuilder();
        await foreach (var chunk in Create(type, "gzip-stream").StreamAsync(Ask(), Ct))
        {
            text.Append(chunk.Choices.FirstOrDefault()?.Delta?.Content);
        }

        text.ToString().Should().Be("Hello compressed");
    }

    /// <summary>
    /// A whole answer is read up to the provider's <c>MaxAnswerBytes</c>: past it — a gzip bomb (4 KiB on the wire, 4 MiB
    /// undone), a chunked body with no length, a length announced too long — the attempt is a retryable failure that
    /// names the setting, and the read stops there. Under the default (64 MiB) the same 4 MiB answer is read whole.
    /// </summary>
    [Theory]
    [MemberData(nameof(Types))]
    public async Task A_whole_answer_past_MaxAnswerBytes_is_a_retryable_failure_never_read_whole(string type)
    {
        foreach (var fault in new[] { "bomb-200", "long-200", "long-length-200" })
        {
            var act = async () => await Create(type, fault, tweak: o => o.MaxAnswerBytes = 1024 * 1024).CompleteAsync(Ask(), Ct);

            var error = (await act.Should().ThrowAsync<ProviderException>()).Which;
            error.Outcome.Should().Be(AttemptOutcome.RetryableError, fault);
            error.Message.Should().Contain("longer than 1,048,576 bytes").And.Contain("MaxAnswerBytes", fault);
            error.Message.Should().NotContain("..", "one sentence, one period");

            var whole = await Create(type, fault).CompleteAsync(Ask(), Ct);
            whole.Content!.Length.Should().Be(ScriptedUpstream.LongAnswerChars, fault);
        }
    }

    /// <summary>A stream with a line past the reader's bound breaks, saying so in one sentence (its reason ended in a period of its own).</summary>
    [Fact]
    public async Task A_stream_line_past_the_bound_breaks_the_stream_saying_why()
    {
        var endless = "data: " + new string('x', SseEventReader.MaxLineBytes + 16) + "\n\n";
        var request = new ProviderRequest(new ChatCompletionRequest { Model = "group", Messages = [ChatCompletionMessage.User(endless)] }, "upstream-model");

        var act = async () => await Create(ProviderTypes.OpenAICompatible, "sse-echo").StreamAsync(request, Ct).ToListAsync(Ct);

        (await act.Should().ThrowAsync<ProviderException>()).Which.Message.Should().Be("The stream from 'scripted' broke: The stream sent a line longer than 4 MiB.");
    }

    [Fact]
    public async Task A_configured_Accept_Encoding_is_sent_instead_of_the_gateways()
    {
        await Create(ProviderTypes.OpenAICompatible, "gzip-200", tweak: o => o.Headers["Accept-Encoding"] = "gzip").CompleteAsync(Ask(), Ct);

        _upstream.LastAcceptEncoding.Should().Be("gzip");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public async Task An_encoding_the_gateway_did_not_ask_for_is_a_retryable_failure_not_garbage(string type)
    {
        var act = async () => await Create(type, "zstd-200").CompleteAsync(Ask(), Ct);

        var error = (await act.Should().ThrowAsync<ProviderException>()).Which;
        error.Outcome.Should().Be(AttemptOutcome.RetryableError);
        error.InnerException.Should().BeOfType<InvalidDataException>();
        error.Message.Should().Contain("encoded as 'zstd', which the gateway did not ask for");
    }

    [Fact]
    public async Task A_stream_in_an_encoding_the_gateway_did_not_ask_for_is_a_retryable_failure()
    {
        var act = async () =>
        {
            await foreach (var _ in Create(ProviderTypes.OpenAICompatible, "zstd-200").StreamAsync(Ask(), Ct))
            {
            }
        };

        var error = (await act.Should().ThrowAsync<ProviderException>()).Which;
        error.Outcome.Should().Be(AttemptOutcome.RetryableError);
        error.Message.Should().Contain("encoded as 'zstd'");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public async Task A_redirect_is_not_followed_and_says_where_it_points_without_its_query(string type)
    {
        var act = async () => await Create(type, "redirect-308").CompleteAsync(Ask(), Ct);

        var error = (await act.Should().ThrowAsync<ProviderException>()).Which;
        error.Outcome.Should().Be(AttemptOutcome.DeploymentUnavailable, "a deployment whose address moved is out of rotation until its BaseUrl is fixed");
        error.StatusCode.Should().Be(308);
        error.Message.Should().Contain("https://moved.example/v1/chat/completions").And.Contain("redirects are not followed").And.NotContain("token=");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public async Task The_per_attempt_timeout_covers_a_body_that_stalls_after_its_headers(string type)
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var provider = Create(type, "stall-body", clock, o => o.Timeout = TimeSpan.FromSeconds(30));

        var pending = provider.CompleteAsync(Ask(), Ct).AsTask();
        await Wait.Until(() => _upstream.Stalled == 1, "the upstream sent its headers and part of the body");
        clock.Advance(TimeSpan.FromSeconds(29));
        pending.IsCompleted.Should().BeFalse("the limit is not reached yet");
        clock.Advance(TimeSpan.FromSeconds(2));

        var act = async () => await pending;
        (await act.Should().ThrowAsync<ProviderException>()).Which.Outcome.Should().Be(AttemptOutcome.Timeout);
    }

    [Fact]
    public async Task An_attempt_whose_request_gives_up_first_runs_on_the_requests_deadline_and_a_later_one_keeps_its_own_limit()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var provider = Create(ProviderTypes.OpenAICompatible, "stall-body", clock, o => o.Timeout = TimeSpan.FromSeconds(30));

        // The request gives up in 10 s, before the attempt's 30 s: the attempt runs on the request's token alone.
        using var request = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var first = provider.CompleteAsync(Ask() with { Deadline = clock.GetUtcNow().AddSeconds(10) }, request.Token).AsTask();
        await Wait.Until(() => _upstream.Stalled == 1, "the upstream sent its headers and part of the body");
        clock.Advance(TimeSpan.FromSeconds(31));
        first.IsCompleted.Should().BeFalse("no limit of its own: the request's deadline comes first, and its token ends the attempt");
        await request.CancelAsync();
        var cancelled = async () => await first;
        await cancelled.Should().ThrowAsync<OperationCanceledException>("the request's cancellation, not an attempt timeout");

        // The request gives up in 5 minutes, after the attempt's 30 s: the attempt's own limit ends it, as before.
        var second = provider.CompleteAsync(Ask() with { Deadline = clock.GetUtcNow().AddMinutes(5) }, Ct).AsTask();
        await Wait.Until(() => _upstream.Stalled == 2, "the second attempt stalls too");
        clock.Advance(TimeSpan.FromSeconds(31));
        var timedOut = async () => await second;
        (await timedOut.Should().ThrowAsync<ProviderException>()).Which.Outcome.Should().Be(AttemptOutcome.Timeout);
    }

    [Theory]
    [InlineData("""{"choices":null}""")]
    [InlineData("""{"choices":[null]}""")]
    [InlineData("""{"choices":[{"index":0,"message":null,"finish_reason":"stop"}]}""")]
    [InlineData("""{"id":null,"model":null,"object":null,"choices":[{"index":0,"message":{"role":null,"content":null}}]}""")]
    [InlineData("""{"choices":[{"index":0,"message":{"role":"assistant","content":[null]}}]}""")]
    [InlineData("""{"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":-1,"total_tokens":0}}""")]
    public async Task An_odd_but_valid_JSON_answer_gets_a_typed_error_or_an_answer_never_a_crash(string body)
    {
        await using var gateway = await Answering("body-200", body);
        try
        {
            var response = await gateway.SubmitAsync(TestGateway.Request("m"), Ct);
            _ = (response.Content, response.FinishReason, response.Choices.Count); // the answer's own API holds up too
        }
        catch (Exception ex)
        {
            ex.Should().BeAssignableTo<GatewayException>($"the upstream answered {body}");
        }
    }

    [Theory]
    [InlineData("null", false)]
    [InlineData("""{"choices":[null]}""", false)]
    [InlineData("""{"choices":[{"index":0,"delta":null}]}""", false)]
    [InlineData("""{"choices":[{"index":0,"delta":{"tool_calls":[null]}}]}""", false)]
    [InlineData("""{"choices":null,"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}""", true)]
    public async Task An_odd_but_valid_JSON_stream_event_gets_a_typed_error_or_is_read_never_a_crash(string chunk, bool readable)
    {
        await using var gateway = await Answering("sse-200", chunk);

        var act = async () => await gateway.StreamAsync(TestGateway.Request("m"), Ct).ToListAsync(Ct);

        if (readable)
        {
            (await act()).Should().OnlyContain(c => c.Choices != null);
        }
        else
        {
            await act.Should().ThrowAsync<GatewayException>();
        }
    }

    /// <summary>
    /// An upstream that reports no usage (it ignores <c>stream_options.include_usage</c>, or leaves <c>usage</c> out)
    /// is billed the gateway's estimate, marked <c>"estimated": true</c>: the prompt as admission counts it (with the
    /// deployment's tokenizer when the model asked for has none), the answer's
    /// text counted with the model's tokenizer when a token limit has the gateway count tokens, else at about four
    /// characters a token (a gateway without token limits never loads a tokenizer: 42 MB live, ~300 ms) — whole, and
    /// streamed (the cache's copy of the text counted) — and the metrics, the cost and the caller's usage say the same.
    /// Before, it was billed nothing at all.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task An_answer_without_usage_is_billed_the_gateways_estimate_marked_as_one_whole_and_streamed(bool tokenLimit)
    {
        const string Text = "Bounded channels push back on fast producers.";
        var o200k = Microsoft.ML.Tokenizers.TiktokenTokenizer.CreateForEncoding("o200k_base");
        var completion = tokenLimit ? o200k.CountTokens(Text) : Text.Length / 4;
        await using var gateway = await Answering("body-200", $$"""{"id":"x","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"{{Text}}"},"finish_reason":"stop"}]}""", deploymentModel: "gpt-4o-mini", tokenLimit: tokenLimit);
        var request = TestGateway.Request("m", "What is a bounded channel?");

        var response = await gateway.SubmitAsync(request, Ct);

        var usage = response.Usage!;
        o200k.CountTokens(Text).Should().NotBe(Text.Length / 4, "the two ways of counting tell apart here");
        usage.CompletionTokens.Should().Be(completion);
        usage.PromptTokens.Should().Be(PipelineGateway.Admission.TokenCounter.CountPrompt(request, tokenLimit ? "gpt-4o-mini" : "m"), "the prompt as admission counts it: with the deployment's tokenizer (m has none; ModelGroup.CountingModel), or approximated when no token limit counted it");
        usage.TotalTokens.Should().Be(usage.PromptTokens + usage.CompletionTokens);
        usage.AdditionalProperties!["estimated"].GetBoolean().Should().BeTrue();
        response.Gateway!.Cost.Should().BePositive("gpt-4o-mini is priced: the estimate is billed");
        await Wait.Until(() => gateway.Metrics.GetSnapshot().TotalRequests == 1, "the request ends");
        var metrics = gateway.Metrics.GetSnapshot();
        (metrics.PromptTokens, metrics.CompletionTokens, metrics.TotalCost).Should().Be((usage.PromptTokens, usage.CompletionTokens, response.Gateway.Cost));

        await using var streaming = await Answering("sse-echo", string.Empty, deploymentModel: "gpt-4o-mini", tokenLimit: tokenLimit);
        var sse = string.Concat(new[] { "Bounded channels", " push back", " on fast producers." }.Select(t => $$"""data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"{{t}}"},"finish_reason":null}]}""" + "\n\n"))
            + """data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}""" + "\n\ndata: [DONE]\n\n";

        var chunks = await streaming.StreamAsync(TestGateway.Request("m", sse), Ct).ToListAsync(Ct);

        var streamed = chunks[^1].Usage!;
        streamed.CompletionTokens.Should().Be(completion, "the cached copy's text is counted, not the events");
        streamed.AdditionalProperties!["estimated"].GetBoolean().Should().BeTrue();
        chunks[^1].Choices.Should().ContainSingle().Which.FinishReason.Should().Be("stop", "the estimate rides on the finishing chunk: no chunk is added for it");
        await Wait.Until(() => streaming.Metrics.GetSnapshot().TotalRequests == 1, "the stream ends");
        streaming.Metrics.GetSnapshot().CompletionTokens.Should().Be(streamed.CompletionTokens);
    }

    /// <summary>
    /// A server that does not stream (a simple mock, a buffering proxy) answers a stream request whole, as JSON: the
    /// caller gets that answer as a stream — text, finish, usage — in either wire format, instead of a "stream" without
    /// events failed and retried.
    /// </summary>
    [Theory]
    [InlineData(ProviderTypes.OpenAICompatible, """{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Answered whole."},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}""")]
    [InlineData(ProviderTypes.Anthropic, """{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Answered whole."}],"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":3}}""")]
    public async Task A_stream_request_answered_whole_as_JSON_reaches_the_caller_as_a_stream(string type, string answer)
    {
        await using var gateway = await Answering("body-200", answer, type: type);

        var chunks = await gateway.StreamAsync(TestGateway.Request("m"), Ct).ToListAsync(Ct);

        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("Answered whole.");
        chunks.SelectMany(c => c.Choices).Select(c => c.FinishReason).Should().Contain(FinishReasons.Stop);
        var usage = chunks.Last(c => c.Usage is not null).Usage!;
        (usage.PromptTokens, usage.CompletionTokens).Should().Be((4, 3), "the upstream's own usage, not an estimate");
    }

    /// <summary>
    /// The mirror case: a server or proxy that streams whatever it is asked answers a whole request with server-sent
    /// events. The caller gets the answer those events carry — text, finish, the upstream's usage — in either wire
    /// format, instead of a failure on "'d' is an invalid start of a value" retried three times; events cut before the
    /// answer finished are still a failure.
    /// </summary>
    [Theory]
    [InlineData(ProviderTypes.OpenAICompatible, """
        data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Streamed "},"finish_reason":null}]}

        data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"anyway."},"finish_reason":"stop"}]}

        data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}

        data: [DONE]


        """)]
    [InlineData(ProviderTypes.Anthropic, """
        event: message_start
        data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":4,"output_tokens":1}}}

        event: content_block_start
        data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

        event: content_block_delta
        data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Streamed anyway."}}

        event: message_delta
        data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}

        event: message_stop
        data: {"type":"message_stop"}


        """)]
    public async Task A_whole_request_answered_with_events_reaches_the_caller_whole(string type, string events)
    {
        await using var gateway = await Answering("sse-echo", string.Empty, type: type);

        var answer = await gateway.SubmitAsync(TestGateway.Request("m", events), Ct);

        answer.Content.Should().Be("Streamed anyway.");
        answer.Choices[0].FinishReason.Should().Be(FinishReasons.Stop);
        (answer.Usage!.PromptTokens, answer.Usage.CompletionTokens).Should().Be((4, 3), "the upstream's own usage, not an estimate");

        var cut = async () => await gateway.SubmitAsync(TestGateway.Request("m", events[..(events.LastIndexOf("\n\n", events.IndexOf("anyway", StringComparison.Ordinal), StringComparison.Ordinal) + 2)]), Ct);
        (await cut.Should().ThrowAsync<AllProvidersFailedException>()).Which.Message.Should().Contain("ended before");
        var invalid = async () => await gateway.SubmitAsync(TestGateway.Request("m", "data: {not json\n\n"), Ct);
        (await invalid.Should().ThrowAsync<AllProvidersFailedException>()).Which.Message.Should().Contain("invalid event");
    }

    /// <summary>
    /// An answer the gateway cannot read says why in the caller's words — bytes that are not UTF-8 and where, a value of
    /// the wrong type and where — never the .NET type it was read into nor the reader's line-and-byte tail.
    /// </summary>
    [Theory]
    [InlineData("latin1-200", """{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"caf\u00e9"},"finish_reason":"stop"}]}""", "not valid UTF-8 (at byte 127)")]
    [InlineData("body-200", """{"id":5,"object":"chat.completion","created":1,"model":"m","choices":[]}""", "'id' must be a string, not a number (at byte 6)")]
    [InlineData("body-200", """{"id":"x","object":"chat.completion","created":1.5,"model":"m","choices":[]}""", "'created' must be an integer, not a number out of range or with a fraction (at byte 47)")]
    [InlineData("body-200", """{"id":"x","choices":[}""", "'}' is an invalid start of a value")]
    public async Task An_unreadable_answer_says_why_in_plain_words(string fault, string body, string why)
    {
        await using var gateway = await Answering(fault, body);

        var act = async () => await gateway.SubmitAsync(TestGateway.Request("m"), Ct);

        var message = (await act.Should().ThrowAsync<AllProvidersFailedException>()).Which.Message;
        message.Should().Contain($"'odd' returned a body that is not a valid chat completion: {why}.");
        message.Should().NotContain("PipelineGateway.").And.NotContain("LineNumber");
    }

    /// <summary>
    /// An error sent with a 200 and no answer (<c>{"error":{…}}</c>) is the upstream's failure, classified by its type —
    /// whole and streamed — never an empty answer passed on, and billed, with the error beside it.
    /// </summary>
    [Fact]
    public async Task An_error_sent_with_a_200_is_a_failure_not_an_empty_answer()
    {
        await using var gateway = await Answering("body-200", """{"error":{"message":"The engine is currently overloaded","type":"server_error"}}""");

        var whole = async () => await gateway.SubmitAsync(TestGateway.Request("m"), Ct);
        var streamed = async () => await gateway.StreamAsync(TestGateway.Request("m", "another"), Ct).ToListAsync(Ct);

        (await whole.Should().ThrowAsync<AllProvidersFailedException>()).Which.Message.Should().Contain("The engine is currently overloaded");
        (await streamed.Should().ThrowAsync<AllProvidersFailedException>()).Which.Attempts.Should().OnlyContain(a => a.Outcome == AttemptOutcome.RetryableError);
        await Wait.Until(() => gateway.Metrics.GetSnapshot().TotalRequests == 2, "both requests end");
        var metrics = gateway.Metrics.GetSnapshot();
        (metrics.FailedRequests, metrics.TotalCost, metrics.PromptTokens).Should().Be((2, 0m, 0));
    }

    /// <summary>An Anthropic-compatible server's answer without <c>usage</c> is billed the estimate too, not a zero.</summary>
    [Fact]
    public async Task An_Anthropic_answer_without_usage_is_billed_the_estimate_not_a_zero()
    {
        await using var gateway = await Answering("body-200", """{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Bounded channels push back."}],"stop_reason":"end_turn"}""", deploymentModel: "claude-sonnet-4-5", type: ProviderTypes.Anthropic);

        var response = await gateway.SubmitAsync(TestGateway.Request("m", "What is a bounded channel?"), Ct);

        PipelineGateway.Admission.TokenCounter.IsEstimated(response.Usage).Should().BeTrue();
        response.Usage!.CompletionTokens.Should().BePositive();
        response.Gateway!.Cost.Should().BePositive();
    }

    /// <summary>
    /// A usage no upstream could have used — a negative count, counts whose sum overflows — refunds nothing: it is
    /// dropped and the answer billed the gateway's estimate (whole and streamed); a total below its parts' sum is raised
    /// to it (the token limits settle on the total). Before, a negative usage lowered the cost total and the budgets.
    /// </summary>
    [Theory]
    [InlineData("""{"prompt_tokens":-5000,"completion_tokens":-1000,"total_tokens":-6000}""", true, 0)]
    [InlineData("""{"prompt_tokens":10,"completion_tokens":-1,"total_tokens":9}""", true, 0)]
    [InlineData("""{"prompt_tokens":2147483647,"completion_tokens":2147483647,"total_tokens":-2}""", true, 0)]
    [InlineData("""{"prompt_tokens":12,"completion_tokens":5,"total_tokens":-2}""", false, 17)]
    [InlineData("""{"prompt_tokens":12,"completion_tokens":5,"total_tokens":20}""", false, 20)]
    public async Task An_unusable_upstream_usage_refunds_nothing_and_is_billed_the_estimate(string usage, bool estimated, int total)
    {
        var answer = $$"""{"id":"x","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Bounded channels push back."},"finish_reason":"stop"}],"usage":{{usage}}}""";
        await using var gateway = await Answering("body-200", answer, deploymentModel: "gpt-4o-mini");

        var response = await gateway.SubmitAsync(TestGateway.Request("m"), Ct);

        Check(response.Usage!, response.Gateway!.Cost);
        await Wait.Until(() => gateway.Metrics.GetSnapshot().TotalRequests == 1, "the request ends");
        var metrics = gateway.Metrics.GetSnapshot();
        (metrics.PromptTokens, metrics.CompletionTokens, metrics.TotalCost).Should().Be((response.Usage!.PromptTokens, response.Usage.CompletionTokens, response.Gateway.Cost));

        await using var streaming = await Answering("sse-echo", string.Empty, deploymentModel: "gpt-4o-mini");
        var sse = """data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Bounded channels push back."},"finish_reason":"stop"}]}""" + "\n\n"
            + $$"""data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{{usage}}}""" + "\n\ndata: [DONE]\n\n";

        var chunks = await streaming.StreamAsync(TestGateway.Request("m", sse), Ct).ToListAsync(Ct);

        var last = chunks.Last(c => c.Usage is not null);
        Check(last.Usage!, last.Gateway!.Cost);

        void Check(TokenUsage billed, decimal cost)
        {
            PipelineGateway.Admission.TokenCounter.IsEstimated(billed).Should().Be(estimated, usage);
            billed.PromptTokens.Should().BeGreaterThanOrEqualTo(0);
            billed.CompletionTokens.Should().BeGreaterThanOrEqualTo(0);
            billed.TotalTokens.Should().Be(estimated ? billed.PromptTokens + billed.CompletionTokens : total);
            cost.Should().BeGreaterThanOrEqualTo(0);
        }
    }

    [Fact]
    public async Task An_upstream_answer_without_id_model_created_or_role_reaches_the_caller_with_them_filled_in()
    {
        await using var gateway = await Answering("body-200", """{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"stop"}]}""");

        var response = await gateway.SubmitAsync(TestGateway.Request("m"), Ct);

        response.Content.Should().Be("hi");
        response.Id.Should().Be("chatcmpl-" + response.Gateway!.RequestId);
        response.Model.Should().NotBeEmpty();
        response.Created.Should().BeGreaterThan(0);
        response.Object.Should().Be("chat.completion");
        response.Choices[0].Message!.Role.Should().Be("assistant");
    }

    /// <summary>
    /// Claude Code through the gateway to a strict OpenAI-compatible endpoint (Fireworks, Kimi): Anthropic's own members
    /// (prompt-caching marks, Claude's thinking) are a 400 there; <c>StripAnthropicMembers</c> leaves them out.
    /// </summary>
    [Theory]
    [InlineData(null, false)]
    [InlineData(true, true)]
    public async Task A_strict_OpenAI_compatible_endpoint_gets_no_Anthropic_members_when_told_to_strip_them(bool? strip, bool served)
    {
        await using var gateway = await Answering("strict-200", """{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}""", strip);
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse("""
            {"model":"m","max_tokens":64,"top_k":5,"context_management":{"edits":[{"type":"clear_tool_uses_20250919"}]},"system":[{"type":"text","text":"Rules.","cache_control":{"type":"ephemeral"}}],
             "messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":[{"type":"thinking","thinking":"Hm.","signature":"sig"},{"type":"text","text":"Hello."}]},{"role":"user","content":"Again"}]}
            """u8.ToArray()));

        var act = async () => await gateway.SubmitAsync(request, Ct);

        if (served)
        {
            (await act()).Content.Should().Be("ok");
        }
        else
        {
            (await act.Should().ThrowAsync<UpstreamRejectedException>()).Which.Message.Should().Contain("Extra inputs are not permitted");
        }
    }

    /// <summary>A gateway over the scripted upstream answering with <paramref name="fault"/> and <paramref name="body"/>, one attempt per request.</summary>
    private async Task<Gateway> Answering(string fault, string body, bool? stripAnthropicMembers = null, string? deploymentModel = null, string type = ProviderTypes.OpenAICompatible, bool tokenLimit = false) => await new GatewayBuilder()
        .Configure(o =>
        {
            var provider = new ProviderOptions { Name = "odd", Type = type, BaseUrl = new Uri(_upstream.BaseAddress, "v1").ToString(), StripAnthropicMembers = stripAnthropicMembers };
            if (type == ProviderTypes.Anthropic)
            {
                Environment.SetEnvironmentVariable("PGW_TEST_ODD_CLAUDE_KEY", "sk-ant-odd");
                provider.ApiKeyEnvironmentVariable = "PGW_TEST_ODD_CLAUDE_KEY";
            }

            provider.Headers["x-fault"] = fault;
            provider.Headers["x-body"] = body;
            o.Providers.Add(provider);
            o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "odd", Model = deploymentModel }] });
            o.Cache.Enabled = true;
            o.Pipeline.MaxAttempts = 1;
            if (tokenLimit)
            {
                o.Admission.RateLimits.Add(new PipelineGateway.Admission.RateLimitRule { Unit = PipelineGateway.Admission.RateLimitUnit.Tokens, Limit = 1_000_000, Window = TimeSpan.FromMinutes(1) });
            }
        })
        .StartAsync(Ct);
}
