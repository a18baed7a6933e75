using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// A tool call's extra members kept by the gateway for the loop's next step (<c>ToolCallRecall</c>): Gemini's thought
/// signature, which a Gemini 3 upstream refuses the next step without (the scripted <c>gemini-tools</c> upstream, a
/// real Kestrel, answers that step with Gemini's 400 unless its last call carries the signature). The clients here
/// give the calls back as the clients that lose them do: an OpenAI-format client keeping only the members it models,
/// an Anthropic client (a <c>tool_use</c> block has no place for them) and a Responses client (nor has a
/// <c>function_call</c> item) — whole and streamed, with a stored response, and across a fleet sharing Redis.
/// </summary>
public sealed class ToolCallRecallTests() : EchoGatewayTests("gemini-tools")
{
    private const string Key = "pgw-recall-key-a";
    private const string OtherKey = "pgw-recall-key-b";
    private const string Answer = "It is sunny in Paris.";

    protected override void Configure(Dictionary<string, string?> settings) => Keys(Upstream, settings);

    private static void Keys(ScriptedUpstream upstream, Dictionary<string, string?> settings)
    {
        upstream.AddProvider(settings, 1, "echo2", "OpenAICompatible", "gemini-tools", "m2", "m-up");
        settings["Gateway:Server:Keys:0:Id"] = "a";
        settings["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key);
        settings["Gateway:Server:Keys:1:Id"] = "b";
        settings["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(OtherKey);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_OpenAI_format_client_that_drops_a_calls_members_gets_them_back_for_the_next_step(bool stream)
    {
        var call = await ChatCallAsync(Gateway.Http, "m", stream);
        call.AsObject().Remove("extra_content").Should().BeTrue("the upstream put the signature on the call: {0}", call.ToJsonString());

        var (status, body) = await PostAsync(Gateway.Http, "v1/chat/completions", WeatherToolLoop.ChatNextStep("m", call));

        status.Should().Be(200, body);
        JsonNode.Parse(body)!["choices"]![0]!["message"]!["content"]!.GetValue<string>().Should().Be(Answer);
    }

    [Fact]
    public async Task Nothing_is_given_to_a_call_it_did_not_answer_to_another_model_or_to_another_key()
    {
        var call = await ChatCallAsync(Gateway.Http, "m", stream: false);
        call.AsObject().Remove("extra_content");

        // Each is the upstream's own 400 relayed: the gateway sent the call as the client did.
        var elsewhere = call.DeepClone();
        elsewhere["id"] = "function-call-begun-elsewhere";
        (await PostAsync(Gateway.Http, "v1/chat/completions", WeatherToolLoop.ChatNextStep("m", elsewhere))).Status.Should().Be(400, "a call this gateway did not answer has nothing kept");
        (await PostAsync(Gateway.Http, "v1/chat/completions", WeatherToolLoop.ChatNextStep("m2", call))).Status.Should().Be(400, "a conversation moved to another model is sent what the client sent");
        (await PostAsync(Gateway.Http, "v1/chat/completions", WeatherToolLoop.ChatNextStep("m", call), OtherKey)).Status.Should().Be(400, "another key's calls are not given");

        // The same step as it was answered, for this key and model: given back.
        (await PostAsync(Gateway.Http, "v1/chat/completions", WeatherToolLoop.ChatNextStep("m", call))).Status.Should().Be(200);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_Anthropic_client_loops_through_a_Gemini_deployment(bool stream)
    {
        var (status, body) = await PostAsync(Gateway.Http, "v1/messages", WeatherToolLoop.AnthropicFirst("m", stream));
        status.Should().Be(200, body);
        var toolUse = stream ? StreamedToolUse(body) : JsonNode.Parse(body)!["content"]!.AsArray().Single(b => b!["type"]!.GetValue<string>() == "tool_use")!.DeepClone();
        toolUse["id"]!.GetValue<string>().Should().Be("function-call-1");
        toolUse.AsObject().ContainsKey("extra_content").Should().BeFalse("a tool_use block is written in Anthropic's shape");

        (status, body) = await PostAsync(Gateway.Http, "v1/messages", WeatherToolLoop.AnthropicNextStep("m", toolUse));

        status.Should().Be(200, body);
        JsonNode.Parse(body)!["content"]![0]!["text"]!.GetValue<string>().Should().Be(Answer);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)] // a background response, its events streamed as they are made
    public async Task A_Responses_client_loops_through_a_Gemini_deployment_with_its_items_or_a_stored_response(bool stream, bool background)
    {
        var first = new JsonObject
        {
            ["model"] = "m",
            ["stream"] = stream,
            ["background"] = background,
            ["input"] = "Weather in Paris?",
            ["tools"] = new JsonArray(new JsonObject { ["type"] = "function", ["name"] = "get_weather", ["parameters"] = new JsonObject { ["type"] = "object" } }),
        };
        var (status, body) = await PostAsync(Gateway.Http, "v1/responses", first);
        status.Should().Be(200, body);
        var response = stream ? Completed(body) : JsonNode.Parse(body)!;
        var item = response["output"]!.AsArray().Single(i => i!["type"]!.GetValue<string>() == "function_call")!;
        item["call_id"]!.GetValue<string>().Should().Be("function-call-1");
        var output = new JsonObject { ["type"] = "function_call_output", ["call_id"] = "function-call-1", ["output"] = "{\"sky\":\"clear\"}" };

        // The items given back, as a client keeping its own history sends them.
        var withItems = new JsonObject
        {
            ["model"] = "m",
            ["store"] = false,
            ["input"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "Weather in Paris?" }, item.DeepClone(), output.DeepClone()),
            ["tools"] = first["tools"]!.DeepClone(),
        };
        (status, body) = await PostAsync(Gateway.Http, "v1/responses", withItems);
        status.Should().Be(200, body);
        OutputText(JsonNode.Parse(body)!).Should().Be(Answer);

        // The stored response's conversation, continued by its id.
        var continued = new JsonObject
        {
            ["model"] = "m",
            ["previous_response_id"] = response["id"]!.GetValue<string>(),
            ["input"] = new JsonArray(output.DeepClone()),
            ["tools"] = first["tools"]!.DeepClone(),
        };
        (status, body) = await PostAsync(Gateway.Http, "v1/responses", continued);
        status.Should().Be(200, body);
        OutputText(JsonNode.Parse(body)!).Should().Be(Answer);
    }

    [Fact]
    public async Task A_fleet_sharing_Redis_gives_them_back_on_another_instance()
    {
        var prefix = "recall" + Guid.NewGuid().ToString("N")[..12];
        await using var one = await FleetMemberAsync(prefix);
        await using var two = await FleetMemberAsync(prefix);
        var call = await ChatCallAsync(one.Http, "m", stream: true);
        call.AsObject().Remove("extra_content");

        var (status, body) = await PostAsync(two.Http, "v1/chat/completions", WeatherToolLoop.ChatNextStep("m", call));

        status.Should().Be(200, body);
    }

    private async Task<GatewayApp> FleetMemberAsync(string prefix)
    {
        var settings = Upstream.EchoSettings("gemini-tools");
        Keys(Upstream, settings);
        settings["Gateway:Redis:Configuration"] = RedisServer.Shared();
        settings["Gateway:Redis:KeyPrefix"] = prefix;
        return await GatewayApp.StartAsync(settings, Ct);
    }

    private static async Task<(int Status, string Body)> PostAsync(HttpClient http, string path, JsonObject body, string key = Key)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        using var response = await http.SendAsync(request, Ct);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }

    /// <summary>The first step's call as the client got it (a stream's deltas added up).</summary>
    private static async Task<JsonNode> ChatCallAsync(HttpClient http, string model, bool stream)
    {
        var (status, body) = await PostAsync(http, "v1/chat/completions", WeatherToolLoop.ChatFirst(model, stream));
        status.Should().Be(200, body);
        if (!stream)
        {
            return JsonNode.Parse(body)!["choices"]![0]!["message"]!["tool_calls"]![0]!.DeepClone();
        }

        JsonObject? call = null;
        foreach (var delta in Events(body).Select(static e => e["choices"]?[0]?["delta"]?["tool_calls"]).OfType<JsonArray>().SelectMany(static a => a))
        {
            call ??= (JsonObject)delta!.DeepClone();
        }

        call.Should().NotBeNull(body);
        call!.Remove("index");
        return call;
    }

    private static IEnumerable<JsonNode> Events(string sse) => SseEvents.Json(sse);

    /// <summary>An Anthropic stream's tool_use block: opened with its id and name, its input in JSON pieces.</summary>
    private static JsonNode StreamedToolUse(string sse)
    {
        var events = Events(sse).ToList();
        var block = events.Single(e => e["type"]!.GetValue<string>() == "content_block_start" && e["content_block"]!["type"]!.GetValue<string>() == "tool_use")["content_block"]!.DeepClone();
        var input = string.Concat(events.Where(e => e["delta"]?["type"]?.GetValue<string>() == "input_json_delta").Select(e => e["delta"]!["partial_json"]!.GetValue<string>()));
        block["input"] = JsonNode.Parse(input.Length == 0 ? "{}" : input);
        return block;
    }

    private static JsonNode Completed(string sse) => Events(sse).Single(e => e["type"]!.GetValue<string>() == "response.completed")["response"]!.DeepClone();

    private static string OutputText(JsonNode response) =>
        string.Concat(response["output"]!.AsArray().Where(i => i!["type"]!.GetValue<string>() == "message").SelectMany(i => i!["content"]!.AsArray()).Select(c => c!["text"]!.GetValue<string>()));
}
