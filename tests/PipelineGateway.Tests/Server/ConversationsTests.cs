#pragma warning disable OPENAI001 // the OpenAI SDK marks its Responses and Conversations clients as evaluation-only
using System.ClientModel;
using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenAI.Conversations;
using OpenAI.Responses;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// The Conversations API (docs/server.md, "Conversations") through the official OpenAI .NET SDK: a conversation made
/// with items, responses that go on it (the upstream gets its items before each turn's input; each turn is added to it,
/// whole and streamed), its items listed, paged, added, read and deleted, its metadata changed, and the refusals.
/// </summary>
public sealed class ConversationsTests : IAsyncLifetime
{
    private readonly ConcurrentQueue<List<ChatCompletionMessage>> _seen = new();
    private WebApplication _app = null!;
    private Uri _root = null!;
    private int _turn;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        var provider = new FakeProvider("p")
        {
            OnComplete = (request, _) =>
            {
                _seen.Enqueue([.. request.Request.Messages]);
                return ValueTask.FromResult(FakeProvider.Answer("m", $"Answer {Interlocked.Increment(ref _turn)}"));
            },
        };
        provider.OnStream = (request, token) => Stream(request, token);
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Gateway:Server:BatchDirectory"] = string.Empty }).Build();
        _app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddPipelineGateway().AddProvider(provider).AddModel("m", m => m.Deploy(provider.Name)));
        _root = await GatewayServer.StartAsync(_app, Ct);

        async IAsyncEnumerable<ChatCompletionChunk> Stream(PipelineGateway.Providers.ProviderRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken token)
        {
            _seen.Enqueue([.. request.Request.Messages]);
            var n = Interlocked.Increment(ref _turn);
            yield return FakeProvider.Chunk("m", "Answer ");
            await Task.Yield();
            yield return FakeProvider.Chunk("m", n.ToString(System.Globalization.CultureInfo.InvariantCulture), "stop");
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private ConversationClient Conversations() => new(new ApiKeyCredential("sk-unused"), new ConversationClientOptions { Endpoint = new Uri(_root, "v1") });

    private ResponsesClient Responses() => new(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(_root, "v1") });

    private static JsonNode Json(ClientResult result) => JsonNode.Parse(result.GetRawResponse().Content.ToString())!;

    private static BinaryContent Body(string json) => BinaryContent.Create(BinaryData.FromString(json));

    /// <summary>Every item of a conversation, oldest first, read a page of <paramref name="limit"/> at a time by the SDK.</summary>
    private async Task<List<JsonNode>> ItemsAsync(string id, int limit = 2)
    {
        var all = new List<JsonNode>();
        await foreach (var page in Conversations().GetConversationItemsAsync(id, limit, "asc", null, null, null).GetRawPagesAsync())
        {
            all.AddRange(JsonNode.Parse(page.GetRawResponse().Content.ToString())!["data"]!.AsArray().Select(static i => i!.DeepClone()));
        }

        return all;
    }

    [Fact]
    public async Task Responses_on_a_conversation_get_its_items_before_their_input_and_add_each_turn_to_it()
    {
        var conversations = Conversations();
        var made = Json(await conversations.CreateConversationAsync(Body("""{"metadata":{"topic":"names"},"items":[{"type":"message","role":"system","content":"Be brief."}]}"""), null));
        var id = made["id"]!.GetValue<string>();
        id.Should().StartWith("conv_");
        made["object"]!.GetValue<string>().Should().Be("conversation");
        made["metadata"]!["topic"]!.GetValue<string>().Should().Be("names");

        var responses = Responses();
        var first = (await responses.CreateResponseAsync(new CreateResponseOptions("m", [ResponseItem.CreateUserMessageItem("My name is Ada.")]) { ConversationOptions = new ResponseConversationOptions(id) }, Ct)).Value;
        first.GetOutputText().Should().Be("Answer 1");
        first.ConversationOptions.ConversationId.Should().Be(id);

        // The second turn, streamed: the upstream gets the system item, the first turn and then this input.
        var second = new CreateResponseOptions("m", [ResponseItem.CreateUserMessageItem("What is my name?")]) { ConversationOptions = new ResponseConversationOptions(id), StreamingEnabled = true };
        await foreach (var _ in await responses.CreateResponseStreamingAsync(second, Ct))
        {
        }

        var sent = _seen.Last();
        sent.Select(static m => (m.Role, m.Content?.GetText())).Should().Equal(
            ("system", "Be brief."), ("user", "My name is Ada."), ("assistant", "Answer 1"), ("user", "What is my name?"));

        var items = await ItemsAsync(id);
        items.Select(static i => (i["role"]!.GetValue<string>(), i["content"]![0]!["text"]!.GetValue<string>())).Should().Equal(
            ("system", "Be brief."), ("user", "My name is Ada."), ("assistant", "Answer 1"), ("user", "What is my name?"), ("assistant", "Answer 2"));
        items.Select(static i => i["id"]!.GetValue<string>()).Should().OnlyHaveUniqueItems().And.AllSatisfy(static i => i.Should().StartWith("msg_"));
        items[2]["content"]![0]!["type"]!.GetValue<string>().Should().Be("output_text");
    }

    [Fact]
    public async Task A_conversations_items_are_added_read_paged_and_deleted_and_its_metadata_changed()
    {
        var conversations = Conversations();
        var id = Json(await conversations.CreateConversationAsync(Body("{}"), null))["id"]!.GetValue<string>();
        (await ItemsAsync(id)).Should().BeEmpty();

        var added = Json(await conversations.CreateConversationItemsAsync(id, Body("""{"items":[{"type":"message","role":"user","content":[{"type":"input_text","text":"one"}]},{"role":"assistant","content":"two"},{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"42"}]}"""), null, null));
        added["object"]!.GetValue<string>().Should().Be("list");
        var ids = added["data"]!.AsArray().Select(static i => i!["id"]!.GetValue<string>()).ToList();
        ids.Should().HaveCount(4).And.OnlyHaveUniqueItems();
        (await ItemsAsync(id, limit: 3)).Select(static i => i["id"]!.GetValue<string>()).Should().Equal(ids, "paged, oldest first");

        var newestFirst = Json(await conversations.GetConversationItemsAsync(id, 2, null, null, null, null).GetRawPagesAsync().FirstAsync(Ct));
        newestFirst["data"]!.AsArray().Select(static i => i!["id"]!.GetValue<string>()).Should().Equal(ids[3], ids[2]);
        newestFirst["has_more"]!.GetValue<bool>().Should().BeTrue();

        Json(await conversations.GetConversationItemAsync(id, ids[1], null, null))["content"]![0]!["text"]!.GetValue<string>().Should().Be("two");
        Json(await conversations.DeleteConversationItemAsync(id, ids[1], null))["id"]!.GetValue<string>().Should().Be(id);
        (await ItemsAsync(id)).Select(static i => i["id"]!.GetValue<string>()).Should().Equal(ids[0], ids[2], ids[3]);

        Json(await conversations.UpdateConversationAsync(id, Body("""{"metadata":{"stage":"2"}}"""), null))["metadata"]!["stage"]!.GetValue<string>().Should().Be("2");
        Json(await conversations.GetConversationAsync(id, null))["metadata"]!["stage"]!.GetValue<string>().Should().Be("2");

        Json(await conversations.DeleteConversationAsync(id, null))["deleted"]!.GetValue<bool>().Should().BeTrue();
        var gone = async () => await conversations.GetConversationAsync(id, null);
        (await gone.Should().ThrowAsync<ClientResultException>()).Which.Status.Should().Be(404);
    }

    [Fact]
    public async Task A_conversation_past_what_the_instance_keeps_in_memory_is_refused_naming_the_setting_and_stays_as_it_was()
    {
        var provider = new FakeProvider("p");
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Server:BatchDirectory"] = string.Empty,
            ["Gateway:Server:StoredResponsesMaxBytes"] = "20000",
        }).Build();
        using var logs = new CapturingLoggerProvider();
        var app = GatewayServer.Build(config, "http://127.0.0.1:0", l => l.AddProvider(logs), s => s.AddPipelineGateway().AddProvider(provider).AddModel("m", m => m.Deploy(provider.Name)));
        var root = await GatewayServer.StartAsync(app, Ct);
        try
        {
            using var http = new HttpClient { BaseAddress = root };
            var id = JsonNode.Parse(await (await http.PostAsync("v1/conversations", new StringContent("""{"items":[{"role":"user","content":"first"}]}""", Encoding.UTF8, "application/json"), Ct)).Content.ReadAsStringAsync(Ct))!["id"]!.GetValue<string>();
            var large = new string('x', 30_000);

            using var refused = await http.PostAsync($"v1/conversations/{id}/items", new StringContent($$"""{"items":[{"role":"user","content":"{{large}}"}]}""", Encoding.UTF8, "application/json"), Ct);
            refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
            var error = JsonNode.Parse(await refused.Content.ReadAsStringAsync(Ct))!["error"]!;
            error["code"]!.GetValue<string>().Should().Be("conversation_too_large");
            error["message"]!.GetValue<string>().Should().Contain("StoredResponsesMaxBytes");

            // A turn that would not fit: answered, not added (logged) — the conversation stays as it was, not lost.
            using var answered = await http.PostAsync("v1/responses", new StringContent($$"""{"model":"m","input":"{{large}}","conversation":"{{id}}","store":false}""", Encoding.UTF8, "application/json"), Ct);
            answered.StatusCode.Should().Be(HttpStatusCode.OK);
            var items = JsonNode.Parse(await http.GetStringAsync($"v1/conversations/{id}/items", Ct))!["data"]!.AsArray();
            items.Should().ContainSingle().Which!["content"]![0]!["text"]!.GetValue<string>().Should().Be("first");
            logs.All.Should().Contain("was not added to conversation");

            // A stored response past the bound is not kept either: said in the log, not silent, and the answer says
            // store: false (as the caller would find it: not found) — whole, and in a stream's last event.
            var whole = JsonNode.Parse(await (await http.PostAsync("v1/responses", new StringContent($$"""{"model":"m","input":"{{large}}"}""", Encoding.UTF8, "application/json"), Ct)).Content.ReadAsStringAsync(Ct))!;
            var stored = whole["id"]!.GetValue<string>();
            whole["store"]!.GetValue<bool>().Should().BeFalse("it was not kept");
            (await http.GetAsync($"v1/responses/{stored}", Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound);
            logs.All.Should().Contain($"The response {stored} (or one of its output items) was not kept").And.Contain("StoredResponsesMaxBytes");
            var streamed = await (await http.PostAsync("v1/responses", new StringContent($$"""{"model":"m","input":"{{large}}","stream":true}""", Encoding.UTF8, "application/json"), Ct)).Content.ReadAsStringAsync(Ct);
            var last = streamed.Split('\n').Last(l => l.StartsWith("data: ", StringComparison.Ordinal));
            var completed = JsonNode.Parse(last[6..])!;
            (completed["type"]!.GetValue<string>(), completed["response"]!["store"]!.GetValue<bool>()).Should().Be(("response.completed", false));
            var small = JsonNode.Parse(await (await http.PostAsync("v1/responses", new StringContent("""{"model":"m","input":"hi"}""", Encoding.UTF8, "application/json"), Ct)).Content.ReadAsStringAsync(Ct))!;
            small["store"]!.GetValue<bool>().Should().BeTrue("one that fits is kept and says so");
        }
        finally
        {
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }
    }

    /// <summary>A JSON value of any kind, shallow: what a hostile body puts where an item, its members or metadata go.</summary>
    private static readonly Gen<JsonNode?> Any = Gen.Frequency(
        (2, Gen.Const<JsonNode?>((JsonNode?)null)),
        (2, Gen.Int.Select(i => (JsonNode?)JsonValue.Create(i))),
        (4, Gen.OneOf("user", "assistant", "system", "developer", "tool", "message", "function_call", "function_call_output", "reasoning", "item_reference", "", "\u0000", "x").Select(w => (JsonNode?)JsonValue.Create(w))),
        (2, Gen.String[0, 70].Select(t => (JsonNode?)JsonValue.Create(t))),
        (1, Gen.Bool.Select(b => (JsonNode?)JsonValue.Create(b))));

    private static readonly Gen<JsonNode?> Item =
        from fields in Gen.Select(Gen.OneOf("type", "role", "content", "call_id", "name", "arguments", "output", "id", "summary", "x"), Any).Array[0, 5]
        select (JsonNode?)new JsonObject(fields.DistinctBy(static f => f.Item1).Select(static f => KeyValuePair.Create<string, JsonNode?>(f.Item1, f.Item2)));

    private static readonly Gen<string> CreateBody =
        from items in Gen.Frequency((6, Item.Array[0, 22].Select(a => (JsonNode?)new JsonArray(a))), (1, Any))
        from metadata in Gen.Frequency((3, Gen.Select(Gen.String[0, 70], Any).Array[0, 18].Select(m => (JsonNode?)new JsonObject(m.DistinctBy(static p => p.Item1).Select(static p => KeyValuePair.Create<string, JsonNode?>(p.Item1, p.Item2))))), (1, Any))
        from extra in Gen.Frequency((8, Gen.Const(false)), (1, Gen.Const(true)))
        select new JsonObject { ["items"] = items, ["metadata"] = metadata, ["extra"] = extra ? 1 : null }.ToJsonString().Replace(",\"extra\":null", string.Empty, StringComparison.Ordinal);

    [Fact]
    public async Task Hostile_creates_get_a_conversation_or_a_400_naming_the_member_never_a_5xx()
    {
        using var http = new HttpClient { BaseAddress = _root };
        var pcg = new PCG(1, 20261206);
        var outcomes = new Dictionary<int, int>();
        var failures = new List<string>();
        for (var i = 0; i < 400; i++)
        {
            var body = CreateBody.Generate(pcg, null, out _);
            using var response = await http.PostAsync("v1/conversations", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
            var answer = JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!;
            var status = (int)response.StatusCode;
            outcomes[status] = outcomes.GetValueOrDefault(status) + 1;
            var fine = status switch
            {
                200 => answer["id"]!.GetValue<string>().StartsWith("conv_", StringComparison.Ordinal)
                    && (await http.GetAsync($"v1/conversations/{answer["id"]}/items?limit=100", Ct)).IsSuccessStatusCode,
                400 => answer["error"]?["type"]?.GetValue<string>() == "invalid_request_error" && answer["error"]!["param"] is not null && answer["error"]!["message"]!.GetValue<string>().Length > 0,
                _ => false,
            };
            if (!fine)
            {
                failures.Add($"{status} {answer.ToJsonString()[..Math.Min(300, answer.ToJsonString().Length)]}\n  body: {body[..Math.Min(400, body.Length)]}");
            }
        }

        failures.Should().BeEmpty(string.Join("\n", failures.Take(5)));
        outcomes.Keys.Should().Contain([200, 400], "the cases reach both answers");
    }

    [Fact]
    public async Task What_a_conversation_cannot_take_is_a_400_naming_it_and_one_not_kept_is_not_found()
    {
        using var http = new HttpClient { BaseAddress = _root };
        async Task<(HttpStatusCode Status, JsonNode? Error)> Send(HttpMethod method, string path, string? body = null)
        {
            using var request = new HttpRequestMessage(method, path) { Content = body is null ? null : new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, Ct);
            return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!["error"]);
        }

        var id = JsonNode.Parse(await (await http.PostAsync("v1/conversations", new StringContent("{}", Encoding.UTF8, "application/json"), Ct)).Content.ReadAsStringAsync(Ct))!["id"]!.GetValue<string>();
        foreach (var (body, param) in new[]
        {
            ("""{"items":[{"type":"web_search_call"}]}""", "items[0]"),
            ("""{"items":[{"role":"robot","content":"x"}]}""", "items[0]"),
            ("""{"items":[{"type":"message","role":"user"}]}""", "items[0].content"),
            ("""{"items":"x"}""", "items"),
            ($$"""{"items":[{{string.Join(",", Enumerable.Repeat("""{"role":"user","content":"x"}""", 21))}}]}""", "items"),
            ("""{"metadata":{"a":1}}""", "metadata.a"),
            ("""{"metadata":"x"}""", "metadata"),
            ("""{"other":1}""", "other"),
        })
        {
            var (status, error) = await Send(HttpMethod.Post, "v1/conversations", body);
            status.Should().Be(HttpStatusCode.BadRequest, body);
            error!["param"]!.GetValue<string>().Should().Be(param, body);
        }

        (await Send(HttpMethod.Post, $"v1/conversations/{id}/items", """{"items":[]}""")).Status.Should().Be(HttpStatusCode.BadRequest);
        (await Send(HttpMethod.Post, $"v1/conversations/{id}", """{}""")).Error!["param"]!.GetValue<string>().Should().Be("metadata");
        (await Send(HttpMethod.Get, $"v1/conversations/{id}/items?after=msg_nope")).Error!["param"]!.GetValue<string>().Should().Be("after");
        (await Send(HttpMethod.Get, $"v1/conversations/{id}/items/msg_nope")).Status.Should().Be(HttpStatusCode.NotFound);
        (await Send(HttpMethod.Delete, $"v1/conversations/{id}/items/msg_nope")).Status.Should().Be(HttpStatusCode.NotFound);
        (await Send(HttpMethod.Get, "v1/conversations/conv_nope")).Status.Should().Be(HttpStatusCode.NotFound);

        var (refused, reason) = await Send(HttpMethod.Post, "v1/responses", """{"model":"m","input":"hi","conversation":"conv_nope"}""");
        refused.Should().Be(HttpStatusCode.BadRequest);
        reason!["code"]!.GetValue<string>().Should().Be("conversation_not_found");
        (refused, reason) = await Send(HttpMethod.Post, "v1/responses", $$"""{"model":"m","input":"hi","conversation":{"id":"{{id}}"},"previous_response_id":"resp_1"}""");
        refused.Should().Be(HttpStatusCode.BadRequest);
        reason!["param"]!.GetValue<string>().Should().Be("conversation");
        (refused, reason) = await Send(HttpMethod.Post, "v1/responses", """{"model":"m","input":"hi","conversation":5}""");
        reason!["param"]!.GetValue<string>().Should().Be("conversation");
    }

    /// <summary>Two gateways sharing one Redis (their stored responses and conversations there), each on <paramref name="clock"/> (the system's by default).</summary>
    private static async Task<(WebApplication App, HttpClient Http)[]> FleetAsync(int instances, TimeProvider? clock = null, Held? held = null, bool redis = true)
    {
        var prefix = "conv" + Guid.NewGuid().ToString("N")[..12];
        var fleet = new List<(WebApplication, HttpClient)>();
        for (var i = 0; i < instances; i++)
        {
            var turn = 0;
            var provider = new FakeProvider("p")
            {
                OnComplete = async (request, token) =>
                {
                    var text = request.Request.Messages[^1].Content!.GetText()!;
                    if (held is not null && text.StartsWith("hold", StringComparison.Ordinal))
                    {
                        held.Arrived.TrySetResult();
                        await held.Release.Task.WaitAsync(token);
                    }

                    return FakeProvider.Answer("m", $"Answer to {text} ({Interlocked.Increment(ref turn)})");
                },
            };
            provider.OnStream = (request, token) => HeldStream(request, held, token);
            var settings = new Dictionary<string, string?> { ["Gateway:Server:BatchDirectory"] = string.Empty };
            if (redis)
            {
                settings["Gateway:Redis:Configuration"] = RedisServer.Shared();
                settings["Gateway:Redis:KeyPrefix"] = prefix;
            }

            var config = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
            var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddPipelineGateway().AddProvider(provider).AddModel("m", m => m.Deploy(provider.Name)).UseTimeProvider(clock ?? TimeProvider.System));
            fleet.Add((app, new HttpClient { BaseAddress = await GatewayServer.StartAsync(app, Ct) }));
        }

        return [.. fleet];
    }

    /// <summary>What holds a request whose last message starts with "hold": <see cref="Arrived"/> once it reached the upstream, answered at <see cref="Release"/>.</summary>
    private sealed class Held
    {
        public TaskCompletionSource Arrived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>The held stream does not hear its cancellation (an upstream slow to unwind): it ends at <see cref="Release"/> only.</summary>
        public bool Deaf { get; init; }
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> HeldStream(PipelineGateway.Providers.ProviderRequest request, Held? held, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken token)
    {
        var text = request.Request.Messages[^1].Content!.GetText()!;
        yield return FakeProvider.Chunk("m", "Answer ");
        if (held is not null && text.StartsWith("hold", StringComparison.Ordinal))
        {
            held.Arrived.TrySetResult();
            await (held.Deaf ? held.Release.Task : held.Release.Task.WaitAsync(token));
        }

        yield return FakeProvider.Chunk("m", $"to {text}", "stop");
    }

    private static async Task StopAsync((WebApplication App, HttpClient Http)[] fleet)
    {
        foreach (var (app, http) in fleet)
        {
            http.Dispose();
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }
    }

    private static async Task<(HttpStatusCode Status, JsonNode Body, HttpResponseMessage Response)> PostAsync(HttpClient http, string path, string json)
    {
        var response = await http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"), Ct);
        return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!, response);
    }

    private static async Task<List<string>> TextsAsync(HttpClient http, string id)
    {
        var page = JsonNode.Parse(await http.GetStringAsync($"v1/conversations/{id}/items?order=asc&limit=100", Ct))!;
        return [.. page["data"]!.AsArray().Select(static i => i!["content"]![0]!["text"]!.GetValue<string>())];
    }

    [Fact]
    public async Task In_a_fleet_sharing_Redis_changes_to_one_conversation_from_two_instances_at_once_all_land()
    {
        var fleet = await FleetAsync(2);
        try
        {
            var (_, id, _) = await PostAsync(fleet[0].Http, "v1/conversations", """{"items":[{"role":"system","content":"start"}]}""");
            var conversation = id["id"]!.GetValue<string>();

            // Items added and responses' turns, from both instances at once: each change reads the conversation whole
            // and writes it back whole — without the fleet's hold, the later write dropped the earlier one's items.
            var changes = new List<Task<(HttpStatusCode Status, JsonNode Body, HttpResponseMessage Response)>>();
            for (var i = 0; i < 8; i++)
            {
                foreach (var (name, http) in new[] { ("a", fleet[0].Http), ("b", fleet[1].Http) })
                {
                    changes.Add(PostAsync(http, $"v1/conversations/{conversation}/items", $$"""{"items":[{"role":"user","content":"{{name}}{{i}}"}]}"""));
                    if (i < 3)
                    {
                        changes.Add(TurnAsync(http, $$"""{"model":"m","input":"q{{name}}{{i}}","conversation":"{{conversation}}"}"""));
                    }
                }
            }

            var answered = await Task.WhenAll(changes);
            answered.Select(static a => a.Status).Should().AllBeEquivalentTo(HttpStatusCode.OK);

            // A response is refused while another is made on the conversation (409 conversation_locked): asked again, as
            // the SDKs do, until it is its turn — with nothing to wait for but the other response. Bounded by time, not by
            // attempts: a fresh clone's full run had the other response take longer than 1,000 instant refusals (a
            // test bound, no timing asserted; the turn is its holder's for as long as its response is made).
            static async Task<(HttpStatusCode Status, JsonNode Body, HttpResponseMessage Response)> TurnAsync(HttpClient http, string json)
            {
                var asking = System.Diagnostics.Stopwatch.StartNew();
                while (true)
                {
                    var answer = await PostAsync(http, "v1/responses", json);
                    if (answer.Status != HttpStatusCode.Conflict || asking.Elapsed > TimeSpan.FromSeconds(60))
                    {
                        return answer;
                    }

                    answer.Body["error"]!["code"]!.GetValue<string>().Should().Be("conversation_locked");
                }
            }

            var texts = await TextsAsync(fleet[1].Http, conversation);
            var expected = new List<string> { "start" };
            foreach (var name in new[] { "a", "b" })
            {
                expected.AddRange(Enumerable.Range(0, 8).Select(i => $"{name}{i}"));
                expected.AddRange(Enumerable.Range(0, 3).Select(i => $"q{name}{i}"));
            }

            texts.Where(static t => !t.StartsWith("Answer", StringComparison.Ordinal)).Should().BeEquivalentTo(expected, "every item added, by either instance, is kept");
            texts.Count(static t => t.StartsWith("Answer to q", StringComparison.Ordinal)).Should().Be(6, "every response's turn is kept, its answer with it");
            for (var i = 0; i < texts.Count; i++)
            {
                if (texts[i].StartsWith("Answer to ", StringComparison.Ordinal))
                {
                    texts[i].Should().StartWith($"Answer to {texts[i - 1]} ", "a turn's answer follows its input: the turn is added as one change");
                }
            }
        }
        finally
        {
            await StopAsync(fleet);
        }
    }

    [Fact]
    public async Task In_a_fleet_a_change_waits_for_another_instances_hold_on_its_conversation_then_is_a_409_conversation_locked()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var fleet = await FleetAsync(1, clock);
        try
        {
            var http = fleet[0].Http;
            var store = fleet[0].App.Services.GetRequiredService<PipelineGateway.Server.Responses.ResponsesStore>();
            var redis = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync(RedisServer.Shared());
            await using var _ = redis;
            var conversation = (await PostAsync(http, "v1/conversations", "{}")).Body["id"]!.GetValue<string>();
            var key = store.ConversationHoldKey(string.Empty, conversation);
            var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            store.HoldWaiting += () => waiting.TrySetResult();

            // Another instance is changing it (its hold taken here, as that instance would): an add waits for it...
            (await redis.GetDatabase().LockTakeAsync(key, "other", TimeSpan.FromMinutes(1))).Should().BeTrue();
            var add = PostAsync(http, $"v1/conversations/{conversation}/items", """{"items":[{"role":"user","content":"later"}]}""");
            await waiting.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);
            (await store.ConversationAsync(string.Empty, conversation, Ct))!.Items.GetArrayLength().Should().Be(0, "not written while another instance holds it");

            // The waiting change holds none of the instance's gates: a conversation of the same gate stripe is changed
            // meanwhile (it waited behind it: for the whole wait, when the holder was an instance that had stopped).
            var gates = fleet[0].App.Services.GetRequiredService<PipelineGateway.Server.Responses.Conversations>();
            string neighbour;
            do
            {
                neighbour = (await PostAsync(http, "v1/conversations", "{}")).Body["id"]!.GetValue<string>();
            }
            while (gates.Stripe(string.Empty, neighbour) != gates.Stripe(string.Empty, conversation));

            (await PostAsync(http, $"v1/conversations/{neighbour}/items", """{"items":[{"role":"user","content":"beside"}]}""")
                .WaitAsync(TimeSpan.FromSeconds(30), Ct)).Status.Should().Be(HttpStatusCode.OK);
            add.IsCompleted.Should().BeFalse("still waiting for the other instance");

            // ...and is made once that instance lets go.
            (await redis.GetDatabase().LockReleaseAsync(key, "other")).Should().BeTrue();
            clock.Advance(PipelineGateway.Server.Responses.ResponsesStore.ConversationHoldPoll);
            (await add).Status.Should().Be(HttpStatusCode.OK);
            (await TextsAsync(http, conversation)).Should().Equal("later");
            (await redis.GetDatabase().KeyExistsAsync(key)).Should().BeFalse("let go once made");

            // Held past the wait (an instance that stopped holding it, say): a 409 conversation_locked, which SDKs retry.
            (await redis.GetDatabase().LockTakeAsync(key, "other", TimeSpan.FromMinutes(1))).Should().BeTrue();
            waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var refused = PostAsync(http, $"v1/conversations/{conversation}/items", """{"items":[{"role":"user","content":"refused"}]}""");
            await waiting.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);
            clock.Advance(PipelineGateway.Server.Responses.Conversations.ChangeWait);
            var (status, body, response) = await refused;
            status.Should().Be(HttpStatusCode.Conflict);
            body["error"]!["code"]!.GetValue<string>().Should().Be("conversation_locked");
            response.Headers.RetryAfter.Should().NotBeNull();

            // A delete waits for the hold too: a change read before it would otherwise write the conversation back.
            waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var delete = http.DeleteAsync($"v1/conversations/{conversation}", Ct);
            await waiting.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);
            (await store.ConversationAsync(string.Empty, conversation, Ct)).Should().NotBeNull("not deleted while held");
            (await redis.GetDatabase().LockReleaseAsync(key, "other")).Should().BeTrue();
            clock.Advance(PipelineGateway.Server.Responses.ResponsesStore.ConversationHoldPoll);
            (await delete).StatusCode.Should().Be(HttpStatusCode.OK);
            (await store.ConversationAsync(string.Empty, conversation, Ct)).Should().BeNull();
            (await TextsAsync(http, conversation).ContinueWith(static t => t.IsFaulted, Ct)).Should().BeTrue("deleted: not found");
        }
        finally
        {
            await StopAsync(fleet);
        }
    }

    /// <summary>
    /// One response at a time on a conversation, as OpenAI's (<c>conversation_locked</c>): while one is being made —
    /// whole, streamed or in the background — another on the same conversation is a 409 naming <c>conversation</c>
    /// (it was made from items that missed the first one's turn, then added after it); another conversation, and items
    /// added meanwhile, are not held up; once the first turn is added the next response goes on and sees it.
    /// </summary>
    [Theory]
    [InlineData("whole")]
    [InlineData("streamed")]
    [InlineData("background")]
    public async Task A_response_on_a_conversation_another_response_is_being_made_on_is_a_409_conversation_locked(string how)
    {
        var held = new Held();
        var fleet = await FleetAsync(1, held: held, redis: false);
        try
        {
            var http = fleet[0].Http;
            var conversation = (await PostAsync(http, "v1/conversations", "{}")).Body["id"]!.GetValue<string>();
            var other = (await PostAsync(http, "v1/conversations", "{}")).Body["id"]!.GetValue<string>();
            var extra = how switch { "streamed" => ""","stream":true""", "background" => ""","background":true""", _ => string.Empty };
            var first = PostRawAsync(http, $$"""{"model":"m","input":"hold me","conversation":"{{conversation}}"{{extra}}}""");
            await held.Arrived.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);

            var (status, body, response) = await PostAsync(http, "v1/responses", $$"""{"model":"m","input":"meanwhile","conversation":"{{conversation}}"}""");
            status.Should().Be(HttpStatusCode.Conflict);
            (body["error"]!["code"]!.GetValue<string>(), body["error"]!["param"]!.GetValue<string>()).Should().Be(("conversation_locked", "conversation"));
            response.Headers.RetryAfter.Should().NotBeNull();
            (await PostAsync(http, "v1/responses", $$"""{"model":"m","input":"elsewhere","conversation":"{{other}}"}""")).Status.Should().Be(HttpStatusCode.OK, "another conversation is not held up");
            (await PostAsync(http, $"v1/conversations/{conversation}/items", """{"items":[{"role":"user","content":"noted"}]}""")).Status.Should().Be(HttpStatusCode.OK, "items are not refused");

            held.Release.TrySetResult();
            (await first).StatusCode.Should().Be(HttpStatusCode.OK);
            if (how == "background")
            {
                // Answered queued at once: the conversation is held until the run has added its turn.
                var store = fleet[0].App.Services.GetRequiredService<PipelineGateway.Server.Responses.ResponsesStore>();
                for (var look = 0; look < 1_000_000 && (await store.ConversationAsync(string.Empty, conversation, Ct))!.Items.GetArrayLength() < 3; look++)
                {
                    // The run adds its turn on its own: looked for, not waited for by time.
                }
            }

            var next = await PostAsync(http, "v1/responses", $$"""{"model":"m","input":"next","conversation":"{{conversation}}"}""");
            for (var attempt = 0; attempt < 100_000 && next.Status == HttpStatusCode.Conflict && how == "background"; attempt++)
            {
                next = await PostAsync(http, "v1/responses", $$"""{"model":"m","input":"next","conversation":"{{conversation}}"}"""); // the run lets go just after its turn is kept
            }

            next.Status.Should().Be(HttpStatusCode.OK, "the first turn was added: the conversation takes the next one");
            (await TextsAsync(http, conversation)).Select(static t => t.Split(" (")[0]).Should().Equal("noted", "hold me", "Answer to hold me", "next", "Answer to next");
        }
        finally
        {
            held.Release.TrySetResult();
            await StopAsync(fleet);
        }
    }

    /// <summary>
    /// Across a fleet sharing Redis the same: a response being made on one instance holds its conversation there (a
    /// renewed hold, so a run longer than its expiry keeps it), and another instance refuses a response on it.
    /// </summary>
    [Fact]
    public async Task In_a_fleet_a_response_being_made_on_one_instance_holds_its_conversation_on_the_others_and_renews_the_hold()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var held = new Held();
        var fleet = await FleetAsync(2, clock, held);
        try
        {
            var conversation = (await PostAsync(fleet[0].Http, "v1/conversations", "{}")).Body["id"]!.GetValue<string>();
            var first = PostRawAsync(fleet[0].Http, $$"""{"model":"m","input":"hold me","conversation":"{{conversation}}"}""");
            await held.Arrived.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);

            var (status, body, _) = await PostAsync(fleet[1].Http, "v1/responses", $$"""{"model":"m","input":"meanwhile","conversation":"{{conversation}}"}""");
            status.Should().Be(HttpStatusCode.Conflict, "the other instance's response holds it");
            body["error"]!["code"]!.GetValue<string>().Should().Be("conversation_locked");

            // Renewed while held: the key's time cut short here, the instance's renewal (a third of the expiry on) puts
            // it back — looked for in Redis, not waited for by time.
            var redis = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync(RedisServer.Shared());
            await using var _ = redis;
            var key = redis.GetDatabase();
            var prefix = fleet[0].App.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<PipelineGateway.Redis.RedisOptions>>().Value.KeyPrefix;
            var holdKey = (await redis.GetServers()[0].KeysAsync(pattern: prefix + ":r:u:*").ToListAsync(Ct)).Should().ContainSingle().Subject;
            await key.KeyExpireAsync(holdKey, TimeSpan.FromSeconds(5));
            clock.Advance(PipelineGateway.Server.Responses.ResponsesStore.TurnHoldExpiry / 3);
            var renewed = false;
            for (var look = 0; look < 100_000 && !renewed; look++)
            {
                renewed = (await key.KeyTimeToLiveAsync(holdKey)) > TimeSpan.FromSeconds(10);
            }

            renewed.Should().BeTrue("the hold was renewed");

            held.Release.TrySetResult();
            (await first).StatusCode.Should().Be(HttpStatusCode.OK);
            (await key.KeyExistsAsync(holdKey)).Should().BeFalse("let go once the turn was added");
            (await PostAsync(fleet[1].Http, "v1/responses", $$"""{"model":"m","input":"next","conversation":"{{conversation}}"}""")).Status.Should().Be(HttpStatusCode.OK);
        }
        finally
        {
            held.Release.TrySetResult();
            await StopAsync(fleet);
        }
    }

    /// <summary>
    /// A caller that goes away mid-stream adds no turn, and its conversation is let go as soon as the gateway sees it go
    /// (the stream's end, as for any request) — not once the upstream call has unwound (here an upstream that does not
    /// hear the cancel at all): the caller's next response is made while the abandoned one is still held upstream.
    /// </summary>
    [Fact]
    public async Task A_caller_that_goes_away_mid_stream_lets_its_conversation_go_at_once()
    {
        var held = new Held { Deaf = true };
        var fleet = await FleetAsync(1, held: held, redis: false);
        try
        {
            var http = fleet[0].Http;
            var conversation = (await PostAsync(http, "v1/conversations", "{}")).Body["id"]!.GetValue<string>();
            // A client of its own that drains nothing: the response disposed unread closes its connection at once (the
            // default handler drains an unfinished body for up to two seconds first).
            using (var leaving = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = http.BaseAddress })
            using (var request = new HttpRequestMessage(HttpMethod.Post, "v1/responses") { Content = new StringContent($$"""{"model":"m","input":"hold on","conversation":"{{conversation}}","stream":true}""", Encoding.UTF8, "application/json") })
            using (var streamed = await leaving.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct))
            {
                streamed.StatusCode.Should().Be(HttpStatusCode.OK);
                await held.Arrived.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);
            } // gone

            var next = await PostAsync(http, "v1/responses", $$"""{"model":"m","input":"next","conversation":"{{conversation}}"}""");
            for (var attempt = 0; attempt < 2_000 && next.Status == HttpStatusCode.Conflict; attempt++)
            {
                next = await PostAsync(http, "v1/responses", $$"""{"model":"m","input":"next","conversation":"{{conversation}}"}"""); // until the gateway has seen the caller go
            }

            next.Status.Should().Be(HttpStatusCode.OK, "let go at the abort, while the upstream still holds the abandoned call");
            held.Release.Task.IsCompleted.Should().BeFalse();
            (await TextsAsync(http, conversation)).Select(static t => t.Split(" (")[0]).Should().Equal("next", "Answer to next");
        }
        finally
        {
            held.Release.TrySetResult();
            await StopAsync(fleet);
        }
    }

    private static Task<HttpResponseMessage> PostRawAsync(HttpClient http, string json) =>
        http.PostAsync("v1/responses", new StringContent(json, Encoding.UTF8, "application/json"), Ct);
}
