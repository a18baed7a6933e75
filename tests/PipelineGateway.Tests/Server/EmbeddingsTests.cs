using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using OpenAI;
using OpenAI.Embeddings;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Server;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/embeddings</c> over real HTTP: the official OpenAI .NET SDK against the gateway and against the upstream
/// directly (the simulator's embeddings route), failover and providers without embeddings, the cache key, cost and the
/// request log, refusals of bad requests, and upstreams that answer with something that is not an embeddings list.
/// </summary>
public sealed class EmbeddingsTests : LoggedFleetTests
{
    private const string Model = "text-embedding-3-small";

    internal override Task<SimulatorFleet> StartAsync(string database) => SimulatorFleet.StartLoggedAsync(
        [("sim", "OpenAICompatible", null), ("bad", "OpenAICompatible", "status=503"), ("claude", "Anthropic", null)],
        [("emb", ["sim"]), ("emb-failover", ["bad", "sim"]), ("emb-mixed", ["claude", "sim"]), ("emb-claude", ["claude"])],
        Model,
        database,
        new Dictionary<string, string?>
        {
            ["Gateway:Cache:Enabled"] = "true",
        },
        Ct);

    private EmbeddingClient Client(string model, Uri endpoint) => new(model, new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = endpoint });

    private async Task<(HttpResponseMessage Response, JsonElement Body)> PostAsync(string body)
    {
        var response = await Http.PostAsync("v1/embeddings", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        return (response, JsonDocument.Parse(text).RootElement.Clone());
    }

    [Fact]
    public async Task The_OpenAI_SDK_gets_the_upstreams_embeddings_through_the_gateway_as_it_gets_them_directly()
    {
        var options = new EmbeddingGenerationOptions { Dimensions = 16 };
        var through = (await Client("emb", new Uri(Fleet.Base, "v1")).GenerateEmbeddingsAsync(["alpha", "beta gamma"], options, Ct)).Value;
        var direct = (await Client(Model, new Uri(Fleet.Sims["sim"].BaseAddress, "v1")).GenerateEmbeddingsAsync(["alpha", "beta gamma"], options, Ct)).Value;

        through.Should().HaveCount(2);
        through.Select(e => e.Index).Should().Equal(0, 1);
        through[0].ToFloats().Length.Should().Be(16);
        through.Select(e => e.ToFloats().ToArray()).Should().BeEquivalentTo(direct.Select(e => e.ToFloats().ToArray()), o => o.WithStrictOrdering());
        through[0].ToFloats().ToArray().Should().NotEqual(through[1].ToFloats().ToArray());
        through.Usage.InputTokenCount.Should().Be(direct.Usage.InputTokenCount).And.BePositive();
        through.Model.Should().Be(Model);

        // Token ids, one list and several.
        var tokens = (await Client("emb", new Uri(Fleet.Base, "v1")).GenerateEmbeddingsAsync([new ReadOnlyMemory<int>([1, 2, 3]), new ReadOnlyMemory<int>([4])], options, Ct)).Value;
        tokens.Should().HaveCount(2);
        tokens.Usage.InputTokenCount.Should().Be(4);

        // Floats as JSON: the upstream's list written as it came, byte for byte.
        const string Body = """{"model":"emb","input":"one text","encoding_format":"float","dimensions":5}""";
        var (response, answer) = await PostAsync(Body);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        using var upstream = await new HttpClient().PostAsync(new Uri(Fleet.Sims["sim"].BaseAddress, "v1/embeddings"), new StringContent(Body.Replace("\"emb\"", $"\"{Model}\"", StringComparison.Ordinal), Encoding.UTF8, "application/json"), Ct);
        var expected = JsonDocument.Parse(await upstream.Content.ReadAsStringAsync(Ct)).RootElement;
        answer.GetProperty("object").GetString().Should().Be("list");
        answer.GetProperty("data").GetRawText().Should().Be(expected.GetProperty("data").GetRawText());
        answer.GetProperty("usage").GetProperty("prompt_tokens").GetInt32().Should().Be(expected.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        // Priced per input token (text-embedding-3-small: $0.02 per million), in the header, the metrics and the log.
        var prompt = answer.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture).Should().Be(prompt * 0.02m / 1_000_000m);
        var logs = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        logs.GetProperty("prompt_tokens").GetInt32().Should().Be(prompt);
        logs.GetProperty("completion_tokens").GetInt32().Should().Be(0);
        logs.GetProperty("usage_estimated").GetBoolean().Should().BeFalse();
        logs.GetProperty("cost_usd").GetDecimal().Should().Be(prompt * 0.02m / 1_000_000m);
        logs.GetProperty("prompt").GetString().Should().Contain("one text");
        logs.GetProperty("answer").GetString().Should().Be("[1 embeddings]", "the vectors are not kept as a text");
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);
    }

    [Fact]
    public async Task A_failing_deployment_fails_over_and_a_provider_without_embeddings_is_skipped_unsent()
    {
        var (failedOver, _) = await PostAsync("""{"model":"emb-failover","input":"fail over"}""");
        failedOver.StatusCode.Should().Be(HttpStatusCode.OK);
        Header(failedOver, "x-gateway-provider").Should().Be("sim");
        Header(failedOver, "x-gateway-attempts").Should().Be("2");
        Fleet.Sims["bad"].Requests.Should().Be(1, "the first deployment was tried");

        var (mixed, body) = await PostAsync("""{"model":"emb-mixed","input":"skip claude"}""");
        mixed.StatusCode.Should().Be(HttpStatusCode.OK);
        Header(mixed, "x-gateway-provider").Should().Be("sim");
        body.GetProperty("data").GetArrayLength().Should().Be(1);

        var (refused, error) = await PostAsync("""{"model":"emb-claude","input":"no embeddings here"}""");
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.GetProperty("error").GetProperty("param").GetString().Should().Be("model");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("no embeddings API");
        Fleet.Sims["claude"].Requests.Should().Be(0, "nothing is sent to a provider that cannot embed");
    }

    [Fact]
    public async Task The_cache_key_covers_the_inputs_as_sent_and_the_options_but_not_the_user()
    {
        var sim = Fleet.Sims["sim"];
        async Task<string> Cache(string body)
        {
            var (response, _) = await PostAsync(body);
            response.StatusCode.Should().Be(HttpStatusCode.OK);
            return Header(response, "x-gateway-cache");
        }

        (await Cache("""{"model":"emb","input":["a","b"],"user":"u1"}""")).Should().Be("miss");
        var calls = sim.Requests;
        (await Cache("""{"model":"emb","input":["a","b"],"user":"u2"}""")).Should().Be("hit");
        sim.Requests.Should().Be(calls, "a hit is not sent");
        var (_, stored) = await PostAsync("""{"model":"emb","input":["a","b"],"dimensions":3,"encoding_format":"float"}""");
        var (_, hit) = await PostAsync("""{"model":"emb","input":["a","b"],"dimensions":3,"encoding_format":"float"}""");
        hit.GetRawText().Should().Be(stored.GetRawText(), "a hit is the answer as it was stored");
        (await Cache("""{"model":"emb","input":"a\n\nb"}""")).Should().Be("miss", "one text is not two, whatever the log shows");
        (await Cache("""{"model":"emb","input":["a","b"],"dimensions":8}""")).Should().Be("miss");
        (await Cache("""{"model":"emb","input":["a","b"],"encoding_format":"base64"}""")).Should().Be("miss");

        // A chat request whose one message is an embeddings request's text does not share its entry.
        using var chat = await Http.PostAsync("v1/chat/completions", new StringContent("""{"model":"emb","messages":[{"role":"user","content":"a\n\nb"}]}""", Encoding.UTF8, "application/json"), Ct);
        chat.StatusCode.Should().Be(HttpStatusCode.OK);
        JsonDocument.Parse(await chat.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("choices").GetArrayLength().Should().Be(1);
    }

    [Theory]
    [InlineData("""{"input":"x"}""", "model")]
    [InlineData("""{"model":7,"input":"x"}""", "model")]
    [InlineData("""{"model":"emb"}""", "input")]
    [InlineData("""{"model":"emb","input":null}""", "input")]
    [InlineData("""{"model":"emb","input":""}""", "input")]
    [InlineData("""{"model":"emb","input":[]}""", "input")]
    [InlineData("""{"model":"emb","input":{"text":"x"}}""", "input")]
    [InlineData("""{"model":"emb","input":["a",""]}""", "input[1]")]
    [InlineData("""{"model":"emb","input":["a",[1]]}""", "input[1]")]
    [InlineData("""{"model":"emb","input":[1,-2]}""", "input[1]")]
    [InlineData("""{"model":"emb","input":[1,2.5]}""", "input[1]")]
    [InlineData("""{"model":"emb","input":[[1],[]]}""", "input[1]")]
    [InlineData("""{"model":"emb","input":"x","encoding_format":"hex"}""", "encoding_format")]
    [InlineData("""{"model":"emb","input":"x","dimensions":0}""", "dimensions")]
    [InlineData("""{"model":"emb","input":"x","dimensions":"8"}""", "dimensions")]
    [InlineData("""{"model":"emb","input":"x","user":5}""", "user")]
    [InlineData("""{"model":"emb","input":"x","stream":true}""", "stream")]
    [InlineData("""["emb"]""", null)]
    [InlineData("""{"model":"emb","input":"x"} {}""", null)]
    [InlineData("""{"model":"emb","input":"\ud800"}""", null)]
    [InlineData("", null)]
    public async Task A_bad_request_is_a_400_naming_its_field_and_reaches_no_upstream(string body, string? param)
    {
        var before = Fleet.Sims["sim"].Requests;
        var (response, error) = await PostAsync(body);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = FrontDoorTests.ErrorIn("v1/embeddings", error);
        e.GetProperty("type").GetString().Should().Be("invalid_request_error");
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        Fleet.Sims["sim"].Requests.Should().Be(before);
    }

    [Fact]
    public async Task Too_many_inputs_are_refused_and_the_most_are_answered()
    {
        var most = JsonSerializer.Serialize(new { model = "emb", input = Enumerable.Range(0, Embeddings.MaxInputs).Select(i => $"t{i}").ToArray(), dimensions = 2 });
        var (ok, answer) = await PostAsync(most);
        ok.StatusCode.Should().Be(HttpStatusCode.OK);
        answer.GetProperty("data").GetArrayLength().Should().Be(Embeddings.MaxInputs);

        var (refused, error) = await PostAsync(JsonSerializer.Serialize(new { model = "emb", input = Enumerable.Range(0, Embeddings.MaxInputs + 1).Select(i => $"t{i}").ToArray() }));
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.GetProperty("error").GetProperty("param").GetString().Should().Be("input");
    }

    [Fact]
    public async Task Token_limits_count_the_inputs_and_no_completion()
    {
        // 100 tokens an hour: an embeddings request is counted as its inputs — texts by the tokenizer, token ids one each —
        // with no completion budget on top (a chat request's 256 would refuse the first one outright).
        await using var fleet = await SimulatorFleet.StartAsync(
            [("sim", "OpenAICompatible", null)],
            [("text-embedding-3-small", ["sim"])],
            Model,
            new Dictionary<string, string?>
            {
                ["Gateway:Admission:RateLimits:0:Name"] = "tokens",
                ["Gateway:Admission:RateLimits:0:Unit"] = "Tokens",
                ["Gateway:Admission:RateLimits:0:Algorithm"] = "SlidingWindow",
                ["Gateway:Admission:RateLimits:0:Limit"] = "100",
                ["Gateway:Admission:RateLimits:0:Window"] = "01:00:00",
            },
            Ct);
        using var http = new HttpClient { BaseAddress = fleet.Base };
        async Task<HttpStatusCode> Embed(string input)
        {
            using var response = await http.PostAsync("v1/embeddings", new StringContent($$"""{"model":"{{Model}}","input":{{input}}}""", Encoding.UTF8, "application/json"), Ct);
            return response.StatusCode;
        }

        (await Embed("\"a short text\"")).Should().Be(HttpStatusCode.OK);
        (await Embed(JsonSerializer.Serialize(Enumerable.Range(0, 150).ToArray()))).Should().Be(HttpStatusCode.TooManyRequests, "150 token ids are 150 tokens, over the limit");
        fleet.Sims["sim"].Requests.Should().Be(1);
    }

    /// <summary>
    /// The OpenAI adapter's embeddings call: the caller's body with the deployment's model on <c>{base}/embeddings</c> (Azure:
    /// the deployment's route), and the answer's vectors its own — a small answer's bytes are copied out of the pooled
    /// buffer, so what the pool hands out next cannot change them.
    /// </summary>
    [Fact]
    public async Task The_adapter_posts_the_callers_body_and_keeps_the_vectors_out_of_the_pool()
    {
        const string Answer = """{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}""";
        var stub = new StubHandler(HttpStatusCode.OK, Answer);
        using var provider = new PipelineGateway.Providers.OpenAI.OpenAIChatProvider("openai", new HttpClient(stub), new ProviderOptions { Name = "openai", Type = ProviderTypes.OpenAI, BaseUrl = "https://api.example.test/v1" }, "sk-test", TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var request = Embeddings.Read("""{"model":"group","input":"hi","dimensions":2,"input_type":"query"}"""u8);

        var response = Operations.Accept(await provider.SendAsync(new ProviderRequest(request, "text-embedding-3-small"), Ct), request, "openai");

        stub.LastRequest!.RequestUri!.ToString().Should().Be("https://api.example.test/v1/embeddings");
        var sent = JsonDocument.Parse(stub.LastBody!).RootElement;
        (sent.GetProperty("model").GetString(), sent.GetProperty("input").GetString(), sent.GetProperty("dimensions").GetInt32(), sent.GetProperty("input_type").GetString())
            .Should().Be(("text-embedding-3-small", "hi", 2, "query"), "the caller's members, the deployment's model");
        var rented = Enumerable.Range(0, 64).Select(_ => System.Buffers.ArrayPool<byte>.Shared.Rent(Answer.Length + 1)).ToList();
        rented.ForEach(a => { a.AsSpan().Fill((byte)'x'); System.Buffers.ArrayPool<byte>.Shared.Return(a); });
        Encoding.UTF8.GetString(response.Operation!.List.Span).Should().Be("""[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}]""");
        (response.Usage!.PromptTokens, response.Model).Should().Be((3, "m"));

        var azureStub = new StubHandler(HttpStatusCode.OK, Answer);
        using var azure = new PipelineGateway.Providers.OpenAI.OpenAIChatProvider("azure", new HttpClient(azureStub), new ProviderOptions { Name = "azure", Type = ProviderTypes.AzureOpenAI, BaseUrl = "https://myres.openai.azure.com", AzureApiVersion = "2024-10-21" }, "azure-key", TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        await azure.SendAsync(new ProviderRequest(request, "my-embedding-deployment"), Ct);
        azureStub.LastRequest!.RequestUri!.ToString().Should().Be("https://myres.openai.azure.com/openai/deployments/my-embedding-deployment/embeddings?api-version=2024-10-21");
    }

    [Fact]
    public void The_request_reader_refuses_any_mutation_with_a_request_error_and_never_anything_else()
    {
        Fuzz.CheckOperationReader(OperationKind.Embeddings, Fuzz.EmbeddingsTemplate, Fuzz.Seed + 11);
    }

    /// <summary>
    /// An upstream that answers in its own order, or ignores <c>encoding_format</c> (numbers always, base64 always), is
    /// given to the caller as asked: in input order, each item's <c>index</c> its place, each embedding in the form
    /// asked with the same values — it was passed on as it came (a client asking numbers got strings, and a client
    /// reading <c>data</c> in order got the vectors of other inputs).
    /// </summary>
    [Fact]
    public async Task An_upstreams_order_and_encoding_are_made_the_ones_the_caller_asked()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["embeddings-shuffled", "embeddings-numbers-only", "embeddings-base64-only"], Model, Ct);
        foreach (var fault in new[] { "embeddings-shuffled", "embeddings-numbers-only", "embeddings-base64-only" })
        {
            foreach (var format in new[] { "float", "base64", null })
            {
                var asked = format is null ? string.Empty : $$""","encoding_format":"{{format}}" """;
                using var response = await gateway.Http.PostAsync("v1/embeddings", new StringContent($$"""{"model":"{{fault}}","input":["zero","one","two"]{{asked}}}""", Encoding.UTF8, "application/json"), Ct);
                response.StatusCode.Should().Be(HttpStatusCode.OK, fault);
                var data = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("data").EnumerateArray().ToList();
                data.Should().HaveCount(3);
                for (var i = 0; i < 3; i++)
                {
                    data[i].GetProperty("index").GetInt32().Should().Be(i, $"{fault} {format}: in input order");
                    data[i].GetProperty("object").GetString().Should().Be("embedding", "the item's other members are kept");
                    var embedding = data[i].GetProperty("embedding");
                    float[] vector;
                    if (format == "base64")
                    {
                        embedding.ValueKind.Should().Be(JsonValueKind.String, $"{fault}: base64 was asked");
                        var bytes = embedding.GetBytesFromBase64();
                        vector = [.. Enumerable.Range(0, bytes.Length / 4).Select(k => BitConverter.ToSingle(bytes, k * 4))];
                    }
                    else
                    {
                        embedding.ValueKind.Should().Be(JsonValueKind.Array, $"{fault} {format}: numbers were asked");
                        vector = [.. embedding.EnumerateArray().Select(x => x.GetSingle())];
                    }

                    vector.Should().Equal([i, 0.5f], $"{fault} {format}: input {i}'s vector");
                }
            }
        }
    }

    [Fact]
    public async Task An_upstream_answer_that_is_not_an_embeddings_list_fails_over_and_an_upstream_refusal_keeps_its_status_without_the_key()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        const string KeyVariable = "PGW_TEST_EMBEDDINGS_SCRIPTED_KEY";
        const string UpstreamKey = "sk-embeddings-upstream-secret-0123456789";
        Environment.SetEnvironmentVariable(KeyVariable, UpstreamKey);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["embeddings-short", "embeddings-no-vector", "embeddings-chat", "echo-400", "html-502", "masked-429", "embeddings-404"], Model, Ct, KeyVariable);
        var http = gateway.Http;
        async Task<(HttpStatusCode Status, string Text, string Provider)> Embed(string model)
        {
            using var response = await http.PostAsync("v1/embeddings", new StringContent($$"""{"model":"{{model}}","input":["one","two"]}""", Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct), Header(response, "x-gateway-provider"));
        }

        foreach (var broken in new[] { "embeddings-short", "embeddings-no-vector", "embeddings-chat" })
        {
            var (status, text, _) = await Embed(broken);
            status.Should().Be(HttpStatusCode.BadGateway, broken);
            text.Should().Contain("not a usable embeddings list", broken);

            var (fallback, answer, provider) = await Embed(broken + "-then-sim");
            fallback.Should().Be(HttpStatusCode.OK, broken);
            provider.Should().Be("sim", "a broken answer is the provider's failure: the next deployment answers");
            JsonDocument.Parse(answer).RootElement.GetProperty("data").GetArrayLength().Should().Be(2);
        }

        var (rejected, rejection, _) = await Embed("echo-400");
        rejected.Should().Be(HttpStatusCode.BadRequest, "the upstream refused the request itself: its status, not a 502");
        rejection.Should().Contain("temperature is too high").And.NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);

        var (limited, _, _) = await Embed("masked-429");
        limited.Should().Be(HttpStatusCode.TooManyRequests);

        // A chat-only upstream (404 on its embeddings route): passed over, not taken out of rotation — its chat still answers.
        var (chatOnly, refusal, _) = await Embed("embeddings-404");
        chatOnly.Should().Be(HttpStatusCode.BadRequest, "no deployment of the model serves embeddings");
        refusal.Should().Contain("serves no embeddings");
        var (passedOver, _, by) = await Embed("embeddings-404-then-sim");
        (passedOver, by).Should().Be((HttpStatusCode.OK, "sim"));
        using (var chat = await http.PostAsync("v1/chat/completions", new StringContent("""{"model":"embeddings-404","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), Ct))
        {
            chat.StatusCode.Should().Be(HttpStatusCode.OK, "a caller asking for embeddings does not cool the deployment down for chat");
        }

        var (html, page, _) = await Embed("html-502");
        ((int)html).Should().BeGreaterThanOrEqualTo(500);
        page.Should().NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);
    }
}
