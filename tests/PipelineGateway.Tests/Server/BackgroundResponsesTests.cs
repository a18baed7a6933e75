#pragma warning disable OPENAI001 // the OpenAI SDK marks its Responses client as evaluation-only
using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using OpenAI.Responses;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Background responses (docs/server.md, "Background responses"): <c>background: true</c> on <c>/v1/responses</c>
/// through the official OpenAI SDK — answered queued at once, in progress from the upstream's first chunk, polled to
/// its end, streamed and resumed after a drop by sequence number, cancelled (the upstream call with it, idempotently),
/// failed with its error kept — against a real upstream over HTTP whose answers wait on the test's signals.
/// </summary>
public sealed class BackgroundResponsesTests : IAsyncLifetime
{
    private GatedUpstream _upstream = null!;
    private WebApplication _app = null!;
    private Uri _root = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _upstream = await GatedUpstream.StartAsync(Ct);
        (_app, _root) = await StartGatewayAsync(_upstream, new Dictionary<string, string?> { ["Gateway:Server:MaxBackgroundResponses"] = "2" });
    }

    public async ValueTask DisposeAsync()
    {
        _upstream.OpenAll();
        await _app.StopAsync();
        await _app.DisposeAsync();
        await _upstream.DisposeAsync();
    }

    private static async Task<(WebApplication App, Uri Root)> StartGatewayAsync(GatedUpstream upstream, Dictionary<string, string?> more)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:Providers:1:Name"] = "gated",
            ["Gateway:Providers:1:Type"] = "OpenAICompatible",
            ["Gateway:Providers:1:BaseUrl"] = new Uri(upstream.BaseAddress, "v1").ToString(),
            ["Gateway:Models:1:Name"] = "gated",
            ["Gateway:Models:1:Deployments:0:Provider"] = "gated",
            ["Gateway:Models:1:Deployments:0:Model"] = "gated-model",
            ["Gateway:Models:2:Name"] = "refusing",
            ["Gateway:Models:2:Deployments:0:Provider"] = "gated",
            ["Gateway:Models:2:Deployments:0:Model"] = GatedUpstream.Refusing,
        };
        foreach (var (key, value) in more)
        {
            settings[key] = value;
        }

        var app = GatewayServer.Build(TestServerConfig.Simulated(settings), "http://127.0.0.1:0", _ => { });
        return (app, await GatewayServer.StartAsync(app, Ct));
    }

    private ResponsesClient Client() => new(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(_root, "v1") });

    private static CreateResponseOptions Background(string model = "gated", bool stream = false) =>
        new(model, [ResponseItem.CreateUserMessageItem("Take your time.")]) { BackgroundModeEnabled = true, StreamingEnabled = stream ? true : null };

    /// <summary>A background response's events from <paramref name="after"/> on, read until <paramref name="until"/> says stop (or the stream ends).</summary>
    private static async Task<List<StreamingResponseUpdate>> EventsAsync(ResponsesClient client, string id, int? after, Func<StreamingResponseUpdate, bool>? until = null)
    {
        var seen = new List<StreamingResponseUpdate>();
        await foreach (var update in await client.GetResponseStreamingAsync(new GetResponseOptions(id) { StreamingEnabled = true, StartingAfter = after }, Ct))
        {
            seen.Add(update);
            if (until?.Invoke(update) == true)
            {
                break;
            }
        }

        return seen;
    }

    private static string Text(IEnumerable<StreamingResponseUpdate> updates) =>
        string.Concat(updates.OfType<StreamingResponseOutputTextDeltaUpdate>().Select(static d => d.Delta));

    [Fact]
    public async Task A_background_response_is_answered_queued_goes_in_progress_at_the_first_chunk_and_is_polled_to_its_end()
    {
        var client = Client();
        var created = (await client.CreateResponseAsync(Background(), Ct)).Value;
        created.Status.Should().Be(ResponseStatus.Queued);
        created.BackgroundModeEnabled.Should().BeTrue();
        created.OutputItems.Should().BeEmpty();
        (await _upstream.Arrived.Task.WaitAsync(Ct)).Should().Contain("\"stream\":true", "made as a stream whatever the caller asked");
        (await client.GetResponseAsync(created.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "the upstream has not answered");

        // Continuing it before it is done is refused, naming why.
        using var http = new HttpClient { BaseAddress = _root };
        var early = await http.PostAsync("v1/responses", Json($$"""{"model":"gated","previous_response_id":"{{created.Id}}","input":"next"}"""), Ct);
        early.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        (await early.Content.ReadAsStringAsync(Ct)).Should().Contain("is queued");

        _upstream.Opening.TrySetResult();
        var opening = await EventsAsync(client, created.Id, after: null, until: static u => u is StreamingResponseOutputTextDeltaUpdate);
        opening.Select(static u => u.SequenceNumber).Should().Equal(Enumerable.Range(0, opening.Count), "every event from the first, in order");
        opening[0].Should().BeOfType<StreamingResponseCreatedUpdate>().Which.Response.Status.Should().Be(ResponseStatus.Queued);
        opening[1].Should().BeOfType<StreamingResponseQueuedUpdate>();
        opening.OfType<StreamingResponseInProgressUpdate>().Should().ContainSingle();
        (await client.GetResponseAsync(created.Id, Ct)).Value.Status.Should().Be(ResponseStatus.InProgress, "kept as in progress before it was said");

        // Followed from the last event seen (its headers back: the caller follows the run) before the upstream goes on.
        var following = await client.GetResponseStreamingAsync(new GetResponseOptions(created.Id) { StreamingEnabled = true, StartingAfter = opening[^1].SequenceNumber }, Ct);
        _upstream.Rest.TrySetResult();
        var rest = new List<StreamingResponseUpdate>();
        await foreach (var update in following)
        {
            rest.Add(update);
        }

        rest[0].SequenceNumber.Should().Be(opening[^1].SequenceNumber + 1);
        var completed = rest[^1].Should().BeOfType<StreamingResponseCompletedUpdate>().Subject;
        var done = (await client.GetResponseAsync(created.Id, Ct)).Value;
        done.Status.Should().Be(ResponseStatus.Completed);
        done.GetOutputText().Should().Be(GatedUpstream.Answer).And.Be(Text(opening) + Text(rest));
        done.Usage.OutputTokenCount.Should().Be(GatedUpstream.OutputTokens);

        // Done: it continues like any stored response, and its stream can still be resumed — every event after the one given.
        var next = (await client.CreateResponseAsync(new CreateResponseOptions("gpt-4o-mini", [ResponseItem.CreateUserMessageItem("And then?")]) { PreviousResponseId = created.Id }, Ct)).Value;
        next.Status.Should().Be(ResponseStatus.Completed);
        var replay = await EventsAsync(client, created.Id, after: 2);
        replay.Select(static u => u.SequenceNumber).Should().Equal(Enumerable.Range(3, completed.SequenceNumber - 2));
        Text(replay).Should().Be(GatedUpstream.Answer);
        (await EventsAsync(client, created.Id, after: completed.SequenceNumber)).Should().BeEmpty("the caller had every event");
    }

    [Fact]
    public async Task A_streamed_background_response_goes_on_when_its_caller_drops_and_is_resumed_after_the_last_event_seen()
    {
        var client = Client();
        _upstream.Opening.TrySetResult();
        var first = new List<StreamingResponseUpdate>();
        await foreach (var update in await client.CreateResponseStreamingAsync(Background(stream: true), Ct))
        {
            first.Add(update);
            if (update is StreamingResponseOutputTextDeltaUpdate)
            {
                break; // the caller drops, mid-answer
            }
        }

        var id = first.OfType<StreamingResponseCreatedUpdate>().Single().Response.Id;
        _upstream.Aborted.Task.IsCompleted.Should().BeFalse("dropping the stream cancels nothing");
        var last = first[^1].SequenceNumber;
        // Its headers back (the caller follows the run) before the upstream goes on: resumed while it is still being made.
        var resumed = await client.GetResponseStreamingAsync(new GetResponseOptions(id) { StreamingEnabled = true, StartingAfter = last }, Ct);
        _upstream.Rest.TrySetResult();
        var rest = new List<StreamingResponseUpdate>();
        await foreach (var update in resumed)
        {
            rest.Add(update);
        }

        rest[0].SequenceNumber.Should().Be(last + 1, "resumed right after the last event seen");
        rest.Select(static u => u.SequenceNumber).Should().BeInAscendingOrder().And.OnlyHaveUniqueItems();
        (Text(first) + Text(rest)).Should().Be(GatedUpstream.Answer, "nothing lost, nothing twice");
        rest[^1].Should().BeOfType<StreamingResponseCompletedUpdate>().Which.Response.GetOutputText().Should().Be(GatedUpstream.Answer);
    }

    [Fact]
    public async Task An_ended_responses_events_are_kept_for_a_while_then_its_stream_is_the_event_that_ended_it()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var provider = new FakeProvider("p");
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Gateway:Server:BatchDirectory"] = string.Empty }).Build();
        var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddPipelineGateway().AddProvider(provider).AddModel("m", m => m.Deploy(provider.Name)).UseTimeProvider(clock));
        var root = await GatewayServer.StartAsync(app, Ct);
        try
        {
            var client = new ResponsesClient(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(root, "v1") });
            var created = (await client.CreateResponseAsync(Background("m"), Ct)).Value;
            var all = await EventsAsync(client, created.Id, after: null); // followed to its end
            all[^1].Should().BeOfType<StreamingResponseCompletedUpdate>();
            var last = all[^1].SequenceNumber;

            clock.Advance(PipelineGateway.Server.Responses.BackgroundResponses.ReplayWindow - TimeSpan.FromSeconds(1));
            (await EventsAsync(client, created.Id, after: 0)).Select(static u => u.SequenceNumber).Should().Equal(Enumerable.Range(1, last), "kept within the window");

            clock.Advance(TimeSpan.FromSeconds(1));
            var late = await EventsAsync(client, created.Id, after: 0);
            late.Should().ContainSingle().Which.Should().BeOfType<StreamingResponseCompletedUpdate>().Which.SequenceNumber.Should().Be(last, "past the window: the event that ended it, at its number");
            late.OfType<StreamingResponseCompletedUpdate>().Single().Response.GetOutputText().Should().Be(all.OfType<StreamingResponseCompletedUpdate>().Single().Response.GetOutputText());
        }
        finally
        {
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }
    }

    [Fact]
    public async Task Cancelling_a_background_response_cancels_its_upstream_call_keeps_it_cancelled_and_is_idempotent()
    {
        var client = Client();
        var created = (await client.CreateResponseAsync(Background(), Ct)).Value;
        await _upstream.Arrived.Task.WaitAsync(Ct);

        var cancelled = (await client.CancelResponseAsync(created.Id, Ct)).Value;
        cancelled.Status.Should().Be(ResponseStatus.Cancelled);
        await _upstream.Aborted.Task.WaitAsync(TimeSpan.FromSeconds(20), Ct); // the upstream's request went with it
        (await client.CancelResponseAsync(created.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Cancelled, "a second cancel answers it as it is");
        (await client.GetResponseAsync(created.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Cancelled);
        (await EventsAsync(client, created.Id, after: null)).Select(static u => u.GetType()).Should().Equal([typeof(StreamingResponseCreatedUpdate), typeof(StreamingResponseQueuedUpdate)], "a cancelled response's stream ends after what it had: no last event");

        using var http = new HttpClient { BaseAddress = _root };
        var next = await http.PostAsync("v1/responses", Json($$"""{"model":"gated","previous_response_id":"{{created.Id}}","input":"next"}"""), Ct);
        next.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        JsonNode.Parse(await next.Content.ReadAsStringAsync(Ct))!["error"]!["param"]!.GetValue<string>().Should().Be("previous_response_id");

        // Deleting one still being made cancels it first: it is not kept again by its next state.
        var deleting = (await client.CreateResponseAsync(Background(), Ct)).Value;
        (await http.DeleteAsync($"v1/responses/{deleting.Id}", Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
        _upstream.OpenAll();
        var afterDelete = await http.GetAsync($"v1/responses/{deleting.Id}", Ct);
        afterDelete.StatusCode.Should().Be(HttpStatusCode.NotFound, await afterDelete.Content.ReadAsStringAsync(Ct));
        _app.Services.GetRequiredService<PipelineGateway.Server.Responses.BackgroundResponses>().Running.Should().Be(0);
    }

    [Fact]
    public async Task A_background_response_the_upstream_refuses_is_failed_with_the_error_its_answer_would_have_had()
    {
        var client = Client();
        var created = (await client.CreateResponseAsync(Background("refusing"), Ct)).Value;
        var events = await EventsAsync(client, created.Id, after: null);
        var failed = events[^1].Should().BeOfType<StreamingResponseFailedUpdate>().Subject.Response;
        failed.Status.Should().Be(ResponseStatus.Failed);
        failed.Error.Code.ToString().Should().Be("invalid_request");
        failed.Error.Message.Should().Contain(GatedUpstream.RefusalText);
        var polled = (await client.GetResponseAsync(created.Id, Ct)).Value;
        polled.Status.Should().Be(ResponseStatus.Failed);
        polled.Error.Message.Should().Be(failed.Error.Message);
        polled.OutputItems.Should().BeEmpty();
    }

    [Fact]
    public async Task What_would_only_fail_later_is_refused_at_once_in_OpenAI_error_shape()
    {
        using var http = new HttpClient { BaseAddress = _root };
        async Task<(HttpStatusCode Status, JsonNode Error, HttpResponseMessage Response)> Send(HttpMethod method, string path, string? body = null)
        {
            using var request = new HttpRequestMessage(method, path) { Content = body is null ? null : Json(body) };
            var response = await http.SendAsync(request, Ct);
            var text = await response.Content.ReadAsStringAsync(Ct);
            return (response.StatusCode, JsonNode.Parse(text)!["error"]!, response);
        }

        var (status, error, _) = await Send(HttpMethod.Post, "v1/responses", """{"model":"gated","input":"hi","background":true,"store":false}""");
        status.Should().Be(HttpStatusCode.BadRequest);
        error["param"]!.GetValue<string>().Should().Be("store");

        (status, error, _) = await Send(HttpMethod.Post, "v1/responses", """{"model":"gated","input":"hi","background":"yes"}""");
        status.Should().Be(HttpStatusCode.BadRequest);
        error["param"]!.GetValue<string>().Should().Be("background");

        (status, error, _) = await Send(HttpMethod.Post, "v1/responses", """{"model":"no-such-model","input":"hi","background":true}""");
        status.Should().Be(HttpStatusCode.NotFound);
        error["code"]!.GetValue<string>().Should().Be("model_not_found");

        var foreground = JsonNode.Parse(await (await http.PostAsync("v1/responses", Json("""{"model":"gpt-4o-mini","input":"hi"}"""), Ct)).Content.ReadAsStringAsync(Ct))!["id"]!.GetValue<string>();
        (status, error, _) = await Send(HttpMethod.Post, $"v1/responses/{foreground}/cancel");
        status.Should().Be(HttpStatusCode.BadRequest, "only a background response can be cancelled");
        (status, error, _) = await Send(HttpMethod.Get, $"v1/responses/{foreground}?stream=true");
        status.Should().Be(HttpStatusCode.BadRequest);
        error["param"]!.GetValue<string>().Should().Be("stream");
        (status, error, _) = await Send(HttpMethod.Get, $"v1/responses/{foreground}?stream=true&starting_after=-3");
        status.Should().Be(HttpStatusCode.BadRequest);
        error["param"]!.GetValue<string>().Should().Be("starting_after");
        (status, _, _) = await Send(HttpMethod.Post, "v1/responses/resp_0123/cancel");
        status.Should().Be(HttpStatusCode.NotFound);

        // This gateway makes two at once (MaxBackgroundResponses): the third waits for room elsewhere, told when to retry.
        var client = Client();
        var held = new[] { (await client.CreateResponseAsync(Background(), Ct)).Value, (await client.CreateResponseAsync(Background(), Ct)).Value };
        (status, error, var full) = await Send(HttpMethod.Post, "v1/responses", """{"model":"gated","input":"hi","background":true}""");
        status.Should().Be(HttpStatusCode.ServiceUnavailable);
        error["code"]!.GetValue<string>().Should().Be("too_many_background_responses");
        full.Headers.RetryAfter.Should().NotBeNull();
        foreach (var r in held)
        {
            (await client.CancelResponseAsync(r.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Cancelled);
        }

        (await client.CreateResponseAsync(Background(), Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "cancelled ones leave room");
    }

    [Fact]
    public async Task One_key_cannot_take_every_other_keys_room()
    {
        await using var upstream = await GatedUpstream.StartAsync(Ct);
        var (app, root) = await StartGatewayAsync(upstream, new Dictionary<string, string?>
        {
            ["Gateway:Server:MaxBackgroundResponsesPerKey"] = "1",
            ["Gateway:Server:Keys:0:Id"] = "a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash("sk-gw-a-0123456789"),
            ["Gateway:Server:Keys:1:Id"] = "b",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash("sk-gw-b-0123456789"),
        });
        try
        {
            ResponsesClient As(string key) => new(new ApiKeyCredential(key), new ResponsesClientOptions { Endpoint = new Uri(root, "v1") });
            var a = As("sk-gw-a-0123456789");
            var held = (await a.CreateResponseAsync(Background(), Ct)).Value;

            using var http = new HttpClient { BaseAddress = root };
            http.DefaultRequestHeaders.Authorization = new("Bearer", "sk-gw-a-0123456789");
            using var refused = await http.PostAsync("v1/responses", Json("""{"model":"gated","input":"hi","background":true}"""), Ct);
            refused.StatusCode.Should().Be(HttpStatusCode.TooManyRequests);
            refused.Headers.RetryAfter.Should().NotBeNull();
            JsonNode.Parse(await refused.Content.ReadAsStringAsync(Ct))!["error"]!["message"]!.GetValue<string>().Should().Contain("MaxBackgroundResponsesPerKey");

            (await As("sk-gw-b-0123456789").CreateResponseAsync(Background(), Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "the other key has its own room");
            (await a.CancelResponseAsync(held.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Cancelled);
            (await a.CreateResponseAsync(Background(), Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "a's room is back once its response ended");
        }
        finally
        {
            upstream.OpenAll();
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_background_response_still_running_when_the_gateway_stops_is_kept_as_failed()
    {
        await using var upstream = await GatedUpstream.StartAsync(Ct);
        var (app, root) = await StartGatewayAsync(upstream, new Dictionary<string, string?> { ["Gateway:Pipeline:DrainTimeout"] = "00:00:00.200" });
        var client = new ResponsesClient(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(root, "v1") });
        var created = (await client.CreateResponseAsync(Background(), Ct)).Value;
        await upstream.Arrived.Task.WaitAsync(Ct);
        var store = app.Services.GetRequiredService<PipelineGateway.Server.Responses.ResponsesStore>();

        await app.StopAsync(Ct);
        var kept = await store.ResponseAsync(string.Empty, created.Id, Ct);
        await app.DisposeAsync();

        kept!.Status.Should().Be("failed");
        var error = JsonNode.Parse(kept.Response)!["error"]!;
        error["message"]!.GetValue<string>().Should().Contain("shut down", "the drain's answer to what it could not finish");
    }

    [Fact]
    public async Task In_a_fleet_sharing_Redis_another_instance_polls_streams_and_cancels_a_background_response()
    {
        var shared = new Dictionary<string, string?>
        {
            ["Gateway:Redis:Configuration"] = RedisServer.Shared(),
            ["Gateway:Redis:KeyPrefix"] = "bg" + Guid.NewGuid().ToString("N")[..12],
        };
        await using var upstream = await GatedUpstream.StartAsync(Ct);
        var (a, rootA) = await StartGatewayAsync(upstream, shared);
        var (b, rootB) = await StartGatewayAsync(upstream, shared);
        try
        {
            var onA = new ResponsesClient(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(rootA, "v1") });
            var onB = new ResponsesClient(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(rootB, "v1") });

            // Made on A, cancelled on B: asked through Redis, A's run ends, the upstream call with it.
            var held = (await onA.CreateResponseAsync(Background(), Ct)).Value;
            await upstream.Arrived.Task.WaitAsync(Ct);
            (await onB.GetResponseAsync(held.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "B reads A's state from Redis");
            (await onB.CancelResponseAsync(held.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Cancelled);
            await upstream.Aborted.Task.WaitAsync(TimeSpan.FromSeconds(20), Ct);
            (await onA.GetResponseAsync(held.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Cancelled);

            // Made on A, streamed on B while A still waits for the upstream: B has A's events as A shares them through
            // Redis — every one after the caller's last, in order, the deltas with the answer among them — and ends with
            // the event that ended it.
            var made = (await onA.CreateResponseAsync(Background(), Ct)).Value;
            var following = await onB.GetResponseStreamingAsync(new GetResponseOptions(made.Id) { StreamingEnabled = true, StartingAfter = 1 }, Ct);
            (await onB.GetResponseAsync(made.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "still waiting for the upstream");
            upstream.OpenAll();
            var onBStream = new List<StreamingResponseUpdate>();
            await foreach (var update in following)
            {
                onBStream.Add(update);
            }

            onBStream.Select(u => u.SequenceNumber).Should().Equal(Enumerable.Range(2, onBStream.Count), "every event after the second, once each");
            onBStream.Should().Contain(u => u is StreamingResponseInProgressUpdate);
            string.Concat(onBStream.OfType<StreamingResponseOutputTextDeltaUpdate>().Select(d => d.Delta)).Should().Be(GatedUpstream.Answer);
            var completed = onBStream[^1].Should().BeOfType<StreamingResponseCompletedUpdate>().Subject;
            completed.Response.GetOutputText().Should().Be(GatedUpstream.Answer);
            (await onB.GetResponseAsync(made.Id, Ct)).Value.Status.Should().Be(ResponseStatus.Completed);

            // Deleted, its shared events go with it.
            var storeOfB = b.Services.GetRequiredService<PipelineGateway.Server.Responses.ResponsesStore>();
            (await storeOfB.SharedEventsAsync(string.Empty, made.Id, 0, Ct)).Should().NotBeNull();
            (await onB.DeleteResponseAsync(made.Id, Ct)).Value.Deleted.Should().BeTrue();
            (await storeOfB.SharedEventsAsync(string.Empty, made.Id, 0, Ct)).Should().BeNull();
        }
        finally
        {
            upstream.OpenAll();
            foreach (var app in new[] { a, b })
            {
                await app.StopAsync(CancellationToken.None);
                await app.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task In_a_fleet_a_run_whose_lease_stayed_missing_past_the_grace_is_found_failed_and_one_renewed_meanwhile_is_not()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var provider = new FakeProvider("p");
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Server:BatchDirectory"] = string.Empty,
            ["Gateway:Redis:Configuration"] = RedisServer.Shared(),
            ["Gateway:Redis:KeyPrefix"] = "bg" + Guid.NewGuid().ToString("N")[..12],
        }).Build();
        var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddPipelineGateway().AddProvider(provider).AddModel("gated", m => m.Deploy(provider.Name)).UseTimeProvider(clock));
        var root = await GatewayServer.StartAsync(app, Ct);
        try
        {
            var client = new ResponsesClient(new ApiKeyCredential("sk-unused"), new ResponsesClientOptions { Endpoint = new Uri(root, "v1") });
            var store = app.Services.GetRequiredService<PipelineGateway.Server.Responses.ResponsesStore>();
            store.Shared.Should().BeTrue();

            // What an instance killed mid-run leaves (kept queued, no lease renewed, no instance making it), twice.
            async Task<string> LeftAsync()
            {
                var writer = new PipelineGateway.Server.Responses.ResponsesWriter(new ChatCompletionRequest { Model = "gated" }, PipelineGateway.Server.Responses.ResponsesStore.NewResponseId(), 1, store: true, background: true);
                _ = writer.Queued().ToList();
                await store.SaveAsync(string.Empty, writer.Id, writer.Snapshot("queued"), null, [], output: null, writer.LastSequence);
                return writer.Id;
            }

            var orphan = await LeftAsync();
            var partitioned = await LeftAsync();
            (await client.GetResponseAsync(orphan, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "a lease missing once may be a partition's lapse");
            (await client.GetResponseAsync(partitioned, Ct)).Value.Status.Should().Be(ResponseStatus.Queued);

            // The second one's instance was alive behind a partition: it renews its lease and clears the sighting.
            await store.RenewLeaseAsync(string.Empty, partitioned, PipelineGateway.Server.Responses.BackgroundResponses.Lease);
            await store.LeaseSeenAsync(string.Empty, partitioned);

            clock.Advance(PipelineGateway.Server.Responses.BackgroundResponses.LeaseGrace - TimeSpan.FromSeconds(1));
            (await client.GetResponseAsync(orphan, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "within the grace");
            clock.Advance(TimeSpan.FromSeconds(1));

            // Still missing past the grace: found failed and kept so — its callers are not left polling a response no one makes.
            var failed = (await client.GetResponseAsync(orphan, Ct)).Value;
            failed.Status.Should().Be(ResponseStatus.Failed);
            failed.Error.Message.Should().Contain("stopped before it was done");
            (await store.ResponseAsync(string.Empty, orphan, Ct))!.Status.Should().Be("failed", "kept so");
            var ended = await EventsAsync(client, orphan, after: null);
            ended.Should().ContainSingle().Which.Should().BeOfType<StreamingResponseFailedUpdate>().Which.SequenceNumber.Should().Be(2, "after the queued response's two events");
            (await client.GetResponseAsync(partitioned, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "its lease was renewed");

            // Its lease lapses again later (a millisecond's lease, expired by Redis itself): the renewal forgot the first
            // sighting, so this one is a new sighting, within the grace — not a stale one past it.
            await store.RenewLeaseAsync(string.Empty, partitioned, TimeSpan.FromMilliseconds(1));
            while (await store.HasLeaseAsync(string.Empty, partitioned, Ct))
            {
                // Redis expires it within the millisecond: no wait of the test's own.
            }

            (await client.GetResponseAsync(partitioned, Ct)).Value.Status.Should().Be(ResponseStatus.Queued, "seen missing just now");

            // A live run's own renewal forgets a sighting (a reader saw its lease missing during a partition): once its
            // watch renews (a renewal period on), the sighting is a new one.
            var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            provider.OnStream = (request, _) => HeldStream(request.Model, started, release.Task);
            var live = (await client.CreateResponseAsync(Background("gated"), Ct)).Value;
            await started.Task.WaitAsync(Ct);
            var sighted = await store.LeaseMissingSinceAsync(string.Empty, live.Id, clock.GetUtcNow(), Ct);
            (await store.LeaseMissingSinceAsync(string.Empty, live.Id, clock.GetUtcNow(), Ct)).Should().Be(sighted, "the sighting is kept");
            clock.Advance(PipelineGateway.Server.Responses.BackgroundResponses.LeaseRenewal);
            var forgotten = false;
            for (var look = 0; look < 100_000 && !forgotten; look++)
            {
                // The watch's turn runs on its own once the clock moved: looked for in Redis, not waited for by time.
                forgotten = await store.LeaseMissingSinceAsync(string.Empty, live.Id, clock.GetUtcNow(), Ct) != sighted;
            }

            forgotten.Should().BeTrue("the run's renewal forgot the sighting");
            release.TrySetResult();
        }
        finally
        {
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }
    }

    /// <summary>A streamed answer's first chunk (then <paramref name="started"/>), the rest once <paramref name="release"/> completes.</summary>
    private static async IAsyncEnumerable<ChatCompletionChunk> HeldStream(string model, TaskCompletionSource started, Task release)
    {
        yield return FakeProvider.Chunk(model, "Held ");
        started.TrySetResult();
        await release;
        yield return FakeProvider.Chunk(model, "then done.", "stop");
    }

    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    /// <summary>
    /// An OpenAI-compatible upstream (a real Kestrel on 127.0.0.1) whose streamed answer waits on the test: nothing until
    /// <see cref="Opening"/>, then its first chunk, then the rest at <see cref="Rest"/>; a request it was still holding
    /// when its caller went away completes <see cref="Aborted"/>. The <see cref="Refusing"/> model is refused with a 400.
    /// A whole (not streamed) request is answered at once.
    /// </summary>
    private sealed class GatedUpstream : IAsyncDisposable
    {
        public const string Refusing = "refusing-model";
        public const string RefusalText = "temperature is not allowed for this model";
        public const string Answer = "Hello from the gate.";
        public const int OutputTokens = 5;

        private readonly WebApplication _app;

        private GatedUpstream(WebApplication app, Uri address)
        {
            _app = app;
            BaseAddress = address;
        }

        public Uri BaseAddress { get; }

        public TaskCompletionSource<string> Arrived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Opening { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Rest { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Aborted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void OpenAll()
        {
            Opening.TrySetResult();
            Rest.TrySetResult();
        }

        public static async Task<GatedUpstream> StartAsync(CancellationToken cancellationToken)
        {
            var app = LoopbackApp.Build();
            GatedUpstream? upstream = null;
            app.MapPost("/v1/chat/completions", (HttpContext ctx) => upstream!.AnswerAsync(ctx));
            upstream = new GatedUpstream(app, await LoopbackApp.StartAsync(app, cancellationToken));
            return upstream;
        }

        public async ValueTask DisposeAsync()
        {
            OpenAll();
            await _app.StopAsync();
            await _app.DisposeAsync();
        }

        private async Task AnswerAsync(HttpContext ctx)
        {
            using var reader = new StreamReader(ctx.Request.Body);
            var body = await reader.ReadToEndAsync(ctx.RequestAborted);
            using var doc = JsonDocument.Parse(body);
            var model = doc.RootElement.GetProperty("model").GetString();
            if (model == Refusing)
            {
                ctx.Response.StatusCode = 400;
                ctx.Response.ContentType = "application/json";
                await ctx.Response.WriteAsync("{\"error\":{\"message\":\"" + RefusalText + "\",\"type\":\"invalid_request_error\",\"param\":\"temperature\",\"code\":null}}");
                return;
            }

            var stream = doc.RootElement.TryGetProperty("stream", out var s) && s.ValueKind == JsonValueKind.True;
            if (!stream)
            {
                ctx.Response.ContentType = "application/json";
                await ctx.Response.WriteAsync($$$"""{"id":"c1","object":"chat.completion","created":1,"model":"{{{model}}}","choices":[{"index":0,"message":{"role":"assistant","content":"{{{Answer}}}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":{{{OutputTokens}}},"total_tokens":8}}""");
                return;
            }

            Arrived.TrySetResult(body);
            try
            {
                await Opening.Task.WaitAsync(ctx.RequestAborted);
                ctx.Response.ContentType = "text/event-stream";
                await Chunk(ctx, """{"role":"assistant","content":"Hello"}""", null);
                await Rest.Task.WaitAsync(ctx.RequestAborted);
                await Chunk(ctx, """{"content":" from the"}""", null);
                await Chunk(ctx, """{"content":" gate."}""", "\"stop\"");
                await ctx.Response.WriteAsync($$$"""data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"{{{model}}}","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":{{{OutputTokens}}},"total_tokens":8}}""" + "\n\ndata: [DONE]\n\n");
            }
            catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
            {
                Aborted.TrySetResult();
            }
        }

        private static async Task Chunk(HttpContext ctx, string delta, string? finish)
        {
            await ctx.Response.WriteAsync($$"""data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gated-model","choices":[{"index":0,"delta":{{delta}},"finish_reason":{{finish ?? "null"}}}]}""" + "\n\n");
            await ctx.Response.Body.FlushAsync();
        }
    }
}
