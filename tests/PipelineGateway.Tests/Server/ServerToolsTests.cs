using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Metrics;
using PipelineGateway.Server;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Claude's own tools through the gateway (docs/providers.md, "Claude's own tools"): a web search offered on
/// <c>/v1/messages</c> reaches Claude as written, its blocks (the call, the encrypted results, cited text) come back
/// whole and streamed as Claude wrote them, and the next turn gives them back unchanged — checked by a simulator that,
/// like Claude, refuses altered results. A deployment without a form for them is not sent the request.
/// </summary>
public sealed class ServerToolsTests : IAsyncLifetime
{
    private SimulatorFleet _fleet = null!;

    private Dictionary<string, SimulatorServer> _sims => _fleet.Sims;

    private WebApplication _app => _fleet.App;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Uri Base => _fleet.Base;

    private static readonly object WebSearch = new Dictionary<string, object> { ["type"] = "web_search_20250305", ["name"] = "web_search", ["max_uses"] = 2 };

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.StartAsync(
        [("claude", "Anthropic", null), ("gpt", "OpenAI", null), ("compat", "OpenAICompatible", null)],
        [("claude", ["claude"]), ("gpt-first", ["gpt", "claude"]), ("gpt-only", ["gpt"])],
        "claude-sonnet-4-5",
        new Dictionary<string, string?> { ["Gateway:Cache:Enabled"] = "true" },
        Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private async Task<(HttpStatusCode Status, string Body)> PostAsync(string path, object body, string? beta = null)
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Add("anthropic-version", "2023-06-01");
        if (beta is not null)
        {
            http.DefaultRequestHeaders.TryAddWithoutValidation("anthropic-beta", beta);
        }

        using var response = await http.PostAsync(new Uri(Base, path), new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"), Ct);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }

    private static Dictionary<string, object> Ask(string model, bool stream, params object[] messages) => new()
    {
        ["model"] = model,
        ["max_tokens"] = 256,
        ["stream"] = stream,
        ["tools"] = new[] { WebSearch },
        ["messages"] = messages.Length > 0 ? messages : [User("What is the weather in Paris?")],
    };

    private static object User(string text) => new Dictionary<string, object> { ["role"] = "user", ["content"] = text };

    private static List<(string Name, JsonElement Data)> Events(string stream)
    {
        var events = new List<(string, JsonElement)>();
        string? name = null;
        foreach (var line in stream.Split('\n'))
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal))
            {
                name = line[7..];
            }
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                events.Add((name!, JsonDocument.Parse(line[6..]).RootElement.Clone()));
            }
        }

        return events;
    }

    /// <summary>A stream's blocks put back together the way the Anthropic SDKs do: each block's start, then its deltas.</summary>
    private static JsonArray Blocks(List<(string Name, JsonElement Data)> events)
    {
        var blocks = new SortedDictionary<int, JsonObject>();
        var json = new Dictionary<int, StringBuilder>();
        foreach (var (name, data) in events)
        {
            data.GetProperty("type").GetString().Should().Be(name, "an event's name is its type");
            if (name == "content_block_start")
            {
                blocks.Add(data.GetProperty("index").GetInt32(), JsonNode.Parse(data.GetProperty("content_block").GetRawText())!.AsObject());
            }
            else if (name == "content_block_delta")
            {
                var index = data.GetProperty("index").GetInt32();
                var block = blocks[index];
                var delta = data.GetProperty("delta");
                switch (delta.GetProperty("type").GetString())
                {
                    case "text_delta":
                        block["text"] = block["text"]!.GetValue<string>() + delta.GetProperty("text").GetString();
                        break;
                    case "input_json_delta":
                        (json.TryGetValue(index, out var sb) ? sb : json[index] = new StringBuilder()).Append(delta.GetProperty("partial_json").GetString());
                        break;
                    case "citations_delta":
                        ((block["citations"] ??= new JsonArray()) as JsonArray)!.Add(JsonNode.Parse(delta.GetProperty("citation").GetRawText()));
                        break;
                }
            }
        }

        foreach (var (index, text) in json)
        {
            blocks[index]["input"] = JsonNode.Parse(text.ToString());
        }

        return [.. blocks.Values];
    }

    private decimal Spent() => _app.Services.GetRequiredService<IGatewayMetrics>().GetSnapshot().TotalCost;

    /// <summary>What a search answer costs: its tokens at claude-sonnet-4's prices, and the search at $10 per 1,000.</summary>
    private static decimal SearchCost(JsonElement usage)
    {
        usage.GetProperty("server_tool_use").GetProperty("web_search_requests").GetInt32().Should().Be(1);
        return ((usage.GetProperty("input_tokens").GetInt32() * 3.00m) + (usage.GetProperty("output_tokens").GetInt32() * 15.00m)) / 1_000_000m + 0.01m;
    }

    private static string[] Types(JsonArray blocks) => [.. blocks.Select(b => b!["type"]!.GetValue<string>())];

    [Fact]
    public async Task A_web_search_comes_back_whole_as_Claude_wrote_it_and_the_next_turn_gives_its_results_back_unchanged()
    {
        var before = Spent();
        var (status, text) = await PostAsync("v1/messages", Ask("claude", stream: false));
        status.Should().Be(HttpStatusCode.OK, text);
        Spent().Should().Be(before + SearchCost(JsonDocument.Parse(text).RootElement.GetProperty("usage")), "a search is billed on top of the tokens");
        var content = JsonNode.Parse(text)!["content"]!.AsArray();
        Types(content).Should().Equal("text", "server_tool_use", "web_search_tool_result", "text");
        content[1]!["input"]!["query"]!.GetValue<string>().Should().NotBeEmpty();
        var result = content[2]!["content"]![0]!;
        result["encrypted_content"]!.GetValue<string>().Should().StartWith("sim_enc_");
        content[3]!["citations"]![0]!["type"]!.GetValue<string>().Should().Be("web_search_result_location");

        // The next turn, with the answer given back: accepted only if every block reached Claude unchanged.
        var turn = new Dictionary<string, object> { ["role"] = "assistant", ["content"] = content };
        (status, text) = await PostAsync("v1/messages", Ask("claude", stream: false, User("What is the weather in Paris?"), turn, User("And tomorrow?")));
        status.Should().Be(HttpStatusCode.OK, text);
        Types(JsonNode.Parse(text)!["content"]!.AsArray()).Should().Equal("text");

        // An altered result is refused by Claude (the simulator as well): the gateway sends it as written, not rebuilt.
        result["encrypted_content"] = "tampered";
        (status, text) = await PostAsync("v1/messages", Ask("claude", stream: false, User("What is the weather in Paris?"), turn, User("And tomorrow?")));
        status.Should().Be(HttpStatusCode.BadRequest, text);
        text.Should().Contain("encrypted_content");
    }

    [Fact]
    public async Task A_web_search_streams_as_Claude_streams_it_with_its_indexes_and_citations_and_is_not_cached()
    {
        var spent = Spent();
        var (status, text) = await PostAsync("v1/messages", Ask("claude", stream: true));
        status.Should().Be(HttpStatusCode.OK, text);
        var events = Events(text);
        Spent().Should().Be(spent + SearchCost(events.Single(e => e.Name == "message_delta").Data.GetProperty("usage")));
        events.Select(e => e.Name).Should().StartWith(["message_start", "ping"]).And.EndWith(["message_delta", "message_stop"]);
        var blocks = Blocks(events);
        Types(blocks).Should().Equal("text", "server_tool_use", "web_search_tool_result", "text");
        blocks[1]!["input"]!["query"]!.GetValue<string>().Should().NotBeEmpty();
        blocks[3]!["citations"]!.AsArray().Should().ContainSingle();
        events.Where(e => e.Name == "content_block_stop").Select(e => e.Data.GetProperty("index").GetInt32()).Should().Equal(0, 1, 2, 3);

        var turn = new Dictionary<string, object> { ["role"] = "assistant", ["content"] = blocks };
        (status, text) = await PostAsync("v1/messages", Ask("claude", stream: true, User("What is the weather in Paris?"), turn, User("And tomorrow?")));
        status.Should().Be(HttpStatusCode.OK, text);
        Types(Blocks(Events(text))).Should().Equal("text");

        // A streamed search cannot be rebuilt from the canonical chunks: asked again, Claude is asked again.
        var before = _sims["claude"].Requests;
        (status, _) = await PostAsync("v1/messages", Ask("claude", stream: true));
        status.Should().Be(HttpStatusCode.OK);
        _sims["claude"].Requests.Should().Be(before + 1);
    }

    /// <summary>
    /// A search answered whole is cached with its blocks as Claude wrote them; asked again as a stream, the hit is
    /// replayed as Claude's events of those blocks — the SDK's assembly of them is the whole answer's content.
    /// </summary>
    [Fact]
    public async Task A_cached_search_replayed_to_a_messages_stream_brings_its_blocks_as_Claude_streams_them()
    {
        var question = User("What is the weather in Lisbon?");
        var (status, text) = await PostAsync("v1/messages", Ask("claude", stream: false, question));
        status.Should().Be(HttpStatusCode.OK, text);
        var whole = JsonNode.Parse(text)!["content"]!.AsArray();
        var before = _sims["claude"].Requests;

        (status, text) = await PostAsync("v1/messages", Ask("claude", stream: true, question));
        status.Should().Be(HttpStatusCode.OK, text);
        _sims["claude"].Requests.Should().Be(before, "the answer came from the cache");
        var events = Events(text);
        events.Select(e => e.Name).Should().StartWith(["message_start", "ping"]).And.EndWith(["message_delta", "message_stop"]);
        var blocks = Blocks(events);
        Types(blocks).Should().Equal("text", "server_tool_use", "web_search_tool_result", "text");
        JsonNode.DeepEquals(blocks, whole).Should().BeTrue($"the replay's blocks are the answer's: {blocks.ToJsonString()} vs {whole.ToJsonString()}");
        events.Where(e => e.Name == "content_block_stop").Select(e => e.Data.GetProperty("index").GetInt32()).Should().Equal(0, 1, 2, 3);
        events.Single(e => e.Name == "message_delta").Data.GetProperty("delta").GetProperty("stop_reason").GetString().Should().Be("end_turn");

        // The replayed blocks, given back in the next turn, are accepted: they reached the caller unchanged.
        var turn = new Dictionary<string, object> { ["role"] = "assistant", ["content"] = blocks };
        (status, text) = await PostAsync("v1/messages", Ask("claude", stream: false, question, turn, User("And tomorrow?")));
        status.Should().Be(HttpStatusCode.OK, text);
    }

    /// <summary>
    /// Claude's structured outputs on <c>/v1/messages</c> (<c>output_config.format</c>, as the Vercel AI SDK asks Claude for
    /// an object) are honoured by Claude and by OpenAI alike: the answer's text is a JSON object of the schema, whole and
    /// streamed. (The format was dropped before: prose came back, and the SDK could not parse it.)
    /// </summary>
    [Theory]
    [InlineData("claude", false)]
    [InlineData("claude", true)]
    [InlineData("gpt-only", false)]
    public async Task Claudes_output_format_is_honoured_by_every_deployment(string model, bool stream)
    {
        var body = new Dictionary<string, object>
        {
            ["model"] = model,
            ["max_tokens"] = 256,
            ["stream"] = stream,
            ["messages"] = new[] { User("A person, please.") },
            ["output_config"] = new Dictionary<string, object>
            {
                ["format"] = new Dictionary<string, object>
                {
                    ["type"] = "json_schema",
                    ["schema"] = JsonNode.Parse("""{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"number"}},"required":["name","age"],"additionalProperties":false}""")!,
                },
            },
        };
        var (status, text) = await PostAsync("v1/messages", body);
        status.Should().Be(HttpStatusCode.OK, text);

        var answer = stream
            ? string.Concat(Events(text).Where(e => e.Name == "content_block_delta").Select(e => e.Data.GetProperty("delta")).Where(d => d.GetProperty("type").GetString() == "text_delta").Select(d => d.GetProperty("text").GetString()))
            : JsonNode.Parse(text)!["content"]!.AsArray().Single()!["text"]!.GetValue<string>();
        var json = JsonNode.Parse(answer)!.AsObject();
        json["name"]!.GetValue<string>().Should().NotBeEmpty();
        json["age"]!.GetValue<double>().Should().BeGreaterThanOrEqualTo(0);
    }

    [Fact]
    public async Task An_OpenAI_format_caller_gets_the_searchs_text_and_no_tool_call_of_its_own_whole_and_streamed()
    {
        var body = new Dictionary<string, object>
        {
            ["model"] = "claude",
            ["tools"] = new[] { WebSearch },
            ["messages"] = new[] { User("What is the weather in Paris?") },
        };
        var (status, text) = await PostAsync("v1/chat/completions", body);
        status.Should().Be(HttpStatusCode.OK, text);
        var message = JsonNode.Parse(text)!["choices"]![0]!["message"]!;
        message["content"]!.GetValue<string>().Should().StartWith("Let me search.");
        message["tool_calls"].Should().BeNull("the search is Claude's own call, not one the caller must run");
        Types(message["anthropic_content"]!.AsArray()).Should().Equal("text", "server_tool_use", "web_search_tool_result", "text");

        body["stream"] = true;
        body["messages"] = new[] { User("What is the weather in Rome?") }; // not the answer the cache now holds
        (status, text) = await PostAsync("v1/chat/completions", body);
        status.Should().Be(HttpStatusCode.OK, text);
        var deltas = text.Split('\n').Where(l => l.StartsWith("data: {", StringComparison.Ordinal))
            .Select(l => JsonNode.Parse(l[6..])!["choices"]!.AsArray()).Where(c => c.Count > 0).Select(c => c[0]!["delta"]!).ToList();
        deltas.Should().NotContain(d => d["tool_calls"] != null, "the search's query is not a tool call of the caller's");
        string.Concat(deltas.Select(d => d["content"]?.GetValue<string>())).Should().StartWith("Let me search.");
    }

    [Fact]
    public async Task A_deployment_with_no_form_for_Claudes_tools_is_not_sent_the_request()
    {
        // OpenAI itself first: it has no form for web_search_20250305, so the request goes on to Claude as it is.
        var (status, text) = await PostAsync("v1/messages", Ask("gpt-first", stream: false));
        status.Should().Be(HttpStatusCode.OK, text);
        Types(JsonNode.Parse(text)!["content"]!.AsArray()).Should().Equal("text", "server_tool_use", "web_search_tool_result", "text");
        _sims["gpt"].Requests.Should().Be(0);

        // Nothing else can take it: the caller's 400 names the tool; nothing was sent.
        (status, text) = await PostAsync("v1/messages", Ask("gpt-only", stream: false));
        status.Should().Be(HttpStatusCode.BadRequest, text);
        var error = JsonNode.Parse(text)!["error"]!;
        error["type"]!.GetValue<string>().Should().Be("invalid_request_error");
        error["message"]!.GetValue<string>().Should().Contain("web_search_20250305");
        _sims["gpt"].Requests.Should().Be(0);

        // A turn holding a search's results is refused there too (its results would be lost), and reaches Claude after.
        var (_, first) = await PostAsync("v1/messages", Ask("claude", stream: false));
        var turn = new Dictionary<string, object> { ["role"] = "assistant", ["content"] = JsonNode.Parse(first)!["content"]! };
        var next = Ask("gpt-first", stream: false, User("What is the weather in Paris?"), turn, User("And tomorrow?"));
        next.Remove("tools");
        (status, text) = await PostAsync("v1/messages", next);
        status.Should().Be(HttpStatusCode.OK, text);
        _sims["gpt"].Requests.Should().Be(0);
    }

    /// <summary>
    /// A caller's <c>anthropic-beta</c> header reaches Claude (web fetch, a 1M-token context… are served only with it):
    /// without it the simulator, like Claude, refuses the web fetch tool; a header that is not a list of names is a 400
    /// from the gateway, and nothing is sent.
    /// </summary>
    [Fact]
    public async Task The_callers_anthropic_beta_header_reaches_Claude_and_a_malformed_one_is_a_400()
    {
        var body = JsonNode.Parse("""{"model":"claude","max_tokens":16,"tools":[{"type":"web_fetch_20250910","name":"web_fetch","max_uses":1}],"messages":[{"role":"user","content":"Read https://example.com"}]}""")!;
        var (status, text) = await PostAsync("v1/messages", body);
        status.Should().Be(HttpStatusCode.BadRequest, text);
        text.Should().Contain("web-fetch-2025-09-10");

        (status, text) = await PostAsync("v1/messages", body, beta: "interleaved-thinking-2025-05-14, web-fetch-2025-09-10");
        status.Should().Be(HttpStatusCode.OK, text);
        body["stream"] = true;
        (status, text) = await PostAsync("v1/messages", body, beta: "web-fetch-2025-09-10");
        status.Should().Be(HttpStatusCode.OK, text);

        var sent = _sims["claude"].Requests;
        (status, text) = await PostAsync("v1/messages", body, beta: "web-fetch-2025-09-10;evil=1");
        status.Should().Be(HttpStatusCode.BadRequest, text);
        JsonNode.Parse(text)!["error"]!["message"]!.GetValue<string>().Should().StartWith("anthropic-beta:");
        _sims["claude"].Requests.Should().Be(sent);
    }

    [Theory]
    [InlineData("""{"type":"web_search_99","name":"web_search"}""", "tools.0.type")]
    [InlineData("""{"type":"function","name":"f","input_schema":{"type":"object"}}""", "tools.0.type")]
    [InlineData("""{"type":"web_search_20250305"}""", "tools.0.name")]
    public async Task A_tool_of_no_known_kind_is_a_400_naming_the_field(string tool, string field)
    {
        var body = JsonNode.Parse("""{"model":"claude","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}""")!.AsObject();
        body["tools"] = new JsonArray(JsonNode.Parse(tool));
        var (status, text) = await PostAsync("v1/messages", body);
        status.Should().Be(HttpStatusCode.BadRequest, text);
        text.Should().Contain(field);
        _sims["claude"].Requests.Should().Be(0);
    }

    [Fact]
    public async Task A_server_tools_block_in_a_user_turn_is_a_400()
    {
        var body = JsonNode.Parse("""
            {"model":"claude","max_tokens":16,"messages":[{"role":"user","content":[
              {"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"x"}}]}]}
            """)!;
        var (status, text) = await PostAsync("v1/messages", body);
        status.Should().Be(HttpStatusCode.BadRequest, text);
        text.Should().Contain("messages.0.content.0.type");
        _sims["claude"].Requests.Should().Be(0);
    }
}
