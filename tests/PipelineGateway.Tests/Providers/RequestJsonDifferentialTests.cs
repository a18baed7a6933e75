using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Tests.Server;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The hand-written upstream request writer (<see cref="RequestJson"/>) against what it replaces: the serializer
/// writing <see cref="ChatCompletionRequest.ForUpstream"/>'s copy. Valid chat requests are mutated (CsCheck, fixed seed:
/// the front door fuzzer's mutations), read by the serializer, and every one it reads is written by both, streamed and
/// not: the bytes must be the same — but for the JSON values the gateway keeps as they came (tool schemas,
/// <c>tool_choice</c>, <c>response_format</c>, members it does not model), which the writer copies as the client wrote
/// them (<c>WireJson.WriteValue</c>): there the spacing and escapes may be the client's, so both are compared
/// re-written by one writer (same members, same order, same values).
/// </summary>
public sealed class RequestJsonDifferentialTests
{
    private static readonly ulong Seed = Fuzz.Seed;

    /// <summary>The serializer with the encoder upstream requests are written with (WireJson: non-ASCII stays UTF-8).</summary>
    private static readonly GatewayJsonContext Wire = new(new JsonSerializerOptions(GatewayJsonContext.Default.Options) { Encoder = PipelineGateway.Serialization.WireJson.Encoder });
    private static readonly int Cases = 20_000 * Fuzz.Scale;

    [Fact]
    public void Mutated_requests_are_written_for_the_upstream_as_the_serializer_writes_them()
    {
        var failures = new List<string>();
        var written = 0;
        var pcg = new PCG(1, Seed + 10);
        var gen = Fuzz.Body(Fuzz.ChatTemplate);
        for (var i = 0; i < Cases && failures.Count < 5; i++)
        {
            var body = gen.Generate(pcg, null, out _);
            ChatCompletionRequest? request;
            try
            {
                request = JsonSerializer.Deserialize(body.Bytes, GatewayJsonContext.Default.ChatCompletionRequest);
            }
            catch (JsonException)
            {
                continue;
            }

            if (request is null)
            {
                continue;
            }

            foreach (var stream in new[] { false, true })
            {
                var expected = Write(() => JsonSerializer.SerializeToUtf8Bytes(request.ForUpstream("upstream-model", stream), Wire.ChatCompletionRequest));
                var actual = Write(() => RequestJson.ToUpstreamBytes(request, "upstream-model", stream));
                written++;
                if (expected != actual && Normalized(expected) != Normalized(actual))
                {
                    failures.Add($"{body} (stream {stream})\n  serializer:   {expected}\n  hand-written: {actual}");
                }
            }
        }

        failures.Should().BeEmpty();
        written.Should().BeGreaterThan(Cases / 2, "most mutations must leave a readable request, or little is compared");
    }

    [Fact]
    public void Mutated_requests_read_by_hand_are_read_as_the_serializer_reads_them_with_duplicates_refused()
    {
        // The fast reader may hand any body back to the serializer; what it does read must be what the serializer
        // (the front door's context: duplicate keys refused) reads, and it must read most well-formed requests.
        var failures = new List<string>();
        var (accepted, fast) = (0, 0);
        var pcg = new PCG(1, Seed + 11);
        var gen = Fuzz.Body(Fuzz.ChatTemplate);
        for (var i = 0; i < Cases && failures.Count < 5; i++)
        {
            var body = gen.Generate(pcg, null, out _);
            if (!System.Text.Unicode.Utf8.IsValid(body.Bytes))
            {
                continue; // the front door refuses these before any reader sees them
            }

            var expected = Read(body.Bytes);
            accepted += expected.StartsWith("throws", StringComparison.Ordinal) ? 0 : 1;
            if (RequestJson.TryRead(body.Bytes) is not { } request)
            {
                continue;
            }

            fast++;
            var actual = Write(() => JsonSerializer.SerializeToUtf8Bytes(request, GatewayJsonContext.Default.ChatCompletionRequest));
            if (expected != actual)
            {
                failures.Add($"{body}\n  serializer:   {expected}\n  hand-written: {actual}");
            }
        }

        failures.Should().BeEmpty();
        fast.Should().BeGreaterThan(accepted * 3 / 4, $"the fast reader must take most requests the serializer reads ({fast} of {accepted})");
    }

    [Theory]
    [InlineData("""{"model":"m","messages":[],"model":"n"}""")]
    [InlineData("""{"model":"m","messages":[{"role":"user","role":"system"}]}""")]
    [InlineData("""{"model":"m","messages":[],"x":1,"x":2}""")]
    [InlineData("""{"model":"m","messages":[],"tool_choice":{"a":1,"a":2}}""")]
    [InlineData("""{"model":"m","messages":[],"\u006dodel":"n"}""")]
    [InlineData("""{"model":"m","messages":[]} {}""")]
    [InlineData("""{"model":"m","messages":[],"gateway":{"no_cache":true}}""")]
    [InlineData("""{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u","x":1,"x":2}}]}]}""")]
    public void What_the_serializer_must_decide_is_handed_back_to_it(string body) =>
        RequestJson.TryRead(Encoding.UTF8.GetBytes(body)).Should().BeNull();

    [Fact]
    public void A_well_formed_request_is_read_by_hand()
    {
        var request = RequestJson.TryRead("""{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"stop":["a"],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"metadata":{"k":"v"}}"""u8);
        request.Should().NotBeNull();
        request!.Model.Should().Be("m");
        request.Messages.Single().Content!.GetText().Should().Be("hi");
        request.Temperature.Should().Be(0.5);
        request.Tools!.Single().Function!.Parameters!.Value.GetProperty("type").GetString().Should().Be("object");
        request.AdditionalProperties!["metadata"].GetProperty("k").GetString().Should().Be("v");
    }

    private static string Read(byte[] body) => Write(() =>
        JsonSerializer.SerializeToUtf8Bytes(JsonSerializer.Deserialize(body, PipelineGateway.Server.FrontDoorJsonContext.Default.ChatCompletionRequest), GatewayJsonContext.Default.ChatCompletionRequest));

    [Fact]
    public void A_request_is_written_with_the_upstream_model_and_usage_asked_for_when_streamed()
    {
        var request = new ChatCompletionRequest
        {
            Model = "alias",
            Messages = [ChatCompletionMessage.User("hé <b>")],
            Temperature = 0.1,
            Stop = "x",
            StreamOptions = new StreamOptions { IncludeUsage = false, AdditionalProperties = new() { ["other"] = JsonDocument.Parse("1").RootElement } },
        };

        Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o-mini", stream: true)).Should().Be(
            """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hé <b>"}],"temperature":0.1,"stop":"x","stream":true,"stream_options":{"include_usage":true,"other":1}}""");
        Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o-mini", stream: false)).Should().Be(
            """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hé <b>"}],"temperature":0.1,"stop":"x"}""");
    }

    /// <summary>The same JSON written by one writer with the wire's encoder: spacing and escapes made alike, nothing else.</summary>
    private static string Normalized(string json)
    {
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(json)!.ToJsonString(new JsonSerializerOptions { Encoder = PipelineGateway.Serialization.WireJson.Encoder });
        }
        catch (JsonException)
        {
            return json; // "throws …": compared as it is
        }
    }

    private static string Write(Func<byte[]> write)
    {
        try
        {
            return Encoding.UTF8.GetString(write());
        }
        catch (Exception ex)
        {
            return "throws " + ex.GetType().Name;
        }
    }
}
