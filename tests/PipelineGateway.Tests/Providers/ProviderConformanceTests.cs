using FluentAssertions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Http;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The behaviour every HTTP adapter must show against the upstream simulator over real HTTP on 127.0.0.1.
/// Each adapter's test class inherits it and says how to build the adapter.
/// </summary>
public abstract class ProviderConformanceTests : IAsyncLifetime
{
    private readonly string _keyVariable = "PGW_TEST_KEY_" + Guid.NewGuid().ToString("N");
    private readonly List<HttpChatProvider> _created = [];

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    protected string Key { get; } = "sk-test-" + Guid.NewGuid().ToString("N");

    protected SimulatorServer Simulator { get; private set; } = null!;

    protected CapturingLoggerProvider Logs { get; } = new();

    protected FakeTimeProvider Clock { get; } = new(DateTimeOffset.UtcNow);

    public async ValueTask InitializeAsync()
    {
        Environment.SetEnvironmentVariable(_keyVariable, Key);
        Simulator = await SimulatorServer.StartAsync(new SimulatorOptions { ApiKey = Key, CompletionWords = 8 }, cancellationToken: Ct);
    }

    public async ValueTask DisposeAsync()
    {
        Environment.SetEnvironmentVariable(_keyVariable, null);
        _created.ForEach(p => p.Dispose());
        await Simulator.DisposeAsync();
        GC.SuppressFinalize(this);
    }

    /// <summary>The adapter's provider type and base URL relative to the simulator.</summary>
    protected abstract ProviderOptions Options(Uri simulator);

    /// <summary>Every request an adapter made, as it left the adapter (seen by the outermost handler).</summary>
    protected List<(HttpRequestMessage Request, long? ContentLength)> Sent { get; } = [];

    private protected HttpChatProvider Create(Action<ProviderOptions>? tweak = null, TimeProvider? time = null)
    {
        var options = Options(Simulator.BaseAddress);
        options.Name = "under-test";
        options.ApiKeyEnvironmentVariable = _keyVariable;
        tweak?.Invoke(options);
        var factory = new HttpProviderFactory(options.Type);
        var provider = (HttpChatProvider)factory.Create(
            options,
            time ?? TimeProvider.System,
            LoggerFactory.Create(b => b.AddProvider(Logs).SetMinimumLevel(LogLevel.Trace)),
            pool => new ObservingHandler(pool, r => Sent.Add((r, r.Content?.Headers.ContentLength))));
        _created.Add(provider);
        return provider;
    }

    protected static ProviderRequest Ask(string text = "What is a bounded channel?", int? maxTokens = null, Action<ChatCompletionRequest>? tweak = null)
    {
        var request = new ChatCompletionRequest { Model = "group", Messages = [ChatCompletionMessage.System("Be brief."), ChatCompletionMessage.User(text)], MaxTokens = maxTokens };
        tweak?.Invoke(request);
        return new ProviderRequest(request, "upstream-model");
    }

    [Fact]
    public async Task A_whole_response_is_parsed_with_content_and_usage()
    {
        var provider = Create();

        var response = await provider.CompleteAsync(Ask(maxTokens: 5), Ct);

        response.Content.Split(' ').Should().HaveCount(5);
        response.FinishReason.Should().Be(FinishReasons.Length, "the answer was cut at max_tokens, and every upstream says so in its own words");
        response.Model.Should().Be("upstream-model");
        response.Usage!.CompletionTokens.Should().Be(5);
        response.Usage.PromptTokens.Should().BePositive();
        response.Usage.TotalTokens.Should().Be(response.Usage.PromptTokens + 5);
        Sent.Should().ContainSingle().Which.ContentLength.Should().BePositive("the body goes with its length, not chunked");
    }

    [Fact]
    public async Task A_stream_yields_the_same_text_and_ends_with_usage()
    {
        var provider = Create();
        var whole = await provider.CompleteAsync(Ask(maxTokens: 6), Ct);

        var chunks = await provider.StreamAsync(Ask(maxTokens: 6), Ct).ToListAsync(Ct);

        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be(whole.Content);
        chunks.SelectMany(c => c.Choices).Select(c => c.FinishReason).Should().Contain(FinishReasons.Length);
        chunks.Last(c => c.Usage is not null).Usage!.CompletionTokens.Should().Be(6);
    }

    [Fact]
    public async Task A_required_tool_call_comes_back_whole_and_streamed()
    {
        var provider = Create();
        void Tools(ChatCompletionRequest r)
        {
            r.Tools = [new ToolDefinition { Function = new FunctionDefinition { Name = "search", Parameters = System.Text.Json.JsonDocument.Parse("""{"type":"object","properties":{"query":{"type":"string"}}}""").RootElement } }];
            r.ToolChoice = System.Text.Json.JsonDocument.Parse("\"required\"").RootElement;
        }

        var whole = await provider.CompleteAsync(Ask(tweak: Tools), Ct);
        var call = whole.Choices[0].Message!.ToolCalls.Should().ContainSingle().Subject;
        call.Function!.Name.Should().Be("search");
        System.Text.Json.JsonDocument.Parse(call.Function.Arguments!).RootElement.GetProperty("query").GetString().Should().NotBeEmpty();
        whole.FinishReason.Should().Be(FinishReasons.ToolCalls);

        var chunks = await provider.StreamAsync(Ask(tweak: Tools), Ct).ToListAsync(Ct);
        var deltas = chunks.SelectMany(c => c.Choices).SelectMany(c => c.Delta.ToolCalls ?? []).ToList();
        deltas.Should().HaveCountGreaterThan(1, "arguments arrive in fragments");
        deltas[0].Function!.Name.Should().Be("search");
        deltas.Should().OnlyContain(d => d.Index == 0);
        string.Concat(deltas.Select(d => d.Function!.Arguments)).Should().Be(call.Function.Arguments);
        chunks.SelectMany(c => c.Choices).Select(c => c.FinishReason).Should().Contain(FinishReasons.ToolCalls);
    }

    /// <summary>Structured output against the simulator: a JSON schema is answered with an object of its shape, whole and streamed.</summary>
    [Fact]
    public async Task A_json_schema_is_answered_with_an_object_of_its_shape_whole_and_streamed()
    {
        var provider = Create();
        static void Schema(ChatCompletionRequest r) => r.ResponseFormat = System.Text.Json.JsonDocument.Parse(
            """{"type":"json_schema","json_schema":{"name":"forecast","schema":{"type":"object","properties":{"summary":{"type":"string"},"high":{"type":"number"}}}}}""").RootElement;

        var whole = await provider.CompleteAsync(Ask(tweak: Schema), Ct);
        var streamed = string.Concat((await provider.StreamAsync(Ask(tweak: Schema), Ct).ToListAsync(Ct)).SelectMany(c => c.Choices).Select(c => c.Delta.Content));

        foreach (var text in new[] { whole.Content!, streamed })
        {
            using var json = System.Text.Json.JsonDocument.Parse(text);
            json.RootElement.EnumerateObject().Select(p => p.Name).Should().Equal("summary", "high");
            json.RootElement.GetProperty("high").GetInt32().Should().Be(3);
        }
    }

    public static TheoryData<string, AttemptOutcome, int> Faults => new()
    {
        { "status=500", AttemptOutcome.RetryableError, 500 },
        { "status=503", AttemptOutcome.RetryableError, 503 },
        { "status=529", AttemptOutcome.RetryableError, 529 },
        { "status=400", AttemptOutcome.NonRetryableError, 400 },
        { "status=404", AttemptOutcome.DeploymentUnavailable, 404 },
        { "context-length", AttemptOutcome.ContextLengthExceeded, 400 },
    };

    [Theory]
    [MemberData(nameof(Faults))]
    public async Task Upstream_errors_become_classified_failures(string fault, AttemptOutcome outcome, int status)
    {
        var provider = Create(o => o.Headers["x-sim-fault"] = fault);

        var act = async () => await provider.CompleteAsync(Ask(), Ct);

        var failure = (await act.Should().ThrowAsync<ProviderException>()).Which;
        failure.Outcome.Should().Be(outcome);
        failure.StatusCode.Should().Be(status);
    }

    [Fact]
    public async Task A_429_carries_its_retry_after()
    {
        var provider = Create(o => o.Headers["x-sim-fault"] = "status=429;retry-after=2");

        var act = async () => await provider.CompleteAsync(Ask(), Ct);

        var failure = (await act.Should().ThrowAsync<ProviderException>()).Which;
        failure.Outcome.Should().Be(AttemptOutcome.RateLimited);
        failure.RetryAfter.Should().Be(TimeSpan.FromSeconds(2));
    }

    [Fact]
    public async Task A_stream_that_breaks_or_is_cut_short_is_a_retryable_failure()
    {
        foreach (var fault in new[] { "break-after=3", "truncate-after=3" })
        {
            var provider = Create(o => o.Headers["x-sim-fault"] = fault);
            var received = 0;

            var act = async () =>
            {
                await foreach (var _ in provider.StreamAsync(Ask(), Ct))
                {
                    received++;
                }
            };

            (await act.Should().ThrowAsync<ProviderException>()).Which.Outcome.Should().Be(AttemptOutcome.RetryableError, fault);
            received.Should().BeLessThan(5, fault);
        }
    }

    [Fact]
    public async Task A_hanging_upstream_times_out_on_the_injected_clock()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var provider = Create(o =>
        {
            o.Headers["x-sim-fault"] = "hang";
            o.Timeout = TimeSpan.FromSeconds(30);
        }, clock);

        var pending = provider.CompleteAsync(Ask(), Ct).AsTask();
        await Wait.Until(() => Simulator.InFlight == 1, "the request reaches the simulator");
        clock.Advance(TimeSpan.FromSeconds(31));

        var act = async () => await pending;
        (await act.Should().ThrowAsync<ProviderException>()).Which.Outcome.Should().Be(AttemptOutcome.Timeout);
        await Wait.Until(() => Simulator.Aborted == 1, "the upstream request is abandoned");
    }

    [Fact]
    public async Task Cancelling_mid_stream_closes_the_upstream_connection()
    {
        using var cts = new CancellationTokenSource();
        var simulator = await SimulatorServer.StartAsync(new SimulatorOptions { ApiKey = Key, TokenDelayMs = 50, CompletionWords = 200 }, cancellationToken: Ct);
        await using var _ = simulator;
        var provider = Create(o => o.BaseUrl = Options(simulator.BaseAddress).BaseUrl);

        var act = async () =>
        {
            await foreach (var __ in provider.StreamAsync(Ask(maxTokens: 200), cts.Token))
            {
                await cts.CancelAsync();
            }
        };

        await act.Should().ThrowAsync<OperationCanceledException>();
        await Wait.Until(() => simulator.Aborted == 1, "the simulator sees the client go away");
    }

    [Fact]
    public async Task A_wrong_key_fails_without_the_key_in_the_error_or_the_logs()
    {
        var wrongKey = "sk-wrong-" + Guid.NewGuid().ToString("N");
        Environment.SetEnvironmentVariable(_keyVariable, wrongKey);
        var provider = Create();
        Environment.SetEnvironmentVariable(_keyVariable, Key);

        var act = async () => await provider.CompleteAsync(Ask(), Ct);

        var failure = (await act.Should().ThrowAsync<ProviderException>()).Which;
        failure.StatusCode.Should().Be(401);
        failure.Outcome.Should().Be(AttemptOutcome.DeploymentUnavailable, "a refused key takes the deployment out of rotation, it is not the caller's mistake");
        var everything = failure.ToString() + Logs.All;
        everything.Should().NotContain(wrongKey).And.NotContain(wrongKey[..12]).And.NotContain(wrongKey[^4..]);
        everything.Should().NotContain(Key);
        Logs.Lines.Should().NotBeEmpty("the failed call is logged");
    }

    [Fact]
    public async Task Upstream_rate_limit_headers_are_read()
    {
        var provider = Create();

        await provider.CompleteAsync(Ask(), Ct);

        provider.RateLimits.Should().NotBeNull();
    }
}

/// <summary>A handler in front of the adapter's connection pool that sees every request as it leaves the adapter.</summary>
internal sealed class ObservingHandler(HttpMessageHandler inner, Action<HttpRequestMessage> observe) : DelegatingHandler(inner)
{
    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        observe(request);
        return base.SendAsync(request, cancellationToken);
    }
}
