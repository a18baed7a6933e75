#pragma warning disable OPENAI001 // the OpenAI SDK marks its Responses client as evaluation-only
using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using OpenAI;
using OpenAI.Responses;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/responses</c> (docs/server.md, "The Responses API") with the official OpenAI SDK's Responses client, whole
/// and streamed, a function call's round trip — through an OpenAI-compatible upstream and through Claude — and the
/// refusals (state the gateway does not keep, items and tools it has no form for) in OpenAI's error shape.
/// </summary>
public sealed class ResponsesApiTests : IAsyncLifetime
{
    private SimulatorFleet _fleet = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.GptAndClaudeAsync(Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private ResponsesClient Client() => new(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(_fleet.Base, "v1") });

    /// <summary>
    /// The response the SDK gets, whole or streamed — streamed, the one its last event carries (<c>response.completed</c>
    /// or <c>response.incomplete</c>), each update also handed to <paramref name="each"/>.
    /// </summary>
    private static async Task<ResponseResult> RespondAsync(ResponsesClient client, CreateResponseOptions options, bool stream, Action<StreamingResponseUpdate>? each = null)
    {
        if (!stream)
        {
            return (await client.CreateResponseAsync(options, Ct)).Value;
        }

        options.StreamingEnabled = true;
        ResponseResult? last = null;
        await foreach (var update in await client.CreateResponseStreamingAsync(options, Ct))
        {
            each?.Invoke(update);
            last = update switch
            {
                StreamingResponseCompletedUpdate completed => completed.Response,
                StreamingResponseIncompleteUpdate incomplete => incomplete.Response,
                _ => last,
            };
        }

        return last ?? throw new InvalidOperationException("The stream ended without its response.");
    }

    private static readonly BinaryData WeatherSchema = BinaryData.FromString("""{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}""");

    /// <summary>A turn of a Claude tool loop with thinking on (reasoning effort low), offering <c>get_weather</c>.</summary>
    private static CreateResponseOptions ThinkingTurn(params ResponseItem[] input)
    {
        var options = new CreateResponseOptions("claude", input)
        {
            ReasoningOptions = new ResponseReasoningOptions { ReasoningEffortLevel = ResponseReasoningEffortLevel.Low },
        };
        options.Tools.Add(ResponseTool.CreateFunctionTool("get_weather", WeatherSchema, false, "The weather in a city."));
        return options;
    }

    [Theory]
    [InlineData("gpt")]
    [InlineData("claude")]
    public async Task The_SDK_gets_a_whole_response_with_its_text_and_usage(string model)
    {
        var options = new CreateResponseOptions(model, [ResponseItem.CreateUserMessageItem("Tell me about gateways.")]) { Instructions = "Be brief.", MaxOutputTokenCount = 32 };

        var response = (await Client().CreateResponseAsync(options, Ct)).Value;

        response.Status.Should().Be(ResponseStatus.Completed);
        response.Id.Should().StartWith("resp_");
        response.GetOutputText().Should().NotBeNullOrWhiteSpace();
        response.OutputItems.Should().ContainSingle().Which.Should().BeAssignableTo<MessageResponseItem>();
        response.Usage.InputTokenCount.Should().BePositive();
        response.Usage.OutputTokenCount.Should().BePositive();
        response.Usage.TotalTokenCount.Should().Be(response.Usage.InputTokenCount + response.Usage.OutputTokenCount);
    }

    [Theory]
    [InlineData("gpt")]
    [InlineData("claude")]
    public async Task The_SDK_streams_a_response_and_its_deltas_make_the_completed_text(string model)
    {
        var options = new CreateResponseOptions(model, [ResponseItem.CreateUserMessageItem("Stream something.")]) { MaxOutputTokenCount = 32, StreamingEnabled = true };
        var text = new StringBuilder();
        ResponseResult? completed = null;
        var sequence = new List<int>();

        await foreach (var update in await Client().CreateResponseStreamingAsync(options, Ct))
        {
            sequence.Add(update.SequenceNumber);
            switch (update)
            {
                case StreamingResponseOutputTextDeltaUpdate delta:
                    text.Append(delta.Delta);
                    break;
                case StreamingResponseCompletedUpdate done:
                    completed = done.Response;
                    break;
            }
        }

        text.Length.Should().BePositive();
        completed.Should().NotBeNull();
        completed!.GetOutputText().Should().Be(text.ToString());
        completed.Usage.OutputTokenCount.Should().BePositive();
        sequence.Should().Equal(Enumerable.Range(0, sequence.Count), "every event is numbered in order");
    }

    [Theory]
    [InlineData("gpt", false)]
    [InlineData("claude", false)]
    [InlineData("claude", true)]
    public async Task A_function_call_and_its_output_make_a_round_trip(string model, bool stream)
    {
        var client = Client();
        var tools = new[] { ResponseTool.CreateFunctionTool("get_weather", WeatherSchema, false, "The weather in a city.") };
        var first = new CreateResponseOptions(model, [ResponseItem.CreateUserMessageItem("Weather in Oslo?")]) { ToolChoice = ResponseToolChoice.CreateRequiredChoice() };
        foreach (var tool in tools)
        {
            first.Tools.Add(tool);
        }

        var call = (await RespondAsync(client, first, stream)).OutputItems.OfType<FunctionCallResponseItem>().Single();

        call.FunctionName.Should().Be("get_weather");
        JsonDocument.Parse(call.FunctionArguments.ToString()).RootElement.GetProperty("city").ValueKind.Should().Be(JsonValueKind.String);

        var second = new CreateResponseOptions(model, [ResponseItem.CreateUserMessageItem("Weather in Oslo?"), ResponseItem.CreateFunctionCallItem(call.CallId, call.FunctionName, call.FunctionArguments), ResponseItem.CreateFunctionCallOutputItem(call.CallId, "Sunny, 21 °C")]);
        foreach (var tool in tools)
        {
            second.Tools.Add(tool);
        }

        var answer = (await client.CreateResponseAsync(second, Ct)).Value;
        answer.GetOutputText().Should().NotBeNullOrWhiteSpace("the model answers after the tool's output");
    }

    /// <summary>
    /// Claude thinking in a tool loop through the Responses API: its thinking comes out as a reasoning item (the summary is
    /// the thinking text, <c>encrypted_content</c> the signed blocks) before the function call, whole and streamed
    /// (<c>response.reasoning_summary_text.delta</c>s); the SDK gives its output items back with the call's output, and
    /// Claude gets its thinking back — it refuses a tool loop's next turn without it (the simulator too), which is what
    /// the route did when it left reasoning items out.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Claudes_thinking_in_a_tool_loop_goes_out_as_a_reasoning_item_and_comes_back(bool stream)
    {
        var client = Client();
        var first = ThinkingTurn(ResponseItem.CreateUserMessageItem("Use get_weather for Oslo."));

        var summaryDeltas = new StringBuilder();
        var answer = await RespondAsync(client, first, stream, update => summaryDeltas.Append((update as StreamingResponseReasoningSummaryTextDeltaUpdate)?.Delta));

        answer.OutputItems.Select(i => i.GetType().Name).Should().Equal(nameof(ReasoningResponseItem), nameof(FunctionCallResponseItem));
        var reasoning = (ReasoningResponseItem)answer.OutputItems[0];
        var thought = reasoning.SummaryParts.OfType<ReasoningSummaryTextPart>().Single().Text;
        thought.Should().StartWith("Considering:", "the simulator's thinking, whole");
        if (stream)
        {
            summaryDeltas.ToString().Should().Be(thought, "the summary streamed piece by piece");
        }

        var call = (FunctionCallResponseItem)answer.OutputItems[1];
        var second = ThinkingTurn([ResponseItem.CreateUserMessageItem("Use get_weather for Oslo."), .. answer.OutputItems, ResponseItem.CreateFunctionCallOutputItem(call.CallId, "Sunny, 21 °C")]);

        var next = (await client.CreateResponseAsync(second, Ct)).Value;
        next.GetOutputText().Should().NotBeNullOrWhiteSpace("Claude answers after the tool's output, its thinking given back");
    }

    /// <summary>
    /// A stored response (OpenAI's default, <c>store</c> absent) is continued with <c>previous_response_id</c> alone: the
    /// next turn sends only the tool's output, and Claude — which refuses a tool loop's next turn without its thinking
    /// (the simulator too) — answers, so the earlier items, its signed thinking among them, reached it. The response
    /// reads back by id, its input items too, and once deleted neither it nor a continuation of it is found.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_stored_response_is_continued_by_its_id_read_back_and_deleted(bool stream)
    {
        var client = Client();
        var first = ThinkingTurn(ResponseItem.CreateUserMessageItem("Use get_weather for Oslo."));
        first.Instructions = "Be brief.";
        var answer = await RespondAsync(client, first, stream);
        answer.OutputItems.Select(i => i.GetType().Name).Should().Equal(nameof(ReasoningResponseItem), nameof(FunctionCallResponseItem));
        var call = (FunctionCallResponseItem)answer.OutputItems[1];

        var read = (await client.GetResponseAsync(answer.Id, Ct)).Value;
        read.Id.Should().Be(answer.Id);
        read.OutputItems.Select(i => i.Id).Should().Equal(answer.OutputItems.Select(i => i.Id));

        var second = ThinkingTurn(ResponseItem.CreateFunctionCallOutputItem(call.CallId, "Sunny, 21 °C"));
        second.PreviousResponseId = answer.Id;
        var next = await RespondAsync(client, second, stream);
        next.GetOutputText().Should().NotBeNullOrWhiteSpace("Claude answers after the tool's output, its thinking carried from the stored response");
        next.PreviousResponseId.Should().Be(answer.Id);
        var alone = ThinkingTurn(ResponseItem.CreateFunctionCallOutputItem(call.CallId, "Sunny, 21 °C"));
        alone.StoredOutputEnabled = false;
        next.Usage.InputTokenCount.Should().BeGreaterThan((await client.CreateResponseAsync(alone, Ct)).Value.Usage.InputTokenCount + 10, "the earlier turns were sent before the tool's output");

        using var http = new HttpClient();
        var items = JsonNode.Parse(await http.GetStringAsync(new Uri(_fleet.Base, $"v1/responses/{answer.Id}/input_items"), Ct))!;
        items["data"]!.AsArray().Select(i => i!["role"]!.GetValue<string>()).Should().Equal("user");
        items["has_more"]!.GetValue<bool>().Should().BeFalse();

        (await client.DeleteResponseAsync(answer.Id, Ct)).Value.Deleted.Should().BeTrue();
        var gone = async () => await client.GetResponseAsync(answer.Id, Ct);
        (await gone.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(404);
        second.StreamingEnabled = null;
        var continued = async () => await client.CreateResponseAsync(second, Ct);
        var refused = (await continued.Should().ThrowAsync<ClientResultException>()).Which;
        refused.Status.Should().Be(400);
        JsonNode.Parse(refused.GetRawResponse()!.Content.ToString())!["error"]!["code"]!.GetValue<string>().Should().Be("previous_response_not_found");
    }

    /// <summary>
    /// A stored response's input items are listed as OpenAI lists them: each with an id (kept across reads), a message
    /// with its type and its text as a content list, the newest first by default, 20 a page, <c>after</c>/<c>before</c>
    /// cursors by item id — the OpenAI .NET SDK's paging reads them all, in either order.
    /// </summary>
    [Fact]
    public async Task Input_items_are_listed_with_ids_newest_first_and_paged_as_OpenAI_pages_them()
    {
        var client = Client();
        var input = Enumerable.Range(0, 25).Select(i => i % 2 == 0 ? ResponseItem.CreateUserMessageItem($"question {i}") : ResponseItem.CreateAssistantMessageItem($"answer {i}")).ToList();
        var answer = (await client.CreateResponseAsync(new CreateResponseOptions("gpt", input) { MaxOutputTokenCount = 16 }, Ct)).Value;

        var newestFirst = new List<ResponseItem>();
        await foreach (var item in client.GetResponseInputItemsAsync(new ResponseItemCollectionOptions(answer.Id) { PageSizeLimit = 7 }, Ct))
        {
            newestFirst.Add(item);
        }

        newestFirst.Should().HaveCount(25, "the SDK pages with after=last_id until has_more is false");
        newestFirst.Select(i => ((MessageResponseItem)i).Content[0].Text).Should().Equal(Enumerable.Range(0, 25).Reverse().Select(i => i % 2 == 0 ? $"question {i}" : $"answer {i}"));
        newestFirst.Select(i => i.Id).Should().OnlyHaveUniqueItems().And.OnlyContain(id => id.StartsWith("msg_", StringComparison.Ordinal));

        var oldestFirst = new List<ResponseItem>();
        await foreach (var item in client.GetResponseInputItemsAsync(new ResponseItemCollectionOptions(answer.Id) { Order = ResponseItemCollectionOrder.Ascending }, Ct))
        {
            oldestFirst.Add(item);
        }

        oldestFirst.Select(i => i.Id).Should().Equal(newestFirst.Select(i => i.Id).Reverse(), "the same ids on every read, the other way round");

        using var http = new HttpClient { BaseAddress = _fleet.Base };
        var page = JsonNode.Parse(await http.GetStringAsync($"v1/responses/{answer.Id}/input_items", Ct))!;
        page["data"]!.AsArray().Should().HaveCount(20, "20 a page by default");
        page["has_more"]!.GetValue<bool>().Should().BeTrue();
        page["first_id"]!.GetValue<string>().Should().Be(newestFirst[0].Id);
        page["last_id"]!.GetValue<string>().Should().Be(newestFirst[19].Id);
        var first = page["data"]![0]!;
        (first["type"]!.GetValue<string>(), first["role"]!.GetValue<string>(), first["content"]![0]!["type"]!.GetValue<string>()).Should().Be(("message", "user", "input_text"));
        page["data"]![1]!["content"]![0]!["type"]!.GetValue<string>().Should().Be("output_text", "the assistant's text is output text");
        var before = JsonNode.Parse(await http.GetStringAsync($"v1/responses/{answer.Id}/input_items?before={newestFirst[3].Id}&limit=2", Ct))!;
        before["data"]!.AsArray().Select(i => i!["id"]!.GetValue<string>()).Should().Equal(newestFirst[0].Id, newestFirst[1].Id);
        before["has_more"]!.GetValue<bool>().Should().BeTrue("one more before the cursor");

        foreach (var bad in new[] { "limit=0", "limit=101", "limit=x", "order=up", "after=msg_nothing" })
        {
            using var refused = await http.GetAsync($"v1/responses/{answer.Id}/input_items?{bad}", Ct);
            refused.StatusCode.Should().Be(HttpStatusCode.BadRequest, bad);
            JsonNode.Parse(await refused.Content.ReadAsStringAsync(Ct))!["error"]!["param"]!.GetValue<string>().Should().Be(bad.Split('=')[0]);
        }
    }

    /// <summary>
    /// The Vercel AI SDK (its default OpenAI provider speaks the Responses API, <c>store</c> on) gives earlier turns back
    /// as <c>item_reference</c>s — a reasoning item always, an answer's message too: each stands for the stored item,
    /// so Claude gets its thinking back; an answer asked with <c>store: false</c> is not kept, and a reference to it is
    /// a 400 naming it.
    /// </summary>
    [Fact]
    public async Task Item_references_stand_for_the_stored_items_and_one_to_nothing_stored_is_a_400_naming_it()
    {
        using var http = new HttpClient();
        async Task<(HttpStatusCode Status, JsonNode Body)> Post(string body)
        {
            using var response = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent(body, Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!);
        }

        var tools = """ "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}],"reasoning":{"effort":"low"} """.Trim();
        var (status, first) = await Post($$"""{"model":"claude","input":"Use get_weather for Oslo.",{{tools}}}""");
        status.Should().Be(HttpStatusCode.OK, first.ToJsonString());
        first["store"]!.GetValue<bool>().Should().BeTrue();
        var output = first["output"]!.AsArray();
        var reasoningId = output[0]!["id"]!.GetValue<string>();
        var call = output[1]!;

        var next = $$"""{"model":"claude","input":[{"role":"user","content":"Use get_weather for Oslo."},{"type":"item_reference","id":"{{reasoningId}}"},{{call.ToJsonString()}},{"type":"function_call_output","call_id":"{{call["call_id"]!.GetValue<string>()}}","output":"Sunny"}],{{tools}}}""";
        (status, var answer) = await Post(next);
        status.Should().Be(HttpStatusCode.OK, "the reference stood for the reasoning item, Claude's thinking with it: " + answer.ToJsonString());

        // The same references with their names spelt in JSON escapes are the same references.
        (status, var escaped) = await Post($$"""{"model":"claude","previous\u005fresponse_id":"{{first["id"]!.GetValue<string>()}}","input":[{"type":"function_call_output","call_id":"{{call["call_id"]!.GetValue<string>()}}","output":"Sunny"}],{{tools}}}""");
        status.Should().Be(HttpStatusCode.OK, escaped.ToJsonString());
        (status, escaped) = await Post($$"""{"model":"claude","input":[{"role":"user","content":"Use get_weather for Oslo."},{"type":"item\u005freference","id":"{{reasoningId}}"},{{call.ToJsonString()}},{"type":"function_call_output","call_id":"{{call["call_id"]!.GetValue<string>()}}","output":"Sunny"}],{{tools}}}""");
        status.Should().Be(HttpStatusCode.OK, escaped.ToJsonString());

        var messageId = answer["output"]!.AsArray().Single(i => i!["type"]!.GetValue<string>() == "message")!["id"]!.GetValue<string>();
        (status, answer) = await Post($$"""{"model":"gpt","input":[{"role":"user","content":"Hi"},{"type":"item_reference","id":"{{messageId}}"},{"role":"user","content":"More"}]}""");
        status.Should().Be(HttpStatusCode.OK, answer.ToJsonString());

        (status, var unstored) = await Post($$"""{"model":"claude","store":false,"input":"Use get_weather for Oslo.",{{tools}}}""");
        status.Should().Be(HttpStatusCode.OK);
        unstored["store"]!.GetValue<bool>().Should().BeFalse();
        var unstoredId = unstored["output"]![0]!["id"]!.GetValue<string>();
        (status, var refused) = await Post($$"""{"model":"claude","input":[{"role":"user","content":"Use get_weather for Oslo."},{"type":"item_reference","id":"{{unstoredId}}"}],{{tools}}}""");
        status.Should().Be(HttpStatusCode.BadRequest);
        refused["error"]!["param"]!.GetValue<string>().Should().Be("input[1].id");
        refused["error"]!["code"]!.GetValue<string>().Should().Be("item_not_found");
    }

    /// <summary>
    /// An answer is kept before its last event (or its body) goes out: a caller that continues it the moment it reads
    /// <c>response.completed</c> — on another instance, with a shared store — finds it. A shared store whose write is
    /// held (an <c>IDistributedCache</c> of the test's, as Redis is one) holds the last event back until it is done.
    /// (The check that it is not out yet is made the moment the write starts: a build that did not wait fails it
    /// most of the time, not always.)
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task An_answer_is_kept_before_its_last_event_or_its_body_goes_out(bool stream)
    {
        var store = new HeldCache();
        await using var fleet = await SimulatorFleet.GptAndClaudeAsync(Ct, services => services.AddKeyedSingleton<Microsoft.Extensions.Caching.Distributed.IDistributedCache>(PipelineGateway.Redis.RedisOptions.StoredResponsesServiceKey, store));
        var completed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = Task.Run(async () =>
        {
            using var http = new HttpClient();
            using var response = await http.PostAsync(new Uri(fleet.Base, "v1/responses"), new StringContent($$"""{"model":"gpt","input":"Hello","stream":{{(stream ? "true" : "false")}}}""", Encoding.UTF8, "application/json"), Ct);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
            if (!stream || await ReadUntil(reader, "event: response.completed"))
            {
                completed.SetResult();
            }
        }, Ct);

        await store.Writing.Task.WaitAsync(Ct); // the answer is being kept…
        completed.Task.IsCompleted.Should().BeFalse("…and its last event, or its body, waits for it");
        store.Release.SetResult();
        await client;
        completed.Task.IsCompleted.Should().BeTrue();
        store.Keys.Should().Contain(k => k.StartsWith("r:", StringComparison.Ordinal), "the response was kept");
    }

    private static async Task<bool> ReadUntil(StreamReader reader, string wanted)
    {
        string? line;
        while ((line = await reader.ReadLineAsync(Ct)) is not null)
        {
            if (line == wanted)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>A distributed cache whose writes wait for the test: the first write signals <see cref="Writing"/>.</summary>
    private sealed class HeldCache : Microsoft.Extensions.Caching.Distributed.IDistributedCache
    {
        private readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte[]> _entries = new();

        public TaskCompletionSource Writing { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ICollection<string> Keys => _entries.Keys;

        public byte[]? Get(string key) => _entries.TryGetValue(key, out var v) ? v : null;

        public Task<byte[]?> GetAsync(string key, CancellationToken token = default) => Task.FromResult(Get(key));

        public void Refresh(string key)
        {
        }

        public Task RefreshAsync(string key, CancellationToken token = default) => Task.CompletedTask;

        public void Remove(string key) => _entries.TryRemove(key, out _);

        public Task RemoveAsync(string key, CancellationToken token = default)
        {
            Remove(key);
            return Task.CompletedTask;
        }

        public void Set(string key, byte[] value, Microsoft.Extensions.Caching.Distributed.DistributedCacheEntryOptions options) => _entries[key] = value;

        public async Task SetAsync(string key, byte[] value, Microsoft.Extensions.Caching.Distributed.DistributedCacheEntryOptions options, CancellationToken token = default)
        {
            Writing.TrySetResult();
            await Release.Task;
            Set(key, value, options);
        }
    }

    /// <summary>
    /// <c>POST /v1/responses/input_tokens</c> counts what a response's input would be — with the conversation a
    /// <c>previous_response_id</c> brings — by the gateway's tokenizer, sending nothing upstream; an unknown model is a 404.
    /// </summary>
    [Fact]
    public async Task Input_tokens_are_counted_with_the_stored_conversation_and_nothing_is_sent()
    {
        using var http = new HttpClient();
        async Task<(HttpStatusCode Status, JsonNode Body, string? Source)> Post(string path, string body)
        {
            using var response = await http.PostAsync(new Uri(_fleet.Base, path), new StringContent(body, Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!, response.Headers.TryGetValues("x-gateway-token-count", out var v) ? v.Single() : null);
        }

        var (_, first, _) = await Post("v1/responses", """{"model":"gpt","input":"Tell me about gateways, at length, with examples."}""");
        var before = _fleet.Sims["sim"].Requests;

        var (status, alone, source) = await Post("v1/responses/input_tokens", """{"model":"gpt","input":"And more?"}""");
        status.Should().Be(HttpStatusCode.OK, alone.ToJsonString());
        alone["object"]!.GetValue<string>().Should().Be("response.input_tokens");
        source.Should().Be("tokenizer");
        (status, var continued, _) = await Post("v1/responses/input_tokens", $$"""{"model":"gpt","input":"And more?","previous_response_id":"{{first["id"]!.GetValue<string>()}}"}""");
        status.Should().Be(HttpStatusCode.OK);
        continued["input_tokens"]!.GetValue<int>().Should().BeGreaterThan(alone["input_tokens"]!.GetValue<int>() + 10, "the stored conversation counts");
        _fleet.Sims["sim"].Requests.Should().Be(before, "counting sends nothing upstream");

        (status, var missing, _) = await Post("v1/responses/input_tokens", """{"model":"nope","input":"hi"}""");
        status.Should().Be(HttpStatusCode.NotFound);
        missing["error"]!["code"]!.GetValue<string>().Should().Be("model_not_found");
    }

    /// <summary>
    /// Log probabilities on the Responses API (<c>include</c> <c>message.output_text.logprobs</c>, <c>top_logprobs</c>): the
    /// answer's text part carries one entry per token, whole and streamed (each delta its own tokens'); a deployment that
    /// cannot give them (Claude) refuses the request, as on the chat route. They were left out (and <c>top_logprobs</c> a 400).
    /// </summary>
    [Fact]
    public async Task Log_probabilities_come_with_the_text_whole_and_streamed()
    {
        using var http = new HttpClient();
        async Task<(HttpStatusCode Status, string Body)> Post(string body)
        {
            using var response = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent(body, Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
        }

        var (status, text) = await Post("""{"model":"gpt","input":"Tell me about logs.","include":["message.output_text.logprobs"],"top_logprobs":2}""");
        status.Should().Be(HttpStatusCode.OK, text);
        var part = JsonNode.Parse(text)!["output"]![0]!["content"]![0]!;
        var entries = part["logprobs"]!.AsArray();
        entries.Should().NotBeEmpty();
        string.Concat(entries.Select(e => e!["token"]!.GetValue<string>())).Should().Be(part["text"]!.GetValue<string>());
        entries.Should().AllSatisfy(e => e!["top_logprobs"]!.AsArray().Should().HaveCount(2));

        (status, text) = await Post("""{"model":"gpt","input":"Tell me about streams.","stream":true,"top_logprobs":1}""");
        status.Should().Be(HttpStatusCode.OK);
        var events = text.Split('\n').Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => JsonNode.Parse(l[6..])!).ToList();
        var deltas = events.Where(e => e["type"]!.GetValue<string>() == "response.output_text.delta").ToList();
        string.Concat(deltas.SelectMany(d => d["logprobs"]!.AsArray()).Select(e => e!["token"]!.GetValue<string>()))
            .Should().Be(string.Concat(deltas.Select(d => d["delta"]!.GetValue<string>())), "each delta carries its own tokens");
        var completed = events.Single(e => e["type"]!.GetValue<string>() == "response.completed")["response"]!["output"]![0]!["content"]![0]!;
        completed["logprobs"]!.AsArray().Should().HaveCount(deltas.Sum(d => d["logprobs"]!.AsArray().Count));

        (status, text) = await Post("""{"model":"claude","input":"hi","top_logprobs":2}""");
        status.Should().Be(HttpStatusCode.BadRequest, "Claude gives no log probabilities: " + text);
        (status, _) = await Post("""{"model":"gpt","input":"hi","top_logprobs":21}""");
        status.Should().Be(HttpStatusCode.BadRequest);
    }

    [Fact]
    public async Task A_reasoning_item_that_claims_to_be_the_gateways_but_cannot_be_read_is_a_400_naming_it()
    {
        using var http = new HttpClient();
        var body = """{"model":"claude","input":[{"role":"user","content":"hi"},{"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"pgw1.@@not-base64@@"}]}""";
        using var refused = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent(body, Encoding.UTF8, "application/json"), Ct);

        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        JsonNode.Parse(await refused.Content.ReadAsStringAsync(Ct))!["error"]!["param"]!.GetValue<string>().Should().Be("input[1].encrypted_content");
    }

    /// <summary>An answer cut at <c>max_output_tokens</c> is <c>incomplete</c> with its reason, whole and streamed, through either upstream format.</summary>
    [Theory]
    [InlineData("gpt", false)]
    [InlineData("gpt", true)]
    [InlineData("claude", false)]
    [InlineData("claude", true)]
    public async Task An_answer_cut_at_max_output_tokens_is_incomplete_with_its_reason(string model, bool stream)
    {
        var client = Client();
        var options = new CreateResponseOptions(model, [ResponseItem.CreateUserMessageItem("Tell me everything.")]) { MaxOutputTokenCount = 3 };

        var result = await RespondAsync(client, options, stream);

        result.Status.Should().Be(ResponseStatus.Incomplete);
        result.IncompleteStatusDetails.Reason.Should().Be(ResponseIncompleteStatusReason.MaxOutputTokens);
        result.GetOutputText().Split(' ').Should().HaveCount(3, "the three words the limit allowed");
    }

    public static TheoryData<string, string> Refused => new()
    {
        { """{"model":"gpt","input":"hi","previous_response_id":"resp_123"}""", "previous_response_id" },
        { """{"model":"gpt","input":[{"type":"item_reference","id":"msg_1"}]}""", "input[0].id" },
        { """{"model":"gpt","input":"hi","conversation":"conv_1"}""", "conversation" },
        { """{"model":"gpt","input":"hi","tools":[{"type":"web_search"}]}""", "tools[0].type" },
        { """{"model":"gpt","input":"hi","tools":[{"type":"function","name":"f","parameters":"{}"}]}""", "tools[0].parameters" },
        { """{"model":"gpt","input":"hi","tools":[{"type":"function","name":"f","parameters":{}}],"tool_choice":{"type":"function","name":"g"}}""", "tool_choice" },
        { """{"model":"gpt","input":"hi","tool_choice":"required"}""", "tool_choice" },
        { """{"model":"gpt","input":"hi","reasoning":{"effort":3}}""", "reasoning.effort" },
        { """{"model":"gpt","input":"hi","reasoning":"high"}""", "reasoning" },
        { """{"model":"gpt","input":[{"role":"user","content":[{"type":"input_file","file_id":"file-1"}]}]}""", "input[0].content[0].type" },
        { """{"model":"gpt","input":[{"role":"pirate","content":"arr"}]}""", "input[0].role" },
        { """{"model":"gpt"}""", "input" },
        { """{"model":"gpt","input":"hi","temperature":3}""", "temperature" },
        { """{"model":"gpt","input":"hi","surprise":1}""", "surprise" },
        { """{"model":"gpt","input":"hi","text":{"format":{"type":"xml"}}}""", "text.format.type" },
        { """{"model":"gpt","input":[{"type":"function_call_output","call_id":"c1"}]}""", "input[0].output" },
        { """{"model":"gpt","input":[{"type":"function_call_output","call_id":"c1","output":[{"type":"input_image","image_url":"https://e.x/a.png"}]}]}""", "input[0].output[0].type" },
    };

    [Theory]
    [MemberData(nameof(Refused))]
    public async Task What_the_gateway_cannot_carry_is_a_400_naming_the_field_and_nothing_is_sent(string body, string param)
    {
        var before = _fleet.Sims["sim"].Requests;
        using var http = new HttpClient();
        using var response = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);

        response.StatusCode.Should().Be(HttpStatusCode.BadRequest, text);
        var error = JsonNode.Parse(text)!["error"]!;
        error["type"]!.GetValue<string>().Should().Be("invalid_request_error");
        error["param"]!.GetValue<string>().Should().Be(param);
        _fleet.Sims["sim"].Requests.Should().Be(before);
    }

    [Theory]
    [InlineData("{\"model\":\"gpt\",\"input\":\"hi\",\"input\":\"again\"}")]
    [InlineData("{\"model\":\"gpt\",\"input\":")]
    [InlineData("[1,2]")]
    public async Task A_malformed_body_is_a_400_in_OpenAIs_shape(string body)
    {
        using var http = new HttpClient();
        using var response = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent(body, Encoding.UTF8, "application/json"), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!["error"]!["type"]!.GetValue<string>().Should().Be("invalid_request_error");
    }

    [Fact]
    public async Task A_reasoning_item_given_back_is_left_out_a_text_parts_output_is_read_and_an_unknown_model_is_a_404()
    {
        using var http = new HttpClient();
        var body = """{"model":"gpt","store":false,"input":[{"role":"user","content":"hi"},{"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"gAAAA"},{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":[{"type":"input_text","text":"4"},{"type":"input_text","text":"2"}]},{"role":"assistant","content":[{"type":"output_text","text":"Hello."}]},{"role":"user","content":[{"type":"input_text","text":"again"}]}]}""";
        using var ok = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        ok.StatusCode.Should().Be(HttpStatusCode.OK, await ok.Content.ReadAsStringAsync(Ct));

        using var missing = await http.PostAsync(new Uri(_fleet.Base, "v1/responses"), new StringContent("""{"model":"nope","input":"hi"}""", Encoding.UTF8, "application/json"), Ct);
        missing.StatusCode.Should().Be(HttpStatusCode.NotFound);
        JsonNode.Parse(await missing.Content.ReadAsStringAsync(Ct))!["error"]!["code"]!.GetValue<string>().Should().Be("model_not_found");
    }
}
