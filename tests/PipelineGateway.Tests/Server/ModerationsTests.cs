using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using OpenAI;
using OpenAI.Moderations;
using PipelineGateway.Providers;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/moderations</c> over real HTTP: the official OpenAI .NET SDK through the gateway, the results as the
/// upstream wrote them, the default model, text-and-image input, providers without the API, the cache, refusals of bad
/// requests, an upstream answer that is not a moderation, and a CsCheck property over mutated bodies.
/// </summary>
public sealed class ModerationsTests : IAsyncLifetime
{
    private SimulatorFleet _fleet = null!;
    private HttpClient _http = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _fleet = await SimulatorFleet.StartAsync(
            [("sim", "OpenAICompatible", null), ("claude", "Anthropic", null)],
            [(Moderations.DefaultModel, ["sim"]), ("mod-mixed", ["claude", "sim"]), ("mod-claude", ["claude"])],
            Moderations.DefaultModel,
            new Dictionary<string, string?> { ["Gateway:Cache:Enabled"] = "true" },
            Ct);
        _http = new HttpClient { BaseAddress = _fleet.Base };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _fleet.DisposeAsync();
    }

    private async Task<(HttpResponseMessage Response, JsonElement Body)> PostAsync(string body, HttpClient? http = null)
    {
        var response = await (http ?? _http).PostAsync("v1/moderations", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        return (response, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
    }

    private static string Header(HttpResponseMessage response, string name) => response.Headers.TryGetValues(name, out var values) ? values.Single() : string.Empty;

    [Fact]
    public async Task The_OpenAI_SDK_gets_the_upstreams_results_through_the_gateway()
    {
        var client = new ModerationClient(Moderations.DefaultModel, new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(_fleet.Base, "v1") });
        var results = (await client.ClassifyTextAsync(["I will kill the process", "a nice day"], Ct)).Value;

        results.Should().HaveCount(2);
        results[0].Flagged.Should().BeTrue();
        results[0].Violence.Flagged.Should().BeTrue();
        results[0].Violence.Score.Should().BeGreaterThan(0.5f);
        results[1].Flagged.Should().BeFalse();
        results.Model.Should().Be(Moderations.DefaultModel);
        results.Id.Should().StartWith("modr-");

        // The results as the upstream wrote them, byte for byte; the model left out is OpenAI's default group; free.
        const string Body = """{"input":["hate it","fine"]}""";
        var (response, through) = await PostAsync(Body);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        Header(response, "x-gateway-cost-usd").Should().Be("0");
        using var direct = await new HttpClient().PostAsync(new Uri(_fleet.Sims["sim"].BaseAddress, "v1/moderations"), new StringContent(Body, Encoding.UTF8, "application/json"), Ct);
        var expected = JsonDocument.Parse(await direct.Content.ReadAsStringAsync(Ct)).RootElement;
        through.GetProperty("results").GetRawText().Should().Be(expected.GetProperty("results").GetRawText());
        through.GetProperty("model").GetString().Should().Be(Moderations.DefaultModel);

        // Text and an image as one input: one result, judged on both.
        var (_, parts) = await PostAsync("""{"model":"omni-moderation-latest","input":[{"type":"text","text":"gore"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}""");
        var result = parts.GetProperty("results").EnumerateArray().Single();
        result.GetProperty("categories").GetProperty("violence/graphic").GetBoolean().Should().BeTrue();
        result.GetProperty("category_applied_input_types").GetProperty("violence").EnumerateArray().Select(t => t.GetString()).Should().Equal("text", "image");

        // An image part carrying a "text" member of its own (a number): judged on the text parts' text, not a 500 from
        // the simulator (the front door's fuzz test found it, seed 303).
        var (odd, oddParts) = await PostAsync("""{"input":[{"type":"text","text":"gore"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"},"text":-5}]}""");
        odd.StatusCode.Should().Be(HttpStatusCode.OK, oddParts.GetRawText());
        oddParts.GetProperty("results")[0].GetProperty("categories").GetProperty("violence/graphic").GetBoolean().Should().BeTrue();
    }

    [Fact]
    public async Task A_provider_without_moderations_is_passed_over_and_a_hit_is_the_stored_answer()
    {
        var (mixed, _) = await PostAsync("""{"model":"mod-mixed","input":"skip claude"}""");
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));

        var (refused, error) = await PostAsync("""{"model":"mod-claude","input":"x"}""");
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("no moderations API");
        _fleet.Sims["claude"].Requests.Should().Be(0);

        var (first, stored) = await PostAsync("""{"input":["cache me"]}""");
        var calls = _fleet.Sims["sim"].Requests;
        var (again, hit) = await PostAsync("""{"input":["cache me"]}""");
        (Header(first, "x-gateway-cache"), Header(again, "x-gateway-cache")).Should().Be(("miss", "hit"));
        _fleet.Sims["sim"].Requests.Should().Be(calls);
        hit.GetRawText().Should().Be(stored.GetRawText());
        (await PostAsync("""{"input":"cache me"}""")).Response.Headers.GetValues("x-gateway-cache").Single().Should().Be("miss", "a string and a list of one are different requests");
    }

    [Theory]
    [InlineData("""{"model":"omni-moderation-latest"}""", "input")]
    [InlineData("""{"input":""}""", "input")]
    [InlineData("""{"input":[]}""", "input")]
    [InlineData("""{"input":7}""", "input")]
    [InlineData("""{"input":["a",""]}""", "input[1]")]
    [InlineData("""{"input":["a",{"type":"text","text":"b"}]}""", "input[1]")]
    [InlineData("""{"input":[{"type":"text"}]}""", "input[0]")]
    [InlineData("""{"input":[{"type":"image_url","image_url":{}}]}""", "input[0]")]
    [InlineData("""{"input":[{"type":"audio","data":"x"}]}""", "input[0]")]
    [InlineData("""{"input":[{"type":"text","text":""}]}""", "input[0].text")]
    [InlineData("""{"model":5,"input":"x"}""", "model")]
    [InlineData("""["x"]""", null)]
    public async Task A_bad_request_is_a_400_naming_its_field_and_reaches_no_upstream(string body, string? param)
    {
        var (response, error) = await PostAsync(body);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = FrontDoorTests.ErrorIn("v1/moderations", error);
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        _fleet.Sims["sim"].Requests.Should().Be(0);
    }

    [Fact]
    public void The_request_reader_refuses_any_mutation_with_a_request_error_and_never_anything_else()
    {
        Fuzz.CheckOperationReader(OperationKind.Moderations, Fuzz.ModerationsTemplate, Fuzz.Seed + 13);
    }

    [Fact]
    public async Task An_upstream_answer_that_is_not_a_moderation_fails_over_and_an_upstream_without_the_route_is_passed_over()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        await using var gateway = await ScriptedGateway.StartAsync(_fleet.Sims["sim"].BaseAddress, scripted, ["moderations-no-flag", "embeddings-404", "moderations-no-id"], null, Ct);
        var http = gateway.Http;

        var (broken, _) = await PostAsync("""{"model":"moderations-no-flag-then-sim","input":"a"}""", http);
        (broken.StatusCode, Header(broken, "x-gateway-provider"), Header(broken, "x-gateway-attempts")).Should().Be((HttpStatusCode.OK, "sim", "2"), "a result without 'flagged' is the provider's failure");

        // A chat-only upstream (404 on the moderations route): passed over, not cooled down.
        var (passedOver, _) = await PostAsync("""{"model":"embeddings-404-then-sim","input":"x"}""", http);
        (passedOver.StatusCode, Header(passedOver, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));

        // An upstream's answer without an id gets one in the API's form (the gateway's request id), not a chat completion's.
        var (unnamed, answer) = await PostAsync("""{"model":"moderations-no-id-then-sim","input":"a"}""", http);
        (unnamed.StatusCode, Header(unnamed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "moderations-no-id"));
        answer.GetProperty("id").GetString().Should().StartWith("modr-req_");
    }
}
