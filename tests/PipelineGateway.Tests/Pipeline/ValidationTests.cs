using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

public sealed class ValidationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string, Action<ChatCompletionRequest>> BadRequests => WithCallsAndParts(new()
    {
        { "model", r => r.Model = "" },
        { "messages", r => r.Messages.Clear() },
        { "messages[0].role", r => r.Messages[0].Role = "wizard" },
        { "messages[0].content", r => r.Messages[0].Content = null },
        { "temperature", r => r.Temperature = 2.5 },
        { "top_p", r => r.TopP = 0 },
        { "max_tokens", r => r.MaxTokens = 0 },
        { "n", r => r.N = 0 },
        { "stop", r => r.Stop = new StopSequences(["a", "b", "c", "d", "e"]) },
        { "messages[1].tool_call_id", r => r.Messages.Add(new ChatCompletionMessage { Role = "tool", Content = "x" }) },
        { "tools[0].function.name", r => r.Tools = [new ToolDefinition { Function = new FunctionDefinition() }] },
        { "tools[0].function.parameters", r => r.Tools = [new ToolDefinition { Function = new FunctionDefinition { Name = "f", Parameters = Json("\"{}\"") } }] },
        { "tool_choice", r => (r.Tools, r.ToolChoice) = ([new ToolDefinition { Function = new FunctionDefinition { Name = "f" } }], Json("""{"type":"function","function":{"name":"g"}}""")) },
        { "tool_choice", r => r.ToolChoice = Json("\"required\"") },
        { "tool_choice", r => r.ToolChoice = Json("""{"type":"function","function":{"name":"f"}}""") },
        { "reasoning_effort", r => r.AdditionalProperties = new() { ["reasoning_effort"] = Json("5") } },
    });

    private static TheoryData<string, Action<ChatCompletionRequest>> WithCallsAndParts(TheoryData<string, Action<ChatCompletionRequest>> data)
    {
        foreach (var (field, spoil, _) in CallsAndParts)
        {
            data.Add(field, spoil);
        }

        return data;
    }

    /// <summary>Refused tool calls and content parts, with what each refusal says.</summary>
    private static readonly (string Field, Action<ChatCompletionRequest> Spoil, string Message)[] CallsAndParts =
    [
        ("messages[1].tool_calls[1]", r => r.Messages.Add(Called(Call("c"), null!)), "'messages[1].tool_calls[1]' is null; a tool call is an object with 'id', 'type' and 'function'."),
        ("messages[1].tool_calls[1].id", r => r.Messages.Add(Called(Call("c"), Call(""))), "'messages[1].tool_calls[1].id' is required."),
        ("messages[1].tool_calls[0].function.name", r => r.Messages.Add(Called(new ToolCall { Id = "c", Function = new FunctionCall { Name = " " } })), "'messages[1].tool_calls[0].function.name' is required."),
        ("messages[0].content[1].type", r => r.Messages[0].Content = new MessageContent([new ContentPart { Type = "text", Text = "a" }, new ContentPart()]), "'messages[0].content[1].type' is required (text, image_url, input_audio or file)."),
        ("messages[0].content[0].text", r => r.Messages[0].Content = new MessageContent([new ContentPart { Type = "text" }]), "'messages[0].content[0].text' is required for a text part."),
        ("messages[0].content[1].image_url.url", r => r.Messages[0].Content = new MessageContent([new ContentPart { Type = "text", Text = "a" }, new ContentPart { Type = "image_url" }]), "'messages[0].content[1].image_url.url' is required for an image part."),
    ];

    private static ToolCall Call(string id) => new() { Id = id, Function = new FunctionCall { Name = "f", Arguments = "{}" } };

    private static ChatCompletionMessage Called(params ToolCall[] calls) => new() { Role = ChatRoles.Assistant, ToolCalls = [.. calls] };

    /// <summary>What a refused tool call or content part says, word for word (the field named in it too).</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void A_refused_call_or_part_says_which_and_why(int index)
    {
        var (field, spoil, message) = CallsAndParts[index];
        var request = TestGateway.Request();
        spoil(request);

        var act = () => PipelineGateway.Pipeline.RequestValidator.Validate(request);

        var refused = act.Should().Throw<InvalidRequestException>().Which;
        (refused.Param, refused.Message).Should().Be((field, message));
    }

    private static JsonElement Json(string json) => JsonDocument.Parse(json).RootElement.Clone();

    /// <summary>
    /// What those checks let through: a forced call of a tool the request offers (a function by name, or — with a tool of
    /// another kind, as Claude's server tools are, which name themselves their own way — any name), <c>auto</c> without
    /// tools, and a reasoning effort the gateway does not know (new ones come; the upstream says which it takes).
    /// </summary>
    [Theory]
    [InlineData("""{"type":"function","function":{"name":"f"}}""", "function", null)]
    [InlineData("""{"type":"function","function":{"name":"web_search"}}""", "web_search_20250305", null)]
    [InlineData("\"auto\"", null, "\"xhigh\"")]
    public async Task A_tool_choice_the_tools_can_honour_and_an_unknown_reasoning_effort_pass(string choice, string? toolType, string? effort)
    {
        var a = new FakeProvider("a");
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);
        var request = TestGateway.Request();
        request.ToolChoice = Json(choice);
        if (toolType is not null)
        {
            request.Tools = [toolType == "function" ? new ToolDefinition { Function = new FunctionDefinition { Name = "f" } } : new ToolDefinition { Type = toolType }];
        }

        if (effort is not null)
        {
            request.AdditionalProperties = new() { ["reasoning_effort"] = Json(effort) };
        }

        await gateway.SubmitAsync(request, Ct);

        a.Calls.Should().Be(1);
    }

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task A_bad_request_fails_at_once_naming_the_field_and_takes_no_queue_room(string field, Action<ChatCompletionRequest> spoil)
    {
        var a = new FakeProvider("a");
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);
        var request = TestGateway.Request();
        spoil(request);

        var pending = gateway.SubmitAsync(request, Ct);

        pending.IsCompleted.Should().BeTrue();
        var act = async () => await pending;
        (await act.Should().ThrowAsync<InvalidRequestException>()).Which.Param.Should().Be(field);
        a.Calls.Should().Be(0);
        gateway.Metrics.GetSnapshot().Submitted.Should().Be(0);
    }

    [Fact]
    public async Task An_unknown_model_is_a_model_not_found_failure()
    {
        await using var gateway = await TestGateway.With(new FakeProvider("a")).StartAsync(Ct);

        var act = async () => await gateway.SubmitAsync(TestGateway.Request(model: "nope"), Ct);

        (await act.Should().ThrowAsync<ModelNotFoundException>()).Which.Model.Should().Be("nope");
    }

    [Fact]
    public async Task Aliases_resolve_to_their_group()
    {
        var a = new FakeProvider("a");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a)
            .Configure(o => o.Models.Add(new PipelineGateway.Routing.ModelGroupOptions
            {
                Name = "gpt-4o",
                Aliases = ["gpt-4"],
                Deployments = [new PipelineGateway.Routing.DeploymentOptions { Provider = "a", Model = "upstream-4o" }],
            }))
            .StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(model: "GPT-4"), Ct);

        response.Gateway!.ProviderModel.Should().Be("upstream-4o");
    }

    [Fact]
    public async Task A_wildcard_added_in_code_serves_the_names_it_matches_and_a_name_it_cannot_take_is_ModelNotFoundException()
    {
        var a = new FakeProvider("a");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(a)
            .AddModel("openai/*", m => m.Deploy("a").MaxModels(10))
            .StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(model: "OpenAI/gpt-4.1-nano"), Ct);

        response.Gateway!.ProviderModel.Should().Be("gpt-4.1-nano", "the part the '*' stands for, as the caller wrote it");
        a.Calls.Should().Be(1);
        foreach (var model in new[] { "openai/", "openai/a b", "other/gpt-4o", "openai/*" })
        {
            var act = async () => await gateway.SubmitAsync(TestGateway.Request(model: model), Ct);
            (await act.Should().ThrowAsync<ModelNotFoundException>()).Which.Model.Should().Be(model);
        }

        a.Calls.Should().Be(1);
    }

    public static TheoryData<string, Action<GatewayOptions>> BadConfigs => new()
    {
        { "Gateway:Pipeline:MaxInFlight", o => o.Pipeline.MaxInFlight = 0 },
        { "Gateway:Pipeline:DefaultTimeout", o => o.Pipeline.DefaultTimeout = TimeSpan.Zero },
        { "Gateway:Providers:1:Type 'Nonsense' is unknown", o => o.Providers.Add(new ProviderOptions { Name = "x", Type = "Nonsense" }) },
        { "Gateway:Providers:1:Workers", o => o.Providers.Add(new ProviderOptions { Name = "y", Workers = 0 }) },
        { "Gateway:Models:0:Strategy 'Fastest' is unknown", o => o.Models[0].Strategy = "Fastest" },
        { "Gateway:Models:0:Deployments:0:Provider 'ghost' is not a configured provider", o => o.Models[0].Deployments[0].Provider = "ghost" },
        { "Gateway:Models:1: the model name or alias 'm' is used more than once", o => o.Models.Add(new PipelineGateway.Routing.ModelGroupOptions { Name = "m", Deployments = [new PipelineGateway.Routing.DeploymentOptions { Provider = "a" }] }) },
        { "Gateway:Admission:RateLimits:0:Limit", o => o.Admission.RateLimits.Add(new PipelineGateway.Admission.RateLimitRule { Limit = 0 }) },
        { "Gateway:Budgets:0:User names an end user, which only a budget with Scope User is for", o => o.Budgets.Add(new PipelineGateway.Cost.BudgetOptions { Scope = PipelineGateway.Cost.BudgetScope.Key, User = "alice", LimitUsd = 1 }) },
        { "Gateway:Budgets:0:Key names a key, which a Global budget", o => o.Budgets.Add(new PipelineGateway.Cost.BudgetOptions { Key = "a", LimitUsd = 1 }) },
        { "Gateway:Models:0:Name 'open*ai': a '*' may only end a name", o => o.Models[0].Name = "open*ai" },
        { "Gateway:Models:1:Aliases: a wildcard group ('openai/*') has no aliases", o => o.Models.Add(Wildcard("openai/*", g => g.Aliases.Add("oa"))) },
        { "Gateway:Models:0:Aliases: 'm*' has a '*'", o => o.Models[0].Aliases.Add("m*") },
        { "Gateway:Models:0:MaxModels bounds the names a wildcard group takes", o => o.Models[0].MaxModels = 10 },
        { "Gateway:Models:1:MaxModels", o => o.Models.Add(Wildcard("openai/*", g => g.MaxModels = 0)) },
        { "Gateway:Models:0:Deployments:0:Model 'ft:*': a '*' stands for", o => o.Models[0].Deployments[0].Model = "ft:*" },
        { "Gateway:Models:1:Deployments:0:Model '*-*': a '*' stands for", o => o.Models.Add(Wildcard("openai/*", g => g.Deployments[0].Model = "*-*")) },
        { "Gateway:Models:0:Fallbacks names the wildcard 'openai/*'", o => { o.Models.Add(Wildcard("openai/*")); o.Models[0].Fallbacks.Add("openai/*"); } },
        { "Gateway:Models:0:Fallbacks names 'other/gpt-4o', which is not a model group or alias", o => { o.Models.Add(Wildcard("openai/*")); o.Models[0].Fallbacks.Add("other/gpt-4o"); } },
        { "Gateway:Budgets:0:MaxUsers", o => o.Budgets.Add(new PipelineGateway.Cost.BudgetOptions { Scope = PipelineGateway.Cost.BudgetScope.User, MaxUsers = 0, LimitUsd = 1 }) },
    };

    private static PipelineGateway.Routing.ModelGroupOptions Wildcard(string name, Action<PipelineGateway.Routing.ModelGroupOptions>? change = null)
    {
        var group = new PipelineGateway.Routing.ModelGroupOptions { Name = name, Deployments = [new PipelineGateway.Routing.DeploymentOptions { Provider = "a" }] };
        change?.Invoke(group);
        return group;
    }

    [Fact]
    public async Task A_fallback_may_name_a_model_a_wildcard_takes()
    {
        await using var gateway = await TestGateway.With(new FakeProvider("a"))
            .Configure(o =>
            {
                o.Models.Add(Wildcard("openai/*"));
                o.Models[0].Fallbacks.Add("openai/gpt-4o");
            })
            .StartAsync(Ct);

        gateway.Services.GetRequiredService<PipelineGateway.Routing.ModelCatalog>().Groups[0].Fallbacks.Should().ContainSingle()
            .Which.Name.Should().Be("openai/gpt-4o");
    }

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public async Task A_bad_configuration_stops_start_up_naming_the_setting(string expected, Action<GatewayOptions> spoil)
    {
        var builder = TestGateway.With(new FakeProvider("a")).Configure(spoil);

        var act = async () => await builder.StartAsync(Ct);

        (await act.Should().ThrowAsync<OptionsValidationException>()).Which.Failures.Should().Contain(f => f.Contains(expected));
    }
}
