using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Metrics;

public sealed class MetricsTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("gpt-4o", 1_000_000, 0, 2.50)]
    [InlineData("gpt-4o", 0, 1_000_000, 10.00)]
    [InlineData("gpt-4o-mini-2024-07-18", 1000, 500, 0.00045)]
    [InlineData("claude-sonnet-4-5", 2000, 1000, 0.021)]
    [InlineData("unknown-model", 1000, 1000, 0)]
    [InlineData("gpt-5-mini-2025-08-07", 1000, 1000, 0.00225)]
    [InlineData("gpt-5.1", 1_000_000, 0, 1.25)]
    [InlineData("o4-mini", 0, 1_000_000, 4.40)]
    public void Cost_is_priced_from_usage_by_the_longest_known_prefix(string model, int prompt, int completion, double expected)
    {
        var table = new PricingTable((IReadOnlyDictionary<string, ModelPrice>?)null);
        var deployment = Catalog(model).Groups[0].Deployments[0];

        table.Cost(deployment, TokenUsage.Of(prompt, completion)).Should().Be((decimal)expected);
    }

    [Fact]
    public void Prompt_cache_reads_and_writes_are_priced_at_their_own_rates()
    {
        var table = new PricingTable((IReadOnlyDictionary<string, ModelPrice>?)null);
        var usage = PromptCacheTokens.Usage(fresh: 1000, completion: 100, read: 2000, written: 4000);

        usage.PromptTokens.Should().Be(7000, "prompt_tokens counts every prompt token, cached or not");
        table.Cost(Catalog("claude-sonnet-4-5").Groups[0].Deployments[0], usage).Should().Be(((1000 * 3.00m) + (2000 * 0.30m) + (4000 * 3.75m) + (100 * 15.00m)) / 1_000_000m);
        table.Cost(Catalog("claude-opus-4-5-20251101").Groups[0].Deployments[0], TokenUsage.Of(1_000_000, 0)).Should().Be(5.00m, "Opus 4.5 is not priced as Opus 4");
        table.Cost(Catalog("gpt-4o").Groups[0].Deployments[0], usage).Should().Be(((1000 * 2.50m) + (2000 * 1.25m) + (4000 * 2.50m) + (100 * 10.00m)) / 1_000_000m, "no write price: writes at the input price");
    }

    [Theory]
    [InlineData(true, "Warning")]
    [InlineData(false, "Information")]
    public async Task A_deployment_with_no_known_price_is_named_at_start_a_warning_when_budgets_count_on_it(bool budget, string level)
    {
        var logs = new CapturingLoggerProvider();
        await using var gateway = await new GatewayBuilder()
            .ConfigureLogging(l => l.AddProvider(logs))
            .AddProvider(new FakeProvider("local"))
            .AddModel("m", m => m.Deploy("local", "my-finetune-7b").Deploy("local", "gpt-4o-mini"))
            .Configure(o =>
            {
                if (budget)
                {
                    o.Budgets.Add(new BudgetOptions { LimitUsd = 10 });
                }
            })
            .StartAsync(Ct);

        var lines = logs.Lines.Where(l => l.Contains("no price is known", StringComparison.Ordinal)).ToList();
        lines.Should().ContainSingle().Which.Should().StartWith(level).And.Contain("my-finetune-7b").And.NotContain("gpt-4o-mini");
    }

    [Fact]
    public void Configured_and_deployment_prices_override_the_defaults()
    {
        var table = new PricingTable(new Dictionary<string, ModelPrice> { ["gpt-4o"] = new() { InputPerMillion = 1m, OutputPerMillion = 1m } });
        table.Cost(Catalog("gpt-4o").Groups[0].Deployments[0], TokenUsage.Of(1_000_000, 0)).Should().Be(1m);
        table.Cost(Catalog("gpt-4o", input: 7m).Groups[0].Deployments[0], TokenUsage.Of(1_000_000, 0)).Should().Be(7m);
    }

    [Fact]
    public async Task The_snapshot_json_has_the_named_fields_with_the_right_values_after_a_scripted_mix()
    {
        var primary = new FakeProvider("primary") { OnComplete = (r, _) => r.Request.Messages[0].Content!.GetText() == "fail-over" ? throw FakeProvider.Fail503() : ValueTask.FromResult(FakeProvider.Answer(r.Model, "p")) };
        var backup = new FakeProvider("backup") { OnComplete = (r, _) => r.Request.Messages[0].Content!.GetText() == "fail-over" ? ValueTask.FromResult(FakeProvider.Answer(r.Model, "b")) : throw new ProviderException(AttemptOutcome.NonRetryableError, "no", 400) };
        await using var gateway = await TestGateway.With(primary, backup)
            .AddCache(TimeSpan.FromHours(1))
            .Configure(o => o.Models[0].Deployments.ForEach(d => { d.InputPricePerMillion = 1_000_000m; d.OutputPricePerMillion = 1_000_000m; }))
            .StartAsync(Ct);

        await gateway.SubmitAsync(TestGateway.Request(text: "a"), Ct);          // primary
        await gateway.SubmitAsync(TestGateway.Request(text: "a"), Ct);          // cache hit
        await gateway.SubmitAsync(TestGateway.Request(text: "fail-over"), Ct);  // primary 503 → backup
        var bad = TestGateway.Request(text: "fail-over");
        bad.Gateway = new GatewayRequestOptions { NoStore = true };
        primary.OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.NonRetryableError, "bad request", 400);
        var act = async () => await gateway.SubmitAsync(bad, Ct);               // a 400: failed, not retried
        await act.Should().ThrowAsync<UpstreamRejectedException>();

        var json = JsonDocument.Parse(JsonSerializer.Serialize(gateway.Metrics.GetSnapshot(), GatewayJsonContext.Default.GatewayMetricsSnapshot)).RootElement;
        json.GetProperty("total_requests").GetInt64().Should().Be(4);
        json.GetProperty("cached_requests").GetInt64().Should().Be(1);
        json.GetProperty("failed_requests").GetInt64().Should().Be(1);
        json.GetProperty("cache_hit_rate").GetDouble().Should().Be(0.25, "1 cached answer in 4 requests");
        json.GetProperty("cache_lookup_hit_rate").GetDouble().Should().Be(0.3333, "1 hit in 3 lookups (the no-store request does not look)");
        json.GetProperty("cache_lookups").GetInt64().Should().Be(3);
        json.GetProperty("avg_latency_ms").GetDouble().Should().BeGreaterThan(0);
        json.GetProperty("total_cost").GetDecimal().Should().Be(8m, "two answers of 3 + 1 tokens at $1 a token");
        json.GetProperty("fallbacks").GetInt64().Should().Be(1);
        var providers = json.GetProperty("providers");
        providers.GetProperty("primary").GetProperty("success_rate").GetDouble().Should().Be(Math.Round(1.0 / 3, 4));
        providers.GetProperty("primary").GetProperty("total_cost").GetDecimal().Should().Be(4m);
        providers.GetProperty("backup").GetProperty("success_rate").GetDouble().Should().Be(1);
        providers.GetProperty("backup").GetProperty("avg_latency_ms").GetDouble().Should().BeGreaterThanOrEqualTo(0);
        json.GetProperty("models").GetProperty("m").GetProperty("requests").GetInt64().Should().Be(4);
        json.GetProperty("cost_saved").GetDecimal().Should().Be(4m);
    }

    [Fact]
    public async Task Keys_past_MaxTenants_are_counted_together_not_each_and_not_lost()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await TestGateway.With(provider).Configure(o => o.Fairness.MaxTenants = 3).StartAsync(Ct);

        // A library caller's RateLimitKey can be an end user's id: a key map without a bound grows with every user.
        for (var i = 0; i < 50; i++)
        {
            var request = TestGateway.Request();
            request.Gateway = new GatewayRequestOptions { RateLimitKey = "user-" + (i % 10) };
            await gateway.SubmitAsync(request, Ct);
        }

        var keys = gateway.Metrics.GetSnapshot().Keys;
        keys.Keys.Should().BeEquivalentTo(["user-0", "user-1", "user-2", "(other keys)"]);
        keys["user-0"].Requests.Should().Be(5);
        keys["(other keys)"].Requests.Should().Be(35);
        keys["(other keys)"].PromptTokens.Should().Be(35 * 3);
        keys.Values.Sum(k => k.Requests).Should().Be(gateway.Metrics.GetSnapshot().TotalRequests);
    }

    [Fact]
    public async Task Counts_are_exact_after_100000_requests_from_64_threads()
    {
        var provider = new FakeProvider("p") { OnComplete = (r, _) => ValueTask.FromResult(FakeProvider.Answer(r.Model, "x")) };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider, workers: 8, queueCapacity: 1024)
            .AddModel("m", "p")
            .Configure(o => o.Pipeline.MaxInFlight = 2048)
            .StartAsync(Ct);

        await Task.WhenAll(Enumerable.Range(0, 64).Select(t => Task.Run(async () =>
        {
            for (var i = 0; i < 100_000 / 64 + (t < 100_000 % 64 ? 1 : 0); i++)
            {
                await gateway.SubmitAsync(TestGateway.Request(), Ct);
            }
        }, Ct)));

        var s = gateway.Metrics.GetSnapshot();
        s.TotalRequests.Should().Be(100_000);
        s.SuccessfulRequests.Should().Be(100_000);
        s.PromptTokens.Should().Be(300_000);
        s.CompletionTokens.Should().Be(100_000);
        s.Providers["p"].Requests.Should().Be(100_000);
        s.Models["m"].Requests.Should().Be(100_000);
        provider.Calls.Should().Be(100_000);
    }

    [Fact]
    public async Task Instruments_follow_the_GenAI_conventions()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider)
            .Configure(o => o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "p", Model = "gpt-4o" }] }))
            .StartAsync(Ct);
        var instruments = gateway.Services.GetRequiredService<GatewayInstruments>();
        using var duration = new MetricCollector<double>(instruments.Duration);
        using var tokens = new MetricCollector<long>(instruments.Tokens);
        using var cost = new MetricCollector<double>(instruments.Cost);

        await gateway.SubmitAsync(TestGateway.Request(), Ct);

        var d = duration.GetMeasurementSnapshot().Should().ContainSingle().Subject;
        d.Value.Should().BePositive();
        d.Tags["gen_ai.operation.name"].Should().Be("chat");
        d.Tags["gen_ai.request.model"].Should().Be("m");
        d.Tags["gen_ai.response.model"].Should().Be("gpt-4o");
        d.Tags["gen_ai.system"].Should().Be("p");
        var t = tokens.GetMeasurementSnapshot();
        t.Should().HaveCount(2);
        t.Single(m => (string)m.Tags["gen_ai.token.type"]! == "input").Value.Should().Be(3);
        t.Single(m => (string)m.Tags["gen_ai.token.type"]! == "output").Value.Should().Be(1);
        cost.RecordObservableInstruments();
        cost.GetMeasurementSnapshot().Single().Value.Should().BeApproximately((3 * 2.5 + 1 * 10) / 1_000_000.0, 1e-12);
        instruments.Duration.Name.Should().Be("gen_ai.client.operation.duration");
        instruments.Duration.Unit.Should().Be("s");
        instruments.Tokens.Name.Should().Be("gen_ai.client.token.usage");
    }

    /// <summary>
    /// The counting instruments (<c>pgw.requests</c>, <c>pgw.cache.hits</c>, <c>pgw.cost</c>) are totals per tag set,
    /// observed when a listener collects (<see cref="InstrumentTotals"/>): three answers, a cache hit and an upstream's
    /// refusal read as one series per outcome with its count, the hit once, the cost as the answers' exact sum — and a
    /// second collection the same totals again (cumulative, as the counters' sums were), with what came since.
    /// </summary>
    [Fact]
    public async Task The_counters_report_each_tag_sets_total_when_collected()
    {
        var provider = new FakeProvider("p");
        var refusing = new FakeProvider("refuses") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.NonRetryableError, "no", 400) };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider).AddProvider(refusing)
            .Configure(o =>
            {
                o.Cache.Enabled = true;
                o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "p", Model = "gpt-4o" }] });
                o.Models.Add(new ModelGroupOptions { Name = "n", Deployments = [new DeploymentOptions { Provider = "refuses", Model = "gpt-4o" }] });
            })
            .StartAsync(Ct);
        var instruments = gateway.Services.GetRequiredService<GatewayInstruments>();
        using var requests = new MetricCollector<long>(instruments.RequestCount);
        using var hits = new MetricCollector<long>(instruments.CacheHitCount);
        using var cost = new MetricCollector<double>(instruments.Cost);

        for (var i = 0; i < 3; i++)
        {
            await gateway.SubmitAsync(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User($"question {i}")] }, Ct);
        }

        (await gateway.SubmitAsync(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("question 0")] }, Ct)).Gateway!.Cached.Should().BeTrue();
        await FluentActions.Awaiting(async () => await gateway.SubmitAsync(TestGateway.Request("n"), Ct)).Should().ThrowAsync<UpstreamRejectedException>();

        static IEnumerable<(string Model, string Outcome, string? Error, long Count)> Read(MetricCollector<long> requests)
        {
            requests.RecordObservableInstruments();
            return requests.GetMeasurementSnapshot(clear: true).Select(m => ((string)m.Tags["gen_ai.request.model"]!, (string)m.Tags["pgw.outcome"]!, m.Tags.TryGetValue("error.type", out var e) ? (string?)e : null, m.Value));
        }

        Read(requests).Should().BeEquivalentTo(new (string, string, string?, long)[]
        {
            ("m", "success", null, 3),
            ("m", "cached", null, 1),
            ("n", "failure", nameof(UpstreamRejectedException), 1),
        });
        hits.RecordObservableInstruments();
        hits.GetMeasurementSnapshot().Should().ContainSingle().Which.Value.Should().Be(1);
        cost.RecordObservableInstruments();
        cost.GetMeasurementSnapshot().Should().ContainSingle().Which.Value.Should().BeApproximately(3 * (3 * 2.5 + 1 * 10) / 1_000_000.0, 1e-15, "three answers' cost, summed in whole nano-dollars");

        await gateway.SubmitAsync(new ChatCompletionRequest { Model = "m", Messages = [ChatCompletionMessage.User("question 3")] }, Ct);
        Read(requests).Should().BeEquivalentTo(new (string, string, string?, long)[]
        {
            ("m", "success", null, 4),
            ("m", "cached", null, 1),
            ("n", "failure", nameof(UpstreamRejectedException), 1),
        });
    }

    /// <summary>Past <see cref="InstrumentTotals.MaxSeries"/> tag sets a counter folds new ones into one overflow series (as the SDK does past its cardinality limit); the sets kept still count.</summary>
    [Fact]
    public void Past_its_bound_a_counter_folds_new_tag_sets_into_one_overflow_series()
    {
        var totals = new InstrumentTotals("gen_ai.system");
        for (var i = 0; i < InstrumentTotals.MaxSeries + 5; i++)
        {
            totals.Attempt("p", "p", AttemptOutcome.Success, $"m/p/d{i}", null);
        }

        totals.Attempt("p", "p", AttemptOutcome.Success, "m/p/d0", null);
        var measured = totals.Attempts().Select(m => (Tags: m.Tags.ToArray(), m.Value)).ToList();
        measured.Should().HaveCount(InstrumentTotals.MaxSeries + 1);
        measured.Single(m => m.Tags.Any(t => t.Key == "otel.metric.overflow")).Value.Should().Be(5);
        measured.Single(m => m.Tags.Contains(new KeyValuePair<string, object?>("pgw.deployment", "m/p/d0"))).Value.Should().Be(2);
        measured.Where(m => m.Tags.Any(t => t.Key == "otel.metric.overflow")).Should().ContainSingle().Which.Tags.Should().HaveCount(1);
    }

    /// <summary>
    /// The conventions' transition plan: by default the instruments keep the convention they were built on
    /// (<c>gen_ai.system</c>, Azure's <c>az.ai.openai</c>); <c>OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental</c>
    /// makes them name the provider as the trace spans do (<c>gen_ai.provider.name</c>, <c>azure.ai.openai</c>) and not
    /// the old way. The spans already did; the metrics said <c>gen_ai.system</c> with the spans' values.
    /// </summary>
    [Fact]
    public async Task The_latest_GenAI_conventions_are_followed_when_asked()
    {
        GatewayInstruments.LatestConventionsAsked(null).Should().BeFalse();
        GatewayInstruments.LatestConventionsAsked("http, gen_ai_latest_experimental").Should().BeTrue();
        GatewayInstruments.LatestConventionsAsked("gen_ai").Should().BeFalse();
        using (var old = new GatewayInstruments())
        using (var latest = new GatewayInstruments(latestConventions: true))
        {
            (old.ProviderValue("azure.ai.openai"), latest.ProviderValue("azure.ai.openai")).Should().Be(("az.ai.openai", "azure.ai.openai"));
            old.ProviderValue("anthropic").Should().Be("anthropic");
        }

        var provider = new FakeProvider("p");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider)
            .ConfigureServices(s => s.AddSingleton(new GatewayInstruments(latestConventions: true)))
            .Configure(o => o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "p", Model = "gpt-4o" }] }))
            .StartAsync(Ct);
        using var duration = new MetricCollector<double>(gateway.Services.GetRequiredService<GatewayInstruments>().Duration);

        await gateway.SubmitAsync(TestGateway.Request(), Ct);

        var tags = duration.GetMeasurementSnapshot().Should().ContainSingle().Subject.Tags;
        tags["gen_ai.provider.name"].Should().Be("p");
        tags.Should().NotContainKey("gen_ai.system", "the latest conventions only, not both");
    }

    /// <summary>
    /// An upstream's refusal of the request (its 400) is measured under that provider, with the error's type; a failure
    /// the gateway gave (here every attempt failed) under <c>pipelinegateway</c>. The refusal was the gateway's before.
    /// </summary>
    [Fact]
    public async Task An_upstreams_refusal_is_measured_under_its_provider_and_the_gateways_failure_under_the_gateway()
    {
        var refusing = new FakeProvider("refuses") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.NonRetryableError, "temperature is too high", 400) };
        var failing = new FakeProvider("fails") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RetryableError, "down", 500) };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(refusing)
            .AddProvider(failing)
            .Configure(o =>
            {
                o.Pipeline.MaxAttempts = 1;
                o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "refuses", Model = "x" }] });
                o.Models.Add(new ModelGroupOptions { Name = "n", Deployments = [new DeploymentOptions { Provider = "fails", Model = "y" }] });
            })
            .StartAsync(Ct);
        using var duration = new MetricCollector<double>(gateway.Services.GetRequiredService<GatewayInstruments>().Duration);

        await FluentActions.Awaiting(async () => await gateway.SubmitAsync(TestGateway.Request("m"), Ct)).Should().ThrowAsync<UpstreamRejectedException>();
        await FluentActions.Awaiting(async () => await gateway.SubmitAsync(TestGateway.Request("n"), Ct)).Should().ThrowAsync<AllProvidersFailedException>();

        duration.GetMeasurementSnapshot().Select(m => ((string)m.Tags["gen_ai.request.model"]!, (string)m.Tags["gen_ai.system"]!, (string)m.Tags["error.type"]!))
            .Should().BeEquivalentTo([("m", "refuses", nameof(UpstreamRejectedException)), ("n", "pipelinegateway", nameof(AllProvidersFailedException))]);
    }

    /// <summary>
    /// <c>pgw.attempts</c> counts every attempt sent upstream under its own provider and deployment, with its outcome and
    /// status: a request that failed over several providers is one failure of the gateway's in <c>pgw.requests</c>, and
    /// here each provider's part in it shows (before, nothing in the instruments said which upstreams had failed).
    /// </summary>
    [Fact]
    public async Task Every_attempt_is_counted_under_its_own_provider_with_its_outcome()
    {
        var failing = new FakeProvider("fails") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RetryableError, "down", 500) };
        var limited = new FakeProvider("limited") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RateLimited, "slow down", 429) };
        var answering = new FakeProvider("answers");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(failing).AddProvider(limited).AddProvider(answering)
            .Configure(o =>
            {
                o.Pipeline.MaxAttempts = 3;
                o.Pipeline.RetryBaseDelay = TimeSpan.FromMilliseconds(1);
                o.Models.Add(new ModelGroupOptions
                {
                    Name = "m",
                    Strategy = "Priority",
                    Deployments = [new DeploymentOptions { Provider = "fails", Model = "x", Priority = 0 }, new DeploymentOptions { Provider = "answers", Model = "y", Priority = 1 }],
                });
                o.Models.Add(new ModelGroupOptions
                {
                    Name = "n",
                    Strategy = "Priority",
                    Deployments = [new DeploymentOptions { Provider = "fails", Model = "x", Priority = 0 }, new DeploymentOptions { Provider = "limited", Model = "z", Priority = 1 }],
                });
            })
            .StartAsync(Ct);
        var instruments = gateway.Services.GetRequiredService<GatewayInstruments>();
        using var attempts = new MetricCollector<long>(instruments.AttemptCount);
        using var requests = new MetricCollector<long>(instruments.RequestCount);

        await gateway.SubmitAsync(TestGateway.Request("m"), Ct);
        await FluentActions.Awaiting(async () => await gateway.SubmitAsync(TestGateway.Request("n"), Ct)).Should().ThrowAsync<AllProvidersFailedException>();

        attempts.RecordObservableInstruments();
        requests.RecordObservableInstruments();
        attempts.GetMeasurementSnapshot().Select(m => ((string)m.Tags["gen_ai.system"]!, (string)m.Tags["pgw.deployment"]!, (string)m.Tags["pgw.outcome"]!, m.Tags.TryGetValue("http.response.status_code", out var s) ? (int?)s : null, m.Value))
            .Should().BeEquivalentTo(new[]
            {
                ("fails", "m/fails/x", "retryable_error", (int?)500, 1L),
                ("answers", "m/answers/y", "success", (int?)null, 1L),
                ("fails", "n/fails/x", "retryable_error", (int?)500, 2L), // and the third attempt: the 429's deployment is cooling down
                ("limited", "n/limited/z", "rate_limited", (int?)429, 1L),
            });
        requests.GetMeasurementSnapshot().Select(m => ((string)m.Tags["gen_ai.system"]!, (string)m.Tags["pgw.outcome"]!))
            .Should().BeEquivalentTo([("answers", "success"), ("pipelinegateway", "failure")], "the request is one, its attempts several");
        instruments.AttemptCount.Name.Should().Be("pgw.attempts");
    }

    /// <summary>Embeddings and moderations requests are measured under their own operation names (the GenAI conventions' <c>embeddings</c>).</summary>
    [Fact]
    public async Task Embeddings_and_moderations_are_measured_under_their_operation_names()
    {
        await using var gateway = await new GatewayBuilder()
            .AddSimulatedProvider("sim", o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("emb", m => m.Deploy("sim", "text-embedding-3-small"))
            .StartAsync(Ct);
        var instruments = gateway.Services.GetRequiredService<GatewayInstruments>();
        using var duration = new MetricCollector<double>(instruments.Duration);

        await gateway.SubmitAsync(PipelineGateway.Providers.Embeddings.Read("""{"model":"emb","input":"hi"}"""u8), Ct);
        await gateway.SubmitAsync(PipelineGateway.Providers.Operations.Read(PipelineGateway.Providers.OperationKind.Moderations, """{"model":"emb","input":"hi"}"""u8), Ct);

        duration.GetMeasurementSnapshot().Select(m => m.Tags["gen_ai.operation.name"]).Should().Equal("embeddings", "moderations");
    }

    /// <summary>
    /// The model an upstream reports labels the instruments (<c>gen_ai.response.model</c>), up to four names per
    /// deployment; past them the deployment's configured model: an upstream reporting another name on every answer made
    /// a series of every instrument per answer.
    /// </summary>
    [Fact]
    public async Task The_response_model_labels_of_a_deployment_are_bounded()
    {
        var calls = 0;
        var provider = new FakeProvider("p") { OnComplete = (r, _) => ValueTask.FromResult(FakeProvider.Answer("reported-" + Interlocked.Increment(ref calls) % 7, "ok")) };
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider)
            .Configure(o => o.Models.Add(new ModelGroupOptions { Name = "m", Deployments = [new DeploymentOptions { Provider = "p", Model = "gpt-4o" }] }))
            .StartAsync(Ct);
        using var duration = new MetricCollector<double>(gateway.Services.GetRequiredService<GatewayInstruments>().Duration);

        for (var i = 0; i < 14; i++)
        {
            await gateway.SubmitAsync(TestGateway.Request(text: "q" + i), Ct);
        }

        var labels = duration.GetMeasurementSnapshot().Select(m => (string)m.Tags["gen_ai.response.model"]!).ToList();
        labels.Distinct().Should().BeEquivalentTo("reported-1", "reported-2", "reported-3", "reported-4", "gpt-4o");
        labels.Take(4).Should().Equal("reported-1", "reported-2", "reported-3", "reported-4");
        labels[7].Should().Be("reported-1", "a name already labelled keeps its label");
    }

    /// <summary>
    /// Model names match whatever their case; the instruments (and the request log) carry the name or alias as configured,
    /// so a caller varying the case makes no label value of its own — without it, every spelling was a series.
    /// </summary>
    [Fact]
    public async Task The_request_model_label_is_the_configured_spelling_whatever_the_callers_case()
    {
        var provider = new FakeProvider("p");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(provider)
            .Configure(o => o.Models.Add(new ModelGroupOptions { Name = "Team-Model", Aliases = ["gpt-4o"], Deployments = [new DeploymentOptions { Provider = "p", Model = "gpt-4o" }] }))
            .StartAsync(Ct);
        using var duration = new MetricCollector<double>(gateway.Services.GetRequiredService<GatewayInstruments>().Duration);

        foreach (var spelling in new[] { "team-model", "TEAM-MODEL", "Team-Model", "GPT-4O", "gpt-4o" })
        {
            await gateway.SubmitAsync(TestGateway.Request(spelling), Ct);
        }

        duration.GetMeasurementSnapshot().Select(m => (string)m.Tags["gen_ai.request.model"]!)
            .Should().Equal("Team-Model", "Team-Model", "Team-Model", "gpt-4o", "gpt-4o");
    }

    private static ModelCatalog Catalog(string model, decimal? input = null)
    {
        var gateway = new GatewayBuilder()
            .AddProvider(new FakeProvider("p"))
            .Configure(o => o.Models.Add(new ModelGroupOptions { Name = "g", Deployments = [new DeploymentOptions { Provider = "p", Model = model, InputPricePerMillion = input }] }))
            .StartAsync().GetAwaiter().GetResult();
        return gateway.Services.GetRequiredService<ModelCatalog>();
    }
}
