using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using OpenAI;
using OpenAI.Images;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/images/generations</c> over real HTTP: the official OpenAI .NET SDK through the gateway (real PNGs of the
/// size asked), the answer as the upstream wrote it, per-token and per-image prices billed alike in the header, the log
/// and the metrics, providers without the API passed over, no cache by default, refusals of bad requests, a hostile
/// upstream, Azure's route, and a CsCheck property over mutated bodies.
/// </summary>
public sealed class ImagesTests : LoggedFleetTests
{

    internal override Task<SimulatorFleet> StartAsync(string database) => SimulatorFleet.StartLoggedAsync(
        [("sim", "OpenAICompatible", null), ("claude", "Anthropic", null)],
        [("img", ["sim"]), ("img-mixed", ["claude", "sim"]), ("img-claude", ["claude"])],
        "gpt-image-1",
        database,
        new Dictionary<string, string?>
        {
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Models:3:Name"] = "dall-e-3",
            ["Gateway:Models:3:Deployments:0:Provider"] = "sim",
            ["Gateway:Models:3:Deployments:0:Model"] = "dall-e-3",
        },
        Ct);

    private async Task<(HttpResponseMessage Response, JsonElement Body)> PostAsync(string body, HttpClient? http = null, string path = "v1/images/generations")
    {
        var response = await (http ?? Http).PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        return (response, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
    }

    private static decimal Cost(HttpResponseMessage response) => decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>A PNG's width and height, read from its header (the signature, then IHDR).</summary>
    private static (int Width, int Height) PngSize(ReadOnlySpan<byte> png)
    {
        png[..8].ToArray().Should().Equal(0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A);
        Encoding.ASCII.GetString(png[12..16]).Should().Be("IHDR");
        return (System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png[16..]), System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png[20..]));
    }

    [Fact]
    public async Task The_OpenAI_SDK_gets_the_upstreams_images_through_the_gateway_billed_by_the_token_alike_everywhere()
    {
        var client = new ImageClient("img", new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(Fleet.Base, "v1") });
        var images = (await client.GenerateImagesAsync("a lighthouse at dusk", 2, new ImageGenerationOptions { Size = new GeneratedImageSize(48, 32) }, Ct)).Value;

        images.Should().HaveCount(2);
        images.Select(i => PngSize(i.ImageBytes.ToArray())).Should().Equal((48, 32), (48, 32));
        images[0].ImageBytes.ToArray().Should().NotEqual(images[1].ImageBytes.ToArray(), "each image its own");

        // The answer as the upstream wrote it: data byte for byte, its usage and other members kept.
        const string Body = """{"model":"img","prompt":"a red fox","size":"16x16","n":1}""";
        var (response, through) = await PostAsync(Body);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        using var direct = await new HttpClient().PostAsync(new Uri(Fleet.Sims["sim"].BaseAddress, "v1/images/generations"), new StringContent(Body.Replace("\"img\"", "\"gpt-image-1\"", StringComparison.Ordinal), Encoding.UTF8, "application/json"), Ct);
        var expected = JsonDocument.Parse(await direct.Content.ReadAsStringAsync(Ct)).RootElement;
        through.GetProperty("data").GetRawText().Should().Be(expected.GetProperty("data").GetRawText());
        through.GetProperty("usage").GetRawText().Should().Be(expected.GetProperty("usage").GetRawText());
        (through.GetProperty("size").GetString(), through.GetProperty("output_format").GetString()).Should().Be(("16x16", "png"));
        through.GetProperty("created").GetInt64().Should().BePositive();

        // gpt-image-1 by the token: $5 per million in, $40 out — in the header, the log and the metrics alike.
        var usage = through.GetProperty("usage");
        var (input, output) = (usage.GetProperty("input_tokens").GetInt32(), usage.GetProperty("output_tokens").GetInt32());
        Cost(response).Should().Be(((input * 5m) + (output * 40m)) / 1_000_000m).And.BePositive();
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        (row.GetProperty("prompt_tokens").GetInt32(), row.GetProperty("completion_tokens").GetInt32()).Should().Be((input, output));
        row.GetProperty("cost_usd").GetDecimal().Should().Be(Cost(response));
        row.GetProperty("answer").GetString().Should().Be("[1 images]", "the image is not kept as a text");
        row.GetProperty("prompt").GetString().Should().Contain("a red fox");
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);
    }

    /// <summary>
    /// A streamed generation (<c>stream: true</c>, gpt-image models) is passed on as OpenAI streams it — its partial images,
    /// then <c>image_generation.completed</c> with the image and its usage, each event as the upstream wrote it — and
    /// billed as a whole answer of one image is: its tokens, in the request log and the metrics (the cost is not in the
    /// headers, known only at the end). A DALL·E model's refusal to stream is the caller's 400. It was refused before.
    /// </summary>
    [Fact]
    public async Task A_streamed_generation_passes_its_partial_images_and_the_image_on_and_is_billed_by_its_usage()
    {
        using var response = await Http.PostAsync("v1/images/generations", new StringContent("""{"model":"img","prompt":"a red fox","size":"16x16","stream":true,"partial_images":2}""", Encoding.UTF8, "application/json"), Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        response.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        response.Headers.Contains("x-gateway-cost-usd").Should().BeFalse("a stream's cost is known at its end");
        var text = await response.Content.ReadAsStringAsync(Ct);

        var events = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.Clone()).ToList();
        events.Select(e => e.GetProperty("type").GetString()).Should().Equal("image_generation.partial_image", "image_generation.partial_image", "image_generation.completed");
        events.Take(2).Select(e => e.GetProperty("partial_image_index").GetInt32()).Should().Equal(0, 1);
        PngSize(Convert.FromBase64String(events[2].GetProperty("b64_json").GetString()!)).Should().Be((16, 16));
        var usage = events[2].GetProperty("usage");
        var (input, output) = (usage.GetProperty("input_tokens").GetInt32(), usage.GetProperty("output_tokens").GetInt32());
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        (row.GetProperty("prompt_tokens").GetInt32(), row.GetProperty("completion_tokens").GetInt32()).Should().Be((input, output));
        row.GetProperty("cost_usd").GetDecimal().Should().Be(((input * 5m) + (output * 40m)) / 1_000_000m).And.BePositive();
        usage.GetProperty("cost").GetDecimal().Should().Be(row.GetProperty("cost_usd").GetDecimal(), "the completed event says what the request cost (usage.cost, as a chat stream's last chunk)");
        events.Take(2).Should().AllSatisfy(static e => e.TryGetProperty("usage", out _).Should().BeFalse());

        // No partial images: the completed event is the stream's one event — it says the cost all the same (it said 0).
        using var alone = await Http.PostAsync("v1/images/generations", new StringContent("""{"model":"img","prompt":"a blue fox","size":"16x16","stream":true,"partial_images":0}""", Encoding.UTF8, "application/json"), Ct);
        var only = (await alone.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.Clone()).Should().ContainSingle().Subject;
        only.GetProperty("type").GetString().Should().Be("image_generation.completed");
        var aloneRow = await Fleet.LogRowAsync(Header(alone, "x-request-id"), Ct);
        only.GetProperty("usage").GetProperty("cost").GetDecimal().Should().Be(aloneRow.GetProperty("cost_usd").GetDecimal()).And.BePositive();
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);

        var (refused, error) = await PostAsync("""{"model":"dall-e-3","prompt":"a red fox","stream":true}""");
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.GetProperty("error").GetProperty("param").GetString().Should().Be("stream");
    }

    /// <summary>
    /// CsCheck, fixed seed: the completed event's usage gains <c>cost</c> and nothing else changes — any members, any
    /// strings (escapes, non-ASCII), a <c>cost</c> the upstream wrote replaced, one line; an event without a usage
    /// object, or JSON nested past what the reader takes, goes out as it came.
    /// </summary>
    [Fact]
    public void The_completed_events_usage_gains_the_cost_and_nothing_else_changes()
    {
        var text = Gen.String[Gen.Char.AlphaNumeric, 0, 12].Select(Gen.String[0, 6], static (a, b) => a + b);
        var members = Gen.Dictionary(Gen.String[Gen.Char.AlphaNumeric, 1, 8], text)[0, 5];
        Gen.Select(members, members, Gen.Int[0, 2], Gen.Long[0, 10_000_000]).Sample((others, counted, shape, micros) =>
        {
            var cost = micros / 1_000_000m;
            var usage = new JsonObject();
            foreach (var (k, v) in counted)
            {
                usage["u" + k] = v;
            }

            if (shape == 1)
            {
                usage["cost"] = 99;
            }

            var root = new JsonObject { ["type"] = "image_generation.completed", ["b64_json"] = "iVBOR+/=" };
            foreach (var (k, v) in others)
            {
                root["m" + k] = v;
            }

            if (shape != 2)
            {
                root["usage"] = usage;
            }

            var json = Encoding.UTF8.GetBytes(root.ToJsonString());
            var written = OperationsEndpoint.UsageWithCost(json, cost);
            written.Should().NotContain((byte)'\n');
            var back = JsonNode.Parse(written)!.AsObject();
            if (shape == 2)
            {
                written.Should().Equal(json, "no usage: as it came");
                return;
            }

            back["usage"]!["cost"]!.GetValue<decimal>().Should().Be(cost);
            back["usage"]!.AsObject().Where(static p => p.Key != "cost").Select(static p => (p.Key, p.Value!.GetValue<string>())).Should().BeEquivalentTo(usage.Where(static p => p.Key != "cost").Select(static p => (p.Key, p.Value!.GetValue<string>())));
            back.Where(static p => p.Key != "usage").Select(static p => (p.Key, p.Value!.GetValue<string>())).Should().Equal(root.Where(static p => p.Key != "usage").Select(static p => (p.Key, p.Value!.GetValue<string>())));
        }, seed: "0N0XIzNsQ0O2");

        var deep = Encoding.UTF8.GetBytes("{\"usage\":{\"a\":" + new string('[', 100) + new string(']', 100) + "}}");
        OperationsEndpoint.UsageWithCost(deep, 1m).Should().Equal(deep, "nested past the reader's depth: as it came");
    }

    /// <summary>The in-process simulated provider (the embedded default config's) streams a generation and an edit the same way: partial images, then the image.</summary>
    [Fact]
    public async Task The_simulated_provider_streams_a_generation_and_an_edit_as_OpenAI_does()
    {
        await using var app = GatewayServer.Build(TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Models:1:Name"] = "gpt-image-1",
            ["Gateway:Models:1:Deployments:0:Provider"] = "sim",
        }), "http://127.0.0.1:0", _ => { });
        using var http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(app, Ct) };

        using var response = await http.PostAsync("v1/images/generations", new StringContent("""{"model":"gpt-image-1","prompt":"a red fox","size":"8x8","stream":true,"partial_images":1}""", Encoding.UTF8, "application/json"), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var events = (await response.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.Clone()).ToList();
        events.Select(e => e.GetProperty("type").GetString()).Should().Equal("image_generation.partial_image", "image_generation.completed");
        PngSize(Convert.FromBase64String(events[^1].GetProperty("b64_json").GetString()!)).Should().Be((8, 8));
        events[^1].GetProperty("usage").GetProperty("output_tokens").GetInt32().Should().BePositive();

        // An edit, its form's stream=true: image_edit.* events.
        using var form = new MultipartFormDataContent
        {
            { new StringContent("gpt-image-1"), "model" },
            { new StringContent("add a hat"), "prompt" },
            { new StringContent("8x8"), "size" },
            { new StringContent("true"), "stream" },
            { new ByteArrayContent(PipelineGateway.Providers.Simulated.SimulatedImages.Png(8, 8, 7)), "image", "fox.png" },
        };
        using var edited = await http.PostAsync("v1/images/edits", form, Ct);
        edited.StatusCode.Should().Be(HttpStatusCode.OK);
        (await edited.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.GetProperty("type").GetString())
            .Should().Equal("image_edit.completed");
        await app.StopAsync(Ct);
    }

    [Fact]
    public async Task DALL_E_is_billed_by_the_image_and_answers_addresses_unless_asked_for_the_bytes()
    {
        var (response, answer) = await PostAsync("""{"model":"dall-e-3","prompt":"a lighthouse"}""");
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var image = answer.GetProperty("data").EnumerateArray().Single();
        image.GetProperty("url").GetString().Should().StartWith("https://");
        image.GetProperty("revised_prompt").GetString().Should().Contain("a lighthouse");
        answer.TryGetProperty("usage", out _).Should().BeFalse("DALL·E reports no usage");
        Cost(response).Should().Be(0.04m, "one image at DALL·E 3's standard price");

        var (three, bytes) = await PostAsync("""{"model":"dall-e-3","prompt":"three","n":3,"response_format":"b64_json","size":"8x8"}""");
        three.StatusCode.Should().Be(HttpStatusCode.OK);
        bytes.GetProperty("data").EnumerateArray().Select(i => PngSize(i.GetProperty("b64_json").GetBytesFromBase64())).Should().Equal((8, 8), (8, 8), (8, 8));
        Cost(three).Should().Be(0.12m);

        // Size and quality weigh as OpenAI prices DALL·E: $0.08 an HD square or a wide standard one, $0.12 an HD wide one.
        foreach (var (options, price) in new[] { ("\"quality\":\"hd\"", 0.08m), ("\"size\":\"1792x1024\"", 0.08m), ("\"quality\":\"hd\",\"size\":\"1024x1792\"", 0.12m) })
        {
            var (priced, _) = await PostAsync($$"""{"model":"dall-e-3","prompt":"weighed",{{options}}}""");
            priced.StatusCode.Should().Be(HttpStatusCode.OK, options);
            Cost(priced).Should().Be(price, options);
        }

        Images.Weight(JsonDocument.Parse("""{"size":"256x256"}""").RootElement).Should().Be(0.8m, "DALL·E 2's $0.016 of its $0.02");
        Images.Weight(JsonDocument.Parse("""{"size":"512x512"}""").RootElement).Should().Be(0.9m);
    }

    [Fact]
    public async Task A_provider_without_images_is_passed_over_unsent_and_images_are_not_cached_by_default()
    {
        var (mixed, _) = await PostAsync("""{"model":"img-mixed","prompt":"skip claude","size":"4x4"}""");
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));

        var (refused, error) = await PostAsync("""{"model":"img-claude","prompt":"x"}""");
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.GetProperty("error").GetProperty("param").GetString().Should().Be("model");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain("no image generation API");
        Fleet.Sims["claude"].Requests.Should().Be(0, "nothing is sent to a provider without the API");

        // An image is drawn anew each time: the same request twice goes upstream twice (unless CacheNonDeterministic).
        var calls = Fleet.Sims["sim"].Requests;
        var (first, _) = await PostAsync("""{"model":"img","prompt":"same","size":"4x4"}""");
        var (second, _) = await PostAsync("""{"model":"img","prompt":"same","size":"4x4"}""");
        (first.StatusCode, second.StatusCode).Should().Be((HttpStatusCode.OK, HttpStatusCode.OK));
        Header(second, "x-gateway-cache").Should().NotBe("hit");
        Fleet.Sims["sim"].Requests.Should().Be(calls + 2);
    }

    [Fact]
    public async Task Azures_image_route_serves_the_deployment_in_its_path()
    {
        var (response, answer) = await PostAsync("""{"prompt":"azure","size":"4x4"}""", path: "openai/deployments/img/images/generations?api-version=2024-10-21");
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        answer.GetProperty("data").GetArrayLength().Should().Be(1);
        Header(response, "x-gateway-provider").Should().Be("sim");
    }

    /// <summary>
    /// <c>POST /v1/images/edits</c>: the .NET SDK's edit (an image and a mask) through the gateway; a raw form with
    /// several images reaching the upstream; the edit billed as a generation; providers without the API passed over;
    /// bad forms refused before any upstream call.
    /// </summary>
    [Fact]
    public async Task An_image_edit_reaches_the_upstream_as_a_form_and_is_answered_and_billed_as_a_generation()
    {
        var png = PipelineGateway.Providers.Simulated.SimulatedImages.Png(8, 8, 42);
        var client = new ImageClient("img", new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(Fleet.Base, "v1") });
        var edited = (await client.GenerateImageEditsAsync(new MemoryStream(png), "fox.png", "make it blue", new MemoryStream(png), "mask.png", 2, new ImageEditOptions { Size = new GeneratedImageSize(24, 16) }, Ct)).Value;
        edited.Select(i => PngSize(i.ImageBytes.ToArray())).Should().Equal((24, 16), (24, 16));

        MultipartFormDataContent Form(string model, int images, string? prompt = "make it blue", string? extraFile = null)
        {
            var form = new MultipartFormDataContent { { new StringContent(model), "model" }, { new StringContent("16x16"), "size" } };
            if (prompt is not null)
            {
                form.Add(new StringContent(prompt), "prompt");
            }

            for (var i = 0; i < images; i++)
            {
                form.Add(new ByteArrayContent(png), "image[]", $"i{i}.png");
            }

            if (extraFile is not null)
            {
                form.Add(new ByteArrayContent(png), extraFile, "x.png");
            }

            return form;
        }

        using var response = await Http.PostAsync("v1/images/edits", Form("img", 3), Ct);
        var answer = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement;
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var usage = answer.GetProperty("usage");
        Cost(response).Should().Be(((usage.GetProperty("input_tokens").GetInt32() * 5m) + (usage.GetProperty("output_tokens").GetInt32() * 40m)) / 1_000_000m).And.BePositive();
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        (row.GetProperty("answer").GetString(), row.GetProperty("cost_usd").GetDecimal()).Should().Be(("[1 images]", Cost(response)));
        row.GetProperty("prompt").GetString().Should().Contain("make it blue").And.Contain("3 image(s) to edit");

        using var mixed = await Http.PostAsync("v1/images/edits", Form("img-mixed", 1), Ct);
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        using var claude = await Http.PostAsync("v1/images/edits", Form("img-claude", 1), Ct);
        (await claude.Content.ReadAsStringAsync(Ct)).Should().Contain("no image edit API");
        Fleet.Sims["claude"].Requests.Should().Be(0);

        var before = Fleet.Sims["sim"].Requests;
        foreach (var (form, param) in new[] { (Form("img", 0), "image"), (Form("img", 1, prompt: null), "prompt"), (Form("img", 17), "image"), (Form("img", 1, extraFile: "file"), (string?)null) })
        {
            using var refused = await Http.PostAsync("v1/images/edits", form, Ct);
            refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
            var e = FrontDoorTests.ErrorIn("v1/images/edits", JsonDocument.Parse(await refused.Content.ReadAsStringAsync(Ct)).RootElement);
            (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        }

        Fleet.Sims["sim"].Requests.Should().Be(before, "nothing refused is sent");

        // Streamed (stream=true): the edit's events as OpenAI streams them, billed by the completed event's tokens. It was refused.
        var streamed = Form("img", 1);
        streamed.Add(new StringContent("true"), "stream");
        streamed.Add(new StringContent("1"), "partial_images");
        using var stream = await Http.PostAsync("v1/images/edits", streamed, Ct);
        stream.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        var events = (await stream.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.Clone()).ToList();
        events.Select(e => e.GetProperty("type").GetString()).Should().Equal("image_edit.partial_image", "image_edit.completed");
        PngSize(Convert.FromBase64String(events[^1].GetProperty("b64_json").GetString()!)).Should().Be((16, 16));
        var streamedUsage = events[^1].GetProperty("usage");
        var streamedRow = await Fleet.LogRowAsync(Header(stream, "x-request-id"), Ct);
        streamedRow.GetProperty("cost_usd").GetDecimal().Should().Be(((streamedUsage.GetProperty("input_tokens").GetInt32() * 5m) + (streamedUsage.GetProperty("output_tokens").GetInt32() * 40m)) / 1_000_000m).And.BePositive();
        var twice = Form("img", 1);
        twice.Add(new StringContent("true"), "stream");
        twice.Add(new StringContent("2"), "n");
        using var refusedTwice = await Http.PostAsync("v1/images/edits", twice, Ct);
        refusedTwice.StatusCode.Should().Be(HttpStatusCode.BadRequest, "a streamed edit makes one image");
    }

    [Theory]
    [InlineData("""{"model":"img"}""", "prompt")]
    [InlineData("""{"model":"img","prompt":""}""", "prompt")]
    [InlineData("""{"model":"img","prompt":["a"]}""", "prompt")]
    [InlineData("""{"model":"img","prompt":"x","n":0}""", "n")]
    [InlineData("""{"model":"img","prompt":"x","n":11}""", "n")]
    [InlineData("""{"model":"img","prompt":"x","n":"2"}""", "n")]
    [InlineData("""{"model":"img","prompt":"x","size":1024}""", "size")]
    [InlineData("""{"model":"img","prompt":"x","response_format":"png"}""", "response_format")]
    [InlineData("""{"model":"img","prompt":"x","output_compression":101}""", "output_compression")]
    [InlineData("""{"model":"img","prompt":"x","quality":true}""", "quality")]
    [InlineData("""{"model":"img","prompt":"x","stream":"yes"}""", "stream")]
    [InlineData("""{"model":"img","prompt":"x","stream":true,"n":2}""", "n")]
    [InlineData("""{"model":"img","prompt":"x","stream":true,"partial_images":4}""", "partial_images")]
    [InlineData("""{"model":"img","prompt":"x","partial_images":1.5}""", "partial_images")]
    [InlineData("""{"model":7,"prompt":"x"}""", "model")]
    [InlineData("""["img"]""", null)]
    public async Task A_bad_request_is_a_400_naming_its_field_and_reaches_no_upstream(string body, string? param)
    {
        var (response, error) = await PostAsync(body);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = FrontDoorTests.ErrorIn("v1/images/generations", error);
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        Fleet.Sims["sim"].Requests.Should().Be(0);
    }

    [Fact]
    public void The_request_reader_refuses_any_mutation_with_a_request_error_and_never_anything_else()
    {
        Fuzz.CheckOperationReader(OperationKind.Images, Fuzz.ImagesTemplate, Fuzz.Seed + 17);
    }

    [Fact]
    public async Task An_upstream_answer_that_is_not_images_fails_over_and_upstream_refusals_keep_their_status_without_the_key()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        const string KeyVariable = "PGW_TEST_IMAGES_SCRIPTED_KEY";
        const string UpstreamKey = "sk-images-upstream-secret-0123456789";
        Environment.SetEnvironmentVariable(KeyVariable, UpstreamKey);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["embeddings-no-vector", "embeddings-chat", "embeddings-404", "echo-400"], "gpt-image-1", Ct, KeyVariable);
        var http = gateway.Http;
        async Task<(HttpStatusCode Status, string Text, string Provider)> Generate(string model)
        {
            using var response = await http.PostAsync("v1/images/generations", new StringContent($$"""{"model":"{{model}}","prompt":"p","size":"4x4"}""", Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct), Header(response, "x-gateway-provider"));
        }

        foreach (var broken in new[] { "embeddings-no-vector", "embeddings-chat" })
        {
            var (status, text, _) = await Generate(broken);
            status.Should().Be(HttpStatusCode.BadGateway, broken);
            text.Should().Contain("not a usable image generation", broken);
            var (fallback, _, provider) = await Generate(broken + "-then-sim");
            (fallback, provider).Should().Be((HttpStatusCode.OK, "sim"), "a broken answer is the provider's failure: the next deployment answers");
        }

        // A chat-only upstream (404 on the images route): passed over, not cooled down.
        var (chatOnly, refusal, _) = await Generate("embeddings-404");
        chatOnly.Should().Be(HttpStatusCode.BadRequest);
        refusal.Should().Contain("serves no image generation");
        (await Generate("embeddings-404-then-sim")).Should().Match<(HttpStatusCode Status, string Text, string Provider)>(r => r.Status == HttpStatusCode.OK && r.Provider == "sim");

        // A streamed request answered whole, as JSON (a server that does not stream images): passed over for one that
        // streams, the caller's 400 naming 'stream' when none can — never an event stream without events.
        async Task<(HttpStatusCode Status, string Type, string Text)> Stream(string model)
        {
            using var response = await http.PostAsync("v1/images/generations", new StringContent($$"""{"model":"{{model}}","prompt":"p","size":"4x4","stream":true}""", Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, response.Content.Headers.ContentType?.MediaType ?? string.Empty, await response.Content.ReadAsStringAsync(Ct));
        }

        var (whole, _, wholeText) = await Stream("embeddings-chat");
        whole.Should().Be(HttpStatusCode.BadRequest);
        JsonDocument.Parse(wholeText).RootElement.GetProperty("error").GetProperty("param").GetString().Should().Be("stream");
        var (streamed, type, events) = await Stream("embeddings-chat-then-sim");
        (streamed, type).Should().Be((HttpStatusCode.OK, "text/event-stream"));
        events.Should().Contain("image_generation.completed");

        var (rejected, rejection, _) = await Generate("echo-400");
        rejected.Should().Be(HttpStatusCode.BadRequest, "the upstream refused the request itself: its status, not a 502");
        rejection.Should().Contain("temperature is too high").And.NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);
    }
}
