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
/// <c>POST /v1/rerank</c> (and Cohere's <c>/v2/rerank</c>) over real HTTP: the ranking as the upstream wrote it, billed per
/// token alike in the header, the log and the metrics, the cache, providers without the API passed over, refusals of bad
/// requests, upstreams whose rankings are not the request's, and a CsCheck property over mutated bodies.
/// </summary>
public sealed class RerankTests : LoggedFleetTests
{
    private const string Body = """{"model":"rr","query":"what does a gateway do","documents":["a gateway routes requests","bananas are yellow",{"text":"the gateway caches answers"}],"top_n":2,"return_documents":true}""";

    internal override Task<SimulatorFleet> StartAsync(string database) => SimulatorFleet.StartLoggedAsync(
        [("sim", "OpenAICompatible", null), ("claude", "Anthropic", null)],
        [("rr", ["sim"]), ("rr-mixed", ["claude", "sim"]), ("rr-claude", ["claude"])],
        "bge-reranker-v2-m3",
        database,
        new Dictionary<string, string?>
        {
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Pricing:bge-reranker-v2-m3:InputPerMillion"] = "0.05",
            ["Gateway:Pricing:bge-reranker-v2-m3:OutputPerMillion"] = "0",
        },
        Ct);

    private async Task<(HttpResponseMessage Response, JsonElement Body)> PostAsync(string body, HttpClient? http = null, string path = "v1/rerank")
    {
        var response = await (http ?? Http).PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        return (response, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
    }

    [Fact]
    public async Task The_ranking_reaches_the_caller_as_the_upstream_wrote_it_billed_per_token_alike_everywhere()
    {
        var (response, through) = await PostAsync(Body);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var (_, direct) = await PostAsync(Body.Replace("\"rr\"", "\"bge-reranker-v2-m3\"", StringComparison.Ordinal), new HttpClient { BaseAddress = Fleet.Sims["sim"].BaseAddress });
        through.GetProperty("results").GetRawText().Should().Be(direct.GetProperty("results").GetRawText());
        through.GetProperty("usage").GetRawText().Should().Be(direct.GetProperty("usage").GetRawText());
        through.GetProperty("model").GetString().Should().Be("bge-reranker-v2-m3");
        var results = through.GetProperty("results").EnumerateArray().ToList();
        results.Select(r => r.GetProperty("index").GetInt32()).Should().Equal([0, 2], "the documents about gateways, best first");
        results[0].GetProperty("relevance_score").GetDouble().Should().BeGreaterThan(results[1].GetProperty("relevance_score").GetDouble());
        results[0].GetProperty("document").GetProperty("text").GetString().Should().Be("a gateway routes requests");

        // Every token is input: $0.05 per million here — in the header, the log and the metrics alike.
        var tokens = through.GetProperty("usage").GetProperty("total_tokens").GetInt32();
        decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture).Should().Be(tokens * 0.05m / 1_000_000m);
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        (row.GetProperty("prompt_tokens").GetInt32(), row.GetProperty("answer").GetString()).Should().Be((tokens, "[2 ranked documents]"));
        row.GetProperty("prompt").GetString().Should().Contain("what does a gateway do").And.Contain("bananas are yellow");
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);

        // Cohere's v2 path is the same API; the same request is a hit there, and a hit is the stored answer.
        var (v2, hit) = await PostAsync(Body, path: "v2/rerank");
        (v2.StatusCode, Header(v2, "x-gateway-cache")).Should().Be((HttpStatusCode.OK, "hit"));
        hit.GetRawText().Should().Be(through.GetRawText());
        (await PostAsync(Body.Replace("\"top_n\":2", "\"top_n\":3", StringComparison.Ordinal))).Body.GetProperty("results").GetArrayLength().Should().Be(3, "another top_n is another request");
    }

    [Fact]
    public async Task A_provider_without_rerank_is_passed_over_unsent()
    {
        var (mixed, _) = await PostAsync(Body.Replace("\"rr\"", "\"rr-mixed\"", StringComparison.Ordinal));
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        var (refused, error) = await PostAsync(Body.Replace("\"rr\"", "\"rr-claude\"", StringComparison.Ordinal));
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("no rerank API");
        Fleet.Sims["claude"].Requests.Should().Be(0);
    }

    [Theory]
    [InlineData("""{"query":"q","documents":["a"]}""", "model")]
    [InlineData("""{"model":"rr","documents":["a"]}""", "query")]
    [InlineData("""{"model":"rr","query":"","documents":["a"]}""", "query")]
    [InlineData("""{"model":"rr","query":"q"}""", "documents")]
    [InlineData("""{"model":"rr","query":"q","documents":[]}""", "documents")]
    [InlineData("""{"model":"rr","query":"q","documents":"a"}""", "documents")]
    [InlineData("""{"model":"rr","query":"q","documents":["a",{"title":"b"}]}""", "documents[1]")]
    [InlineData("""{"model":"rr","query":"q","documents":["a"],"top_n":0}""", "top_n")]
    [InlineData("""{"model":"rr","query":"q","documents":["a"],"return_documents":"yes"}""", "return_documents")]
    [InlineData("""["rr"]""", null)]
    public async Task A_bad_request_is_a_400_naming_its_field_and_reaches_no_upstream(string body, string? param)
    {
        var (response, error) = await PostAsync(body);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = FrontDoorTests.ErrorIn("v1/rerank", error);
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        Fleet.Sims["sim"].Requests.Should().Be(0);
    }

    [Fact]
    public void The_request_reader_refuses_any_mutation_with_a_request_error_and_never_anything_else()
    {
        Fuzz.CheckOperationReader(OperationKind.Rerank, Fuzz.RerankTemplate, Fuzz.Seed + 23);
    }

    [Fact]
    public async Task A_ranking_that_is_not_the_requests_fails_over_and_an_upstream_without_the_route_is_passed_over()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["rerank-bad-index", "rerank-twice", "rerank-no-index", "moderations-no-flag", "embeddings-404"], null, Ct);
        var http = gateway.Http;
        async Task<(HttpStatusCode Status, string Text, string Provider)> Rank(string model)
        {
            using var response = await http.PostAsync("v1/rerank", new StringContent($$"""{"model":"{{model}}","query":"q","documents":["a","b"],"top_n":1}""", Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct), Header(response, "x-gateway-provider"));
        }

        foreach (var (fault, why) in new[] { ("rerank-bad-index", "not one of the 2 documents"), ("rerank-twice", "1 items for 1"), ("rerank-no-index", "no numeric 'relevance_score' and whole 'index'"), ("moderations-no-flag", "no numeric 'relevance_score'") })
        {
            var (status, text, _) = await Rank(fault);
            status.Should().Be(HttpStatusCode.BadGateway, fault);
            text.Should().Contain("not a usable rerank", fault);
            if (fault != "rerank-twice")
            {
                text.Should().Contain(why, fault);
            }

            var (fallback, _, provider) = await Rank(fault + "-then-sim");
            (fallback, provider).Should().Be((HttpStatusCode.OK, "sim"), fault);
        }

        var (chatOnly, refusal, _) = await Rank("embeddings-404");
        chatOnly.Should().Be(HttpStatusCode.BadRequest);
        refusal.Should().Contain("serves no rerank");
        (await Rank("embeddings-404-then-sim")).Status.Should().Be(HttpStatusCode.OK);
    }
}
