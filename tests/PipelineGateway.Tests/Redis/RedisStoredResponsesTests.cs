using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Redis;

/// <summary>
/// <c>/v1/responses</c> answers kept with <c>store</c> in distributed mode (docs/server.md, "Stored responses"): kept in
/// Redis, so a conversation continued on another instance — by <c>previous_response_id</c> or an <c>item_reference</c>,
/// as the Vercel AI SDK sends — finds them, and a delete on one instance is seen by the other. Redis down: a 503 an SDK
/// retries, never a "not found" it would not.
/// </summary>
public sealed class RedisStoredResponsesTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Task<SimulatorFleet> Instance(string redis, string prefix) => SimulatorFleet.StartAsync(
        [("claude", "Anthropic", null)],
        [("claude", ["claude"])],
        "claude-sonnet-4-5",
        new Dictionary<string, string?> { ["Gateway:Redis:Configuration"] = redis, ["Gateway:Redis:KeyPrefix"] = prefix },
        Ct);

    private static async Task<(HttpStatusCode Status, JsonNode? Body)> SendAsync(HttpMethod method, SimulatorFleet at, string path, string? body = null)
    {
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(method, new Uri(at.Base, path)) { Content = body is null ? null : new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        return (response.StatusCode, text.Length > 0 ? JsonNode.Parse(text) : null);
    }

    /// <summary>The scope of a gateway without keys (every caller's), as a key spells it.</summary>
    private const string Base64UrlOfEmpty = "";

    private const string Tools = """ "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}],"reasoning":{"effort":"low"} """;

    [Fact]
    public async Task A_response_kept_by_one_instance_is_continued_read_and_deleted_on_the_other()
    {
        var redis = RedisServer.Shared();
        var prefix = "t" + Guid.NewGuid().ToString("N")[..12];
        await using var a = await Instance(redis, prefix);
        await using var b = await Instance(redis, prefix);

        var (status, first) = await SendAsync(HttpMethod.Post, a, "v1/responses", $$"""{"model":"claude","input":"Use get_weather for Oslo.",{{Tools.Trim()}}}""");
        status.Should().Be(HttpStatusCode.OK, first?.ToJsonString());
        var id = first!["id"]!.GetValue<string>();
        var reasoningId = first["output"]![0]!["id"]!.GetValue<string>();
        var call = first["output"]![1]!;
        (await RedisServer.Connect(redis).KeyExistsAsync($"{prefix}:r:r:{Base64UrlOfEmpty}:{id}")).Should().BeTrue("kept in Redis under the gateway's prefix");

        // On B, by reference: Claude gets its thinking back from the stored reasoning item (it refuses the turn without it).
        var callId = call["call_id"]!.GetValue<string>();
        (status, var byItem) = await SendAsync(HttpMethod.Post, b, "v1/responses", $$"""{"model":"claude","input":[{"role":"user","content":"Use get_weather for Oslo."},{"type":"item_reference","id":"{{reasoningId}}"},{{call.ToJsonString()}},{"type":"function_call_output","call_id":"{{callId}}","output":"Sunny"}],{{Tools.Trim()}}}""");
        status.Should().Be(HttpStatusCode.OK, byItem?.ToJsonString());

        // On B, by the response's id alone.
        (status, var byId) = await SendAsync(HttpMethod.Post, b, "v1/responses", $$"""{"model":"claude","previous_response_id":"{{id}}","input":[{"type":"function_call_output","call_id":"{{callId}}","output":"Sunny"}],{{Tools.Trim()}}}""");
        status.Should().Be(HttpStatusCode.OK, byId?.ToJsonString());

        (status, var read) = await SendAsync(HttpMethod.Get, b, $"v1/responses/{id}");
        status.Should().Be(HttpStatusCode.OK);
        read!["output"]!.ToJsonString().Should().Be(first["output"]!.ToJsonString());

        (status, _) = await SendAsync(HttpMethod.Delete, b, $"v1/responses/{id}");
        status.Should().Be(HttpStatusCode.OK);
        (status, _) = await SendAsync(HttpMethod.Get, a, $"v1/responses/{id}");
        status.Should().Be(HttpStatusCode.NotFound, "the delete on B is seen on A");
        (status, var gone) = await SendAsync(HttpMethod.Post, a, "v1/responses", $$"""{"model":"claude","input":[{"type":"item_reference","id":"{{reasoningId}}"}]}""");
        status.Should().Be(HttpStatusCode.BadRequest, "its output items went with it");
        gone!["error"]!["code"]!.GetValue<string>().Should().Be("item_not_found");
    }

    [Fact]
    public async Task With_Redis_down_a_reference_is_a_503_and_an_answer_still_goes_out()
    {
        await using var server = await RedisServer.StartAsync();
        await using var a = await Instance(server.Configuration, "t" + Guid.NewGuid().ToString("N")[..12]);
        await server.StopAsync();

        var (status, answer) = await SendAsync(HttpMethod.Post, a, "v1/responses", """{"model":"claude","input":"Hello"}""");
        status.Should().Be(HttpStatusCode.OK, "keeping it failed, answering did not: " + answer?.ToJsonString());

        (status, var refused) = await SendAsync(HttpMethod.Post, a, "v1/responses", """{"model":"claude","previous_response_id":"resp_0123","input":"More"}""");
        status.Should().Be(HttpStatusCode.ServiceUnavailable, refused?.ToJsonString());
        refused!["error"]!["code"]!.GetValue<string>().Should().Be("store_unavailable");
        (status, _) = await SendAsync(HttpMethod.Get, a, "v1/responses/resp_0123");
        status.Should().Be(HttpStatusCode.ServiceUnavailable);
    }
}
