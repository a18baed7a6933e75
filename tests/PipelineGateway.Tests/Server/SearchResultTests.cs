using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Anthropic's <c>search_result</c> blocks on <c>/v1/messages</c> (a caller's own search results, for Claude to answer
/// from and cite), against real upstreams that record what they were sent: Claude gets them as written — in a user turn
/// or in a tool's result — and its citations of them come back; an OpenAI-compatible deployment gets each result's title,
/// source and text; a malformed one is the caller's 400 naming the field.
/// </summary>
public sealed class SearchResultTests : IAsyncLifetime
{
    private const string KeyVariable = "PGW_TEST_SEARCH_RESULT_CLAUDE_KEY";

    private UpstreamAndGateway _both = null!;

    private HttpClient _http => _both.Http;

    /// <summary>The bodies the upstreams were sent, by path ("claude", "openai" the compatible one, "openai-strict" OpenAI's own).</summary>
    private readonly ConcurrentDictionary<string, JsonElement> _sent = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly object Result = new Dictionary<string, object>
    {
        ["type"] = "search_result",
        ["source"] = "https://docs.example.com/paris",
        ["title"] = "Paris facts",
        ["content"] = new[] { new { type = "text", text = "Paris is the capital of France." }, new { type = "text", text = " It has 2.1 million people." } },
        ["citations"] = new { enabled = true },
    };

    public async ValueTask InitializeAsync()
    {
        Environment.SetEnvironmentVariable(KeyVariable, "sk-ant-search-result-test");
        _both = await UpstreamAndGateway.StartAsync(
            upstream => upstream.MapPost("/{kind}/v1/{**path}", (HttpContext ctx) => AnswerAsync(ctx)),
            upstream => new Dictionary<string, string?>
            {
                ["Gateway:Providers:1:Name"] = "claude",
                ["Gateway:Providers:1:Type"] = "Anthropic",
                ["Gateway:Providers:1:BaseUrl"] = new Uri(upstream, "claude/v1").ToString(),
                ["Gateway:Providers:1:ApiKeyEnvironmentVariable"] = KeyVariable,
                ["Gateway:Providers:2:Name"] = "compat",
                ["Gateway:Providers:2:Type"] = "OpenAICompatible",
                ["Gateway:Providers:2:BaseUrl"] = new Uri(upstream, "openai/v1").ToString(),
                ["Gateway:Models:1:Name"] = "claude-m",
                ["Gateway:Models:1:Deployments:0:Provider"] = "claude",
                ["Gateway:Models:1:Deployments:0:Model"] = "claude-sonnet-4-5",
                ["Gateway:Models:2:Name"] = "compat-m",
                ["Gateway:Models:2:Deployments:0:Provider"] = "compat",
                ["Gateway:Providers:3:Name"] = "openai",
                ["Gateway:Providers:3:Type"] = "OpenAI",
                ["Gateway:Providers:3:BaseUrl"] = new Uri(upstream, "openai-strict/v1").ToString(),
                ["Gateway:Providers:3:ApiKeyEnvironmentVariable"] = KeyVariable,
                ["Gateway:Models:3:Name"] = "gpt-m",
                ["Gateway:Models:3:Deployments:0:Provider"] = "openai",
            },
            Ct);
        _http.DefaultRequestHeaders.Add("anthropic-version", "2023-06-01");
    }

    public ValueTask DisposeAsync() => _both.DisposeAsync();


    /// <summary>Claude answers with a text citing the first search result; the OpenAI servers with plain text.</summary>
    private async Task AnswerAsync(HttpContext ctx)
    {
        var kind = (string)ctx.Request.RouteValues["kind"]!;
        using var body = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        _sent[kind] = body.RootElement.Clone();
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(kind == "claude"
            ? """
              {"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","stop_reason":"end_turn","stop_sequence":null,
               "content":[{"type":"text","text":"Paris is the capital.","citations":[{"type":"search_result_location","source":"https://docs.example.com/paris","title":"Paris facts","cited_text":"Paris is the capital of France.","search_result_index":0,"start_block_index":0,"end_block_index":0}]}],
               "usage":{"input_tokens":40,"output_tokens":6}}
              """
            : """
              {"id":"c1","object":"chat.completion","created":1,"model":"compat-m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],
               "usage":{"prompt_tokens":40,"completion_tokens":2,"total_tokens":42}}
              """, ctx.RequestAborted);
    }

    private async Task<(HttpStatusCode Status, JsonElement Json)> Messages(string model, params object[] messages)
    {
        using var response = await _http.PostAsync("v1/messages", new StringContent(JsonSerializer.Serialize(new { model, max_tokens = 64, messages }), Encoding.UTF8, "application/json"), Ct);
        return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
    }

    private static object UserTurn(params object[] content) => new { role = "user", content };

    private static readonly object Question = new { type = "text", text = "What is the capital of France?" };

    private static string Serialized(object value) => JsonSerializer.Serialize(value);

    [Fact]
    public async Task Claude_gets_a_user_turns_search_results_as_written_and_its_citations_of_them_come_back()
    {
        var (status, answer) = await Messages("claude-m", UserTurn(Result, Question));

        status.Should().Be(HttpStatusCode.OK, answer.ToString());
        var sent = _sent["claude"].GetProperty("messages")[0].GetProperty("content");
        JsonSerializer.Serialize(sent).Should().Be(Serialized(new[] { Result, Question }), "the blocks go to Claude as the caller wrote them");
        var citation = answer.GetProperty("content")[0].GetProperty("citations")[0];
        (citation.GetProperty("type").GetString(), citation.GetProperty("source").GetString()).Should().Be(("search_result_location", "https://docs.example.com/paris"));
    }

    [Theory]
    [InlineData("compat-m", "openai")]
    [InlineData("gpt-m", "openai-strict")]
    public async Task An_openai_deployment_gets_each_results_title_source_and_text(string model, string upstream)
    {
        var (status, answer) = await Messages(model, UserTurn(Result, Question));

        status.Should().Be(HttpStatusCode.OK, answer.ToString());
        var content = _sent[upstream].GetProperty("messages")[0].GetProperty("content");
        var text = content.ValueKind == JsonValueKind.String ? content.GetString() : string.Concat(content.EnumerateArray().Select(p => p.GetProperty("text").GetString()));
        text.Should().Be("Search result: Paris facts\nSource: https://docs.example.com/paris\nParis is the capital of France. It has 2.1 million people.\n\nWhat is the capital of France?");
    }

    [Fact]
    public async Task A_tools_search_results_go_to_Claude_as_written_and_to_others_as_text()
    {
        object[] turns =
        [
            UserTurn(Question),
            new { role = "assistant", content = new object[] { new { type = "tool_use", id = "toolu_1", name = "search", input = new { q = "capital of France" } } } },
            UserTurn(new { type = "tool_result", tool_use_id = "toolu_1", content = new[] { Result } }),
        ];

        (await Messages("claude-m", turns)).Status.Should().Be(HttpStatusCode.OK);
        (await Messages("compat-m", turns)).Status.Should().Be(HttpStatusCode.OK);

        var toClaude = _sent["claude"].GetProperty("messages")[2].GetProperty("content")[0];
        toClaude.GetProperty("type").GetString().Should().Be("tool_result");
        JsonSerializer.Serialize(toClaude.GetProperty("content")).Should().Be(Serialized(new[] { Result }));
        var toOthers = _sent["openai"].GetProperty("messages").EnumerateArray().Single(m => m.GetProperty("role").GetString() == "tool");
        toOthers.GetProperty("content").GetString().Should().Be("Search result: Paris facts\nSource: https://docs.example.com/paris\nParis is the capital of France. It has 2.1 million people.");
    }

    [Fact]
    public async Task Search_results_beside_a_tool_result_in_one_turn_reach_Claude_once_after_it_and_others_as_text()
    {
        object[] turns =
        [
            UserTurn(Question),
            new { role = "assistant", content = new object[] { new { type = "tool_use", id = "toolu_1", name = "search", input = new { q = "capital" } } } },
            UserTurn(Result, new { type = "tool_result", tool_use_id = "toolu_1", content = "done" }, Question),
        ];

        (await Messages("claude-m", turns)).Status.Should().Be(HttpStatusCode.OK);
        (await Messages("compat-m", turns)).Status.Should().Be(HttpStatusCode.OK);

        var toClaude = _sent["claude"].GetProperty("messages");
        toClaude.GetArrayLength().Should().Be(3);
        JsonSerializer.Serialize(toClaude[2].GetProperty("content")).Should().Be(Serialized(new object[] { new { type = "tool_result", tool_use_id = "toolu_1", content = "done" }, Result, Question }),
            "the tool's result first (as Claude wants it), once, then the turn's other blocks as written");
        var toOthers = _sent["openai"].GetProperty("messages").EnumerateArray().ToList();
        toOthers.Select(m => m.GetProperty("role").GetString()).Should().Equal("user", "assistant", "tool", "user");
        toOthers[3].GetProperty("content").GetString().Should().StartWith("Search result: Paris facts\nSource: https://docs.example.com/paris\n");
    }

    [Theory]
    [InlineData("no-title", "messages.0.content.0.title")]
    [InlineData("no-source", "messages.0.content.0.source")]
    [InlineData("assistant", "messages.1.content.0.type")]
    [InlineData("in-system", "system")]
    [InlineData("tool-result-no-source", "messages.2.content.0.content")]
    public async Task A_search_result_the_gateway_cannot_carry_is_the_callers_400_naming_the_field(string how, string field)
    {
        var noTitle = new Dictionary<string, object>((Dictionary<string, object>)Result);
        noTitle.Remove("title");
        var noSource = new Dictionary<string, object>((Dictionary<string, object>)Result);
        noSource.Remove("source");
        var toolUse = new { role = "assistant", content = new object[] { new { type = "tool_use", id = "toolu_1", name = "search", input = new { } } } };
        object body = how switch
        {
            "no-title" => new { model = "claude-m", max_tokens = 8, messages = new[] { UserTurn(noTitle, Question) } },
            "no-source" => new { model = "claude-m", max_tokens = 8, messages = new[] { UserTurn(noSource, Question) } },
            "assistant" => new { model = "claude-m", max_tokens = 8, messages = new[] { UserTurn(Question), new { role = "assistant", content = new[] { Result } }, UserTurn(Question) } },
            "in-system" => new { model = "claude-m", max_tokens = 8, system = new[] { Result }, messages = new[] { UserTurn(Question) } },
            _ => new { model = "claude-m", max_tokens = 8, messages = new[] { UserTurn(Question), toolUse, UserTurn(new { type = "tool_result", tool_use_id = "toolu_1", content = new[] { noSource } }) } },
        };

        using var response = await _http.PostAsync("v1/messages", new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"), Ct);
        var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement;

        response.StatusCode.Should().Be(HttpStatusCode.BadRequest, error.ToString());
        error.GetProperty("error").GetProperty("type").GetString().Should().Be("invalid_request_error");
        error.GetProperty("error").GetProperty("message").GetString().Should().Contain(field);
        _sent.Should().BeEmpty("nothing reaches an upstream");
    }
}
