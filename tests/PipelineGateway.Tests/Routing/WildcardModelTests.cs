using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using CsCheck;
using PipelineGateway.Server;
using PipelineGateway.Tests.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Routing;

/// <summary>
/// Wildcard model groups (<c>openai/*</c>, <c>*</c>) over HTTP, against a real upstream that knows some models and
/// answers the others 404 <c>model_not_found</c> as OpenAI does: the caller's name picks the upstream model; an unknown
/// one is the caller's 404 with the upstream's words (not a 502), tried on the wildcard's other deployments first; made-up
/// names cannot fill the wildcard's bound nor the metrics' series; keys allow a wildcard by its name.
/// </summary>
public sealed class WildcardModelTests : IAsyncLifetime
{
    private const string Key = "sk-gw-wildcard-test-key";
    private const string LimitedKey = "sk-gw-wildcard-limited";
    private const string GammaKeyVariable = "PGW_TEST_WILDCARD_GAMMA_KEY";
    private const string GammaKey = "sk-ant-wildcard-gamma-key";

    private UpstreamAndGateway _both = null!;

    private WebApplication _app => _both.Gateway;

    private HttpClient _http => _both.Http;

    /// <summary>What the upstream was asked, in order: "provider model".</summary>
    private readonly ConcurrentQueue<string> _asked = new();

    private static readonly Dictionary<string, string[]> Known = new()
    {
        ["alpha"] = ["gpt-4o", "gpt-4o-mini", "o3-mini", "gpt-4.1", "ft:abc:org"],
        ["beta"] = ["llama-3"],
    };

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        Environment.SetEnvironmentVariable(GammaKeyVariable, GammaKey);
        _both = await UpstreamAndGateway.StartAsync(
            upstream =>
            {
                upstream.MapPost("/{provider}/v1/chat/completions", (HttpContext ctx) => AnswerAsync(ctx));
                upstream.MapGet("/{provider}/v1/models", (HttpContext ctx) => ListAsync(ctx));
            },
            upstream => new Dictionary<string, string?>
            {
                ["Gateway:Providers:1:Name"] = "alpha",
                ["Gateway:Providers:1:Type"] = "OpenAICompatible",
                ["Gateway:Providers:1:BaseUrl"] = new Uri(upstream, "alpha/v1").ToString(),
                ["Gateway:Providers:2:Name"] = "beta",
                ["Gateway:Providers:2:Type"] = "OpenAICompatible",
                ["Gateway:Providers:2:BaseUrl"] = new Uri(upstream, "beta/v1").ToString(),
                ["Gateway:Models:1:Name"] = "openai/*",
                ["Gateway:Models:1:MaxModels"] = "3",
                ["Gateway:Models:1:Deployments:0:Provider"] = "alpha",
                ["Gateway:Models:2:Name"] = "*",
                ["Gateway:Models:2:Strategy"] = "Priority",
                ["Gateway:Models:2:Deployments:0:Provider"] = "alpha",
                ["Gateway:Models:2:Deployments:0:Model"] = "*",
                ["Gateway:Models:2:Deployments:1:Provider"] = "beta",
                ["Gateway:Models:3:Name"] = "tuned/*",
                ["Gateway:Models:3:Deployments:0:Provider"] = "alpha",
                ["Gateway:Models:3:Deployments:0:Model"] = "ft:*:org",
                ["Gateway:Pipeline:RetryBaseDelay"] = "00:00:00.001",
                ["Gateway:Pipeline:RetryMaxDelay"] = "00:00:00.002",
                ["Gateway:Providers:3:Name"] = "gamma",
                ["Gateway:Providers:3:Type"] = "Anthropic",
                ["Gateway:Providers:3:BaseUrl"] = new Uri(upstream, "gamma/v1").ToString(),
                ["Gateway:Providers:3:ApiKeyEnvironmentVariable"] = GammaKeyVariable,
                ["Gateway:Models:4:Name"] = "claude/*",
                ["Gateway:Models:4:ListUpstreamModels"] = "true",
                ["Gateway:Models:4:Deployments:0:Provider"] = "gamma",
                ["Gateway:Server:Keys:0:Id"] = "admin",
                ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
                ["Gateway:Server:Keys:0:Admin"] = "true",
                ["Gateway:Server:Keys:1:Id"] = "limited",
                ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(LimitedKey),
                ["Gateway:Server:Keys:1:AllowedModels:0"] = "openai/*",
                ["Gateway:Server:Keys:1:AllowedModels:1"] = "llama-3",
            },
            Ct);
    }

    public ValueTask DisposeAsync() => _both.DisposeAsync();


    /// <summary>How many model lists the upstream was asked for, by provider.</summary>
    private readonly ConcurrentDictionary<string, int> _listed = new();

    /// <summary>
    /// <c>GET /v1/models</c>: OpenAI's shape for alpha and beta (with an id no wildcard may take, and one of 300
    /// characters), Anthropic's for gamma in pages of two (<c>has_more</c>, <c>last_id</c>, <c>after_id</c>).
    /// </summary>
    private async Task ListAsync(HttpContext ctx)
    {
        var provider = (string)ctx.Request.RouteValues["provider"]!;
        _listed.AddOrUpdate(provider, 1, static (_, n) => n + 1);
        if (provider == "gamma" && (ctx.Request.Headers["x-api-key"] != GammaKey || ctx.Request.Headers["anthropic-version"].Count == 0))
        {
            ctx.Response.StatusCode = 401; // Anthropic's list needs the key and the version, as its messages do
            return;
        }

        ctx.Response.ContentType = "application/json";
        if (provider == "gamma")
        {
            string[] claude = ["claude-opus-4-1", GammaKey, "claude-sonnet-4-5", "claude-haiku-4-5", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345"];
            var after = ctx.Request.Query["after_id"].ToString();
            var page = claude.SkipWhile(id => after.Length > 0 && id != after).Skip(after.Length > 0 ? 1 : 0).Take(2).ToArray();
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new
            {
                data = page.Select(id => new { type = "model", id, display_name = id, created_at = "2025-01-01T00:00:00Z" }),
                has_more = page.Length > 0 && page[^1] != claude[^1],
                first_id = page.FirstOrDefault(),
                last_id = page.LastOrDefault(),
            }), ctx.RequestAborted);
            return;
        }

        await ctx.Response.WriteAsync(JsonSerializer.Serialize(new
        {
            @object = "list",
            data = Known[provider].Append("has space").Append(new string('x', 300)).Select(id => new { id, @object = "model", created = 0, owned_by = provider }),
        }), ctx.RequestAborted);
    }

    private async Task AnswerAsync(HttpContext ctx)
    {
        var provider = (string)ctx.Request.RouteValues["provider"]!;
        using var body = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        var model = body.RootElement.GetProperty("model").GetString()!;
        var stream = body.RootElement.TryGetProperty("stream", out var s) && s.ValueKind == JsonValueKind.True;
        _asked.Enqueue($"{provider} {model}");
        if (model.StartsWith("broken-", StringComparison.Ordinal))
        {
            ctx.Response.StatusCode = 500;
            await ctx.Response.WriteAsync("""{"error":{"message":"internal error","type":"server_error"}}""", ctx.RequestAborted);
            return;
        }

        if (provider == "beta" && model == "wrong-path")
        {
            ctx.Response.StatusCode = 404; // as a wrong BaseUrl is answered (FastAPI's "not found" of a path)
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync("""{"detail":"Not Found"}""", ctx.RequestAborted);
            return;
        }

        if (!Known[provider].Contains(model))
        {
            ctx.Response.StatusCode = 404;
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new
            {
                error = new { message = $"The model `{model}` does not exist or you do not have access to it.", type = "invalid_request_error", param = (string?)null, code = "model_not_found" },
            }), ctx.RequestAborted);
            return;
        }

        var usage = new { prompt_tokens = 5, completion_tokens = 2, total_tokens = 7 };
        if (!stream)
        {
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new
            {
                id = "chatcmpl-1",
                @object = "chat.completion",
                created = 1,
                model,
                choices = new[] { new { index = 0, message = new { role = "assistant", content = $"{provider} says hi" }, finish_reason = "stop" } },
                usage,
            }), ctx.RequestAborted);
            return;
        }

        ctx.Response.ContentType = "text/event-stream";
        foreach (var chunk in new object[]
        {
            new { id = "chatcmpl-1", @object = "chat.completion.chunk", created = 1, model, choices = new[] { new { index = 0, delta = new { role = "assistant", content = $"{provider} says hi" }, finish_reason = (string?)null } } },
            new { id = "chatcmpl-1", @object = "chat.completion.chunk", created = 1, model, choices = new[] { new { index = 0, delta = new { }, finish_reason = (string?)"stop" } }, usage },
        })
        {
            await ctx.Response.WriteAsync($"data: {JsonSerializer.Serialize(chunk)}\n\n", ctx.RequestAborted);
        }

        await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted);
    }

    private async Task<(HttpStatusCode Status, JsonElement Json)> Chat(string model, string key = Key)
    {
        var (status, json, _) = await ChatWithHeaders(model, key);
        return (status, json);
    }

    private async Task<(HttpStatusCode Status, JsonElement Json, System.Net.Http.Headers.HttpResponseHeaders Headers)> ChatWithHeaders(string model, string key = Key)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent(JsonSerializer.Serialize(new { model, max_tokens = 8, messages = new[] { new { role = "user", content = "Hello there" } } }), Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new("Bearer", key);
        using var response = await _http.SendAsync(request, Ct);
        return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone(), response.Headers);
    }

    private async Task<JsonElement> Get(string path, string key = Key)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        request.Headers.Authorization = new("Bearer", key);
        using var response = await _http.SendAsync(request, Ct);
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone();
    }

    private string[] Asked() => [.. _asked];

    private static string Content(JsonElement answer) => answer.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;

    [Fact]
    public async Task A_name_a_wildcard_takes_sends_its_rest_upstream_and_is_a_model_of_its_own_once_answered()
    {
        var (status, answer) = await Chat("openai/gpt-4o");
        status.Should().Be(HttpStatusCode.OK);
        Content(answer).Should().Be("alpha says hi");
        (await Chat("OpenAI/gpt-4o")).Status.Should().Be(HttpStatusCode.OK, "the prefix matches whatever its case, as configured names do");
        (await Chat("tuned/abc")).Status.Should().Be(HttpStatusCode.OK);
        (await Chat("gpt-4o-mini")).Status.Should().Be(HttpStatusCode.OK, "a configured name is never a wildcard's");
        Asked().Should().Equal("alpha gpt-4o", "alpha gpt-4o", "alpha ft:abc:org");

        var metrics = await Get("v1/gateway/metrics");
        metrics.GetProperty("models").EnumerateObject().Select(p => p.Name).Should().Contain(["openai/gpt-4o", "tuned/abc", "gpt-4o-mini"]);
        metrics.GetProperty("models").GetProperty("openai/gpt-4o").GetProperty("requests").GetInt64().Should().Be(2, "both spellings are one model");
        metrics.GetProperty("deployments").EnumerateObject().Select(p => p.Name).Should().Contain(["openai/gpt-4o/alpha/gpt-4o", "tuned/abc/alpha/ft:abc:org"]);

        var listed = (await Get("v1/models")).GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).ToList();
        listed.Should().Contain(["gpt-4o-mini", "openai/gpt-4o", "tuned/abc"]).And.NotContain(["openai/*", "*", "tuned/*"]);
        (await Get("v1/models/openai/o3-mini")).GetProperty("id").GetString().Should().Be("openai/o3-mini", "a name a wildcard takes can be retrieved before its first use");
        (await Get("v1/models/openai%2Fo3-mini")).GetProperty("id").GetString().Should().Be("openai/o3-mini", "the SDKs encode the slash");
        (await Get("v1/models/has%20space")).GetProperty("error").GetProperty("code").GetString().Should().Be("model_not_found");
        _app.Services.GetRequiredService<PipelineGateway.Routing.ModelCatalog>().Wildcards.Single(w => w.Name == "openai/*").Count.Should().Be(1, "retrieving makes no group");
    }

    [Fact]
    public async Task A_wildcard_that_lists_upstream_models_shows_its_providers_models_read_once_for_a_while()
    {
        var listed = (await Get("v1/models")).GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).ToList();

        listed.Should().Contain(["claude/claude-opus-4-1", "claude/claude-sonnet-4-5", "claude/claude-haiku-4-5"], "every page of gamma's list");
        listed.Should().NotContain(name => name!.Contains("sk-", StringComparison.Ordinal), "an upstream echoing the gateway's key (or any key) as a model shows it to no one");
        listed.Should().NotContain(name => name!.StartsWith("openai/", StringComparison.Ordinal), "openai/* does not ask for its provider's list");
        listed.Should().OnlyHaveUniqueItems();
        (await Get("v1/models")).GetProperty("data").GetArrayLength().Should().Be(listed.Count);
        _listed.Should().Equal(new Dictionary<string, int> { ["gamma"] = 3 }, "three pages, read once for both callers");

        (await Get("v1/models", LimitedKey)).GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString())
            .Should().NotContain(name => name!.StartsWith("claude/", StringComparison.Ordinal), "a key sees only what it may use");
    }

    [Fact]
    public async Task A_catch_all_listing_upstream_models_maps_ids_through_its_deployments_and_skips_what_it_cannot_take()
    {
        var list = _app.Services.GetRequiredService<PipelineGateway.Routing.UpstreamModelList>();
        var catalog = _app.Services.GetRequiredService<PipelineGateway.Routing.ModelCatalog>();

        var names = await list.NamesAsync(catalog.Wildcards.Single(w => w.Name == "*"), Ct);
        names.Should().BeEquivalentTo([.. Known["alpha"], .. Known["beta"]], "both deployments' lists, ids a wildcard cannot take (white space, 300 characters) skipped");
        (await list.NamesAsync(catalog.Wildcards.Single(w => w.Name == "tuned/*"), Ct)).Should().Equal(["tuned/abc"], "ft:*:org takes ft:abc:org back to its name");
    }

    [Fact]
    public async Task A_model_no_upstream_has_is_the_callers_404_with_the_upstreams_words_and_its_name_is_forgotten()
    {
        var (status, error) = await Chat("openai/gpt-nope");

        status.Should().Be(HttpStatusCode.NotFound, "the caller named a model its upstream does not have: not a 502 an SDK would retry");
        error.GetProperty("error").GetProperty("code").GetString().Should().Be("model_not_found");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("gpt-nope").And.Contain("does not exist");
        (await Chat("openai/gpt-nope")).Status.Should().Be(HttpStatusCode.NotFound);
        Asked().Should().Equal(["alpha gpt-nope", "alpha gpt-nope"], "the deployment stays in rotation: a model it lacks says nothing of the others");
        (await Chat("openai/gpt-4o")).Status.Should().Be(HttpStatusCode.OK);

        var metrics = await Get("v1/gateway/metrics");
        metrics.GetProperty("models").EnumerateObject().Select(p => p.Name).Should().NotContain("openai/gpt-nope", "a name no upstream answered is counted under the wildcard's");
        metrics.GetProperty("models").GetProperty("openai/*").GetProperty("requests").GetInt64().Should().Be(2);
        metrics.GetProperty("deployments").EnumerateObject().Select(p => p.Name).Should().NotContain(d => d.Contains("gpt-nope"));
        metrics.GetProperty("deployments").GetProperty("openai/gpt-4o/alpha/gpt-4o").GetProperty("health_state").GetString().Should().Be("closed");
    }

    [Fact]
    public async Task The_instruments_label_a_name_no_upstream_answered_with_the_wildcards_name_not_its_own()
    {
        var instruments = _app.Services.GetRequiredService<PipelineGateway.Metrics.GatewayInstruments>();
        using var attempts = new MetricCollector<long>(instruments.AttemptCount);
        using var duration = new MetricCollector<double>(instruments.Duration);
        using var health = new MetricCollector<int>(_app.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), PipelineGateway.Metrics.GatewayInstruments.MeterName, PipelineGateway.Metrics.GatewayInstruments.DeploymentHealth);

        for (var i = 0; i < 3; i++)
        {
            (await Chat($"openai/made-up-{i}")).Status.Should().Be(HttpStatusCode.NotFound);
            (await Chat($"openai/broken-{i}")).Status.Should().Be(HttpStatusCode.BadGateway);
        }

        (await Chat("openai/gpt-4o")).Status.Should().Be(HttpStatusCode.OK);
        health.RecordObservableInstruments();
        attempts.RecordObservableInstruments();

        attempts.GetMeasurementSnapshot().Select(m => (string)m.Tags["pgw.deployment"]!).Distinct()
            .Should().BeEquivalentTo("openai/*/alpha/*", "openai/gpt-4o/alpha/gpt-4o");
        duration.GetMeasurementSnapshot().Select(m => (string)m.Tags["gen_ai.request.model"]!).Distinct()
            .Should().BeEquivalentTo("openai/*", "openai/gpt-4o");
        health.GetMeasurementSnapshot().Select(m => (string)m.Tags["pgw.deployment"]!).Where(d => d.StartsWith("openai/", StringComparison.Ordinal))
            .Should().Equal(["openai/gpt-4o/alpha/gpt-4o"], "a circuit is reported for the names an upstream answered");
    }

    [Fact]
    public async Task A_wildcard_over_two_providers_asks_the_next_when_one_lacks_the_model()
    {
        var (status, answer, headers) = await ChatWithHeaders("llama-3");
        status.Should().Be(HttpStatusCode.OK);
        Content(answer).Should().Be("beta says hi");
        (headers.GetValues("x-gateway-provider").Single(), headers.GetValues("x-gateway-attempts").Single()).Should().Be(("beta", "2"));

        var (missing, error) = await Chat("mystery-model");
        missing.Should().Be(HttpStatusCode.NotFound, "no deployment of the catch-all has it");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("mystery-model");
        Asked().Should().Equal("alpha llama-3", "beta llama-3", "alpha mystery-model", "beta mystery-model");
    }

    [Fact]
    public async Task A_404_about_the_path_not_the_model_is_the_gateways_502_and_takes_the_deployment_out_of_rotation()
    {
        var (status, error) = await Chat("wrong-path");

        status.Should().Be(HttpStatusCode.BadGateway, "a 404 that does not speak of the model says the deployment's URL is wrong: not the caller's mistake");
        error.GetProperty("error").GetProperty("code").GetString().Should().Be("all_providers_failed", "alpha had no such model, beta's URL is wrong: not every attempt was a refused deployment");
        Asked().Should().Equal("alpha wrong-path", "beta wrong-path");
        (await Get("v1/gateway/metrics")).GetProperty("deployments").GetProperty("wrong-path/beta/wrong-path").GetProperty("health_state").GetString().Should().Be("rejected");
    }

    [Fact]
    public async Task Made_up_names_cannot_fill_a_wildcards_bound_but_answered_ones_do()
    {
        for (var i = 0; i < 10; i++)
        {
            (await Chat($"openai/made-up-{i}")).Status.Should().Be(HttpStatusCode.NotFound);
        }

        foreach (var model in new[] { "gpt-4o", "gpt-4o-mini", "o3-mini" })
        {
            (await Chat("openai/" + model)).Status.Should().Be(HttpStatusCode.OK, "names no upstream has give their places up");
        }

        var (status, error) = await Chat("openai/gpt-4.1");
        status.Should().Be(HttpStatusCode.NotFound, "three models answered fill the wildcard's MaxModels of 3");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("openai/*").And.Contain("MaxModels");
        Asked().Should().NotContain("alpha gpt-4.1", "a name past the bound never reaches the upstream");
        (await Chat("openai/gpt-4o")).Status.Should().Be(HttpStatusCode.OK, "the models it has keep working");
    }

    [Fact]
    public async Task A_name_no_upstream_answered_gives_its_place_up_to_a_new_one_when_the_bound_is_reached()
    {
        for (var i = 0; i < 3; i++)
        {
            (await Chat($"openai/broken-{i}")).Status.Should().Be(HttpStatusCode.BadGateway, "its upstream fails: not the caller's mistake");
        }

        _app.Services.GetRequiredService<PipelineGateway.Routing.ModelCatalog>().Wildcards.Single(w => w.Name == "openai/*").Count.Should().Be(3, "failing names hold places while asked");
        (await Chat("openai/gpt-4o")).Status.Should().Be(HttpStatusCode.OK, "a name no upstream answered gives its place up");
        (await Chat("openai/gpt-4o-mini")).Status.Should().Be(HttpStatusCode.OK);
        (await Chat("openai/o3-mini")).Status.Should().Be(HttpStatusCode.OK);
        (await Chat("openai/broken-9")).Status.Should().Be(HttpStatusCode.NotFound, "three answered models hold every place");
    }

    [Theory]
    [InlineData("openai/gpt 4o")]
    [InlineData("openai/gpt\u001b[2J")]
    [InlineData("openai/*")]
    [InlineData("openai/..")]
    [InlineData("openai/.")]
    [InlineData("openai/a/../b")]
    [InlineData("../x")]
    public async Task A_name_a_wildcard_cannot_take_is_refused_before_the_upstream(string model)
    {
        var (status, error) = await Chat(model);

        status.Should().Be(HttpStatusCode.NotFound);
        error.GetProperty("error").GetProperty("code").GetString().Should().Be("model_not_found");
        Asked().Should().BeEmpty();
    }

    [Fact]
    public async Task A_name_too_long_for_a_wildcard_is_refused_before_the_upstream()
    {
        // 201 characters where openai/*'s '*' is (208 for the catch-all's): past the 200 a wildcard takes.
        (await Chat("openai/" + new string('x', 201))).Status.Should().Be(HttpStatusCode.NotFound);
        Asked().Should().BeEmpty();
        (await Chat("openai/" + new string('x', 200))).Status.Should().Be(HttpStatusCode.NotFound, "asked, and the upstream has no such model");
        Asked().Should().ContainSingle();
    }

    [Fact]
    public async Task A_key_may_be_allowed_a_wildcard_by_its_name_or_one_model_it_takes()
    {
        (await Chat("openai/gpt-4o", LimitedKey)).Status.Should().Be(HttpStatusCode.OK);
        (await Chat("llama-3", LimitedKey)).Status.Should().Be(HttpStatusCode.OK, "allowed by name, served by the catch-all");
        (await Chat("LLAMA-3", LimitedKey)).Status.Should().Be(HttpStatusCode.NotFound, "allowed whatever its case; no upstream has that spelling");
        var (status, error) = await Chat("gpt-4.1", LimitedKey);
        status.Should().Be(HttpStatusCode.Forbidden, "the catch-all serves it, but the key is not allowed it");
        error.GetProperty("error").GetProperty("type").GetString().Should().Be("permission_error");
        (await Chat("gpt-4o-mini", LimitedKey)).Status.Should().Be(HttpStatusCode.Forbidden);

        (await Chat("openai/o3-mini", LimitedKey)).Status.Should().Be(HttpStatusCode.OK);
        (await Get("v1/models", LimitedKey)).GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString())
            .Should().BeEquivalentTo("openai/gpt-4o", "openai/o3-mini", "llama-3");
    }

    [Fact]
    public async Task A_stream_through_a_wildcard_is_served_and_an_unknown_model_is_a_404_before_it_starts()
    {
        using var ok = await _http.SendAsync(StreamRequest("openai/gpt-4o"), Ct);
        ok.StatusCode.Should().Be(HttpStatusCode.OK);
        var text = await ok.Content.ReadAsStringAsync(Ct);
        text.Should().Contain("alpha says hi").And.EndWith("data: [DONE]\n\n");

        using var missing = await _http.SendAsync(StreamRequest("openai/gpt-nope"), Ct);
        missing.StatusCode.Should().Be(HttpStatusCode.NotFound);
        JsonDocument.Parse(await missing.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("error").GetProperty("code").GetString().Should().Be("model_not_found");
    }

    /// <summary>
    /// CsCheck, fixed seed: any model name — prefixes in any case, slashes, white space, control and non-ASCII characters,
    /// stars, empty to past the bound — is answered 200 or a 4xx, never a 5xx; it reaches exactly the upstream models the
    /// rules say (a configured name none; a wildcard's the rest in its deployments' places, each deployment of the
    /// catch-all in turn when the first lacks it), and a name no wildcard may take reaches none.
    /// </summary>
    [Fact]
    public async Task Any_model_name_reaches_exactly_the_upstream_models_the_wildcard_rules_say_and_is_never_a_5xx()
    {
        string[] pieces = ["openai/", "OPENAI/", "OpenAi/", "tuned/", "TUNED/", "gpt-4o", "gpt-4o-mini", "llama-3", "/", "-", ".", "..", ":", "@", "*", " ", "\t", "\u0000", "\u001b", "\u0085", "é", "模型", "\"", "\\"];
        var piece = Gen.OneOf(
            Gen.Int[0, pieces.Length - 1].Select(i => pieces[i]),
            Gen.Char["abcdefghijklmnopqrstuvwxyz0123456789"].Array[1, 8].Select(static c => new string(c)),
            Gen.Int[190, 210].Select(static n => new string('a', n)));
        var names = piece.Array[0, 5].Select(static parts => string.Concat(parts));

        foreach (var model in FrontDoorFuzzTests.Cases(names, 300 * Fuzz.Scale, Fuzz.Seed))
        {
            _asked.Clear();
            var (status, _) = await Chat(model);
            var expected = Expected(model);
            ((int)status).Should().BeInRange(200, 499, $"the model {JsonSerializer.Serialize(model)}");
            Asked().Should().Equal(expected, $"the model {JsonSerializer.Serialize(model)}");
            if (expected.Length == 0 && !model.Equals("gpt-4o-mini", StringComparison.OrdinalIgnoreCase))
            {
                status.Should().BeOneOf([HttpStatusCode.NotFound, HttpStatusCode.BadRequest], $"the model {JsonSerializer.Serialize(model)} is no model here");
            }
        }

        // What the rules say (docs/routing.md): a configured name first, then the longest prefix, the rest 1-200
        // characters with no white space, control character or star, and no '/'-separated part '.' or '..'.
        static string[] Expected(string model)
        {
            if (model.Equals("gpt-4o-mini", StringComparison.OrdinalIgnoreCase))
            {
                return [];
            }

            static bool Takes(string rest) => rest.Length is > 0 and <= 200 && !rest.Any(c => char.IsControl(c) || char.IsWhiteSpace(c) || c == '*')
                && !rest.Split('/').Any(part => part is "." or "..");
            foreach (var (prefix, upstream) in new (string, Func<string, string[]>)[]
            {
                ("tuned/", rest => ["alpha ft:" + rest + ":org"]),
                ("openai/", rest => ["alpha " + rest]),
                ("", rest => Known["alpha"].Contains(rest) ? ["alpha " + rest] : ["alpha " + rest, "beta " + rest]),
            })
            {
                if (model.StartsWith(prefix, StringComparison.OrdinalIgnoreCase) && model.Length > prefix.Length)
                {
                    var rest = model[prefix.Length..];
                    return Takes(rest) ? upstream(rest) : prefix.Length == 0 ? [] : Takes(model) ? Known["alpha"].Contains(model) ? ["alpha " + model] : ["alpha " + model, "beta " + model] : [];
                }
            }

            return [];
        }
    }

    [Fact]
    public async Task The_messages_route_takes_a_wildcards_names_and_says_an_unknown_model_in_anthropics_shape()
    {
        async Task<(HttpStatusCode, JsonElement)> Messages(string model)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/messages")
            {
                Content = new StringContent(JsonSerializer.Serialize(new { model, max_tokens = 8, messages = new[] { new { role = "user", content = "Hello there" } } }), Encoding.UTF8, "application/json"),
            };
            request.Headers.Add("x-api-key", Key);
            request.Headers.Add("anthropic-version", "2023-06-01");
            using var response = await _http.SendAsync(request, Ct);
            return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
        }

        var (status, answer) = await Messages("openai/gpt-4o");
        status.Should().Be(HttpStatusCode.OK);
        answer.GetProperty("content")[0].GetProperty("text").GetString().Should().Be("alpha says hi");

        var (missing, error) = await Messages("openai/gpt-nope");
        missing.Should().Be(HttpStatusCode.NotFound);
        error.GetProperty("error").GetProperty("type").GetString().Should().Be("not_found_error");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("gpt-nope");
    }

    private static HttpRequestMessage StreamRequest(string model)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent(JsonSerializer.Serialize(new { model, stream = true, messages = new[] { new { role = "user", content = "Hello there" } } }), Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new("Bearer", Key);
        return request;
    }
}
