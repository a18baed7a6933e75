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
/// not: the bytes must be the same.
/// </summary>
public sealed class RequestJsonDifferentialTests
{
    private static readonly ulong Seed = ulong.TryParse(Environment.GetEnvironmentVariable("PGW_FUZZ_SEED"), out var s) ? s : 20261202UL;
    private static readonly int Cases = 20_000 * (int.TryParse(Environment.GetEnvironmentVariable("PGW_FUZZ_SCALE"), out var x) && x > 0 ? x : 1);

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
                var expected = Write(() => JsonSerializer.SerializeToUtf8Bytes(request.ForUpstream("upstream-model", stream), GatewayJsonContext.Default.ChatCompletionRequest));
                var actual = Write(() => RequestJson.ToUpstreamBytes(request, "upstream-model", stream, GatewayJsonContext.Default.Options));
                written++;
                if (expected != actual)
                {
                    failures.Add($"{body} (stream {stream})\n  serializer:   {expected}\n  hand-written: {actual}");
                }
            }
        }

        failures.Should().BeEmpty();
        written.Should().BeGreaterThan(Cases / 2, "most mutations must leave a readable request, or little is compared");
    }

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

        Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o-mini", stream: true, GatewayJsonContext.Default.Options)).Should().Be(
            """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"h\u00E9 \u003Cb\u003E"}],"temperature":0.1,"stop":"x","stream":true,"stream_options":{"include_usage":true,"other":1}}""");
        Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o-mini", stream: false, GatewayJsonContext.Default.Options)).Should().Be(
            """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"h\u00E9 \u003Cb\u003E"}],"temperature":0.1,"stop":"x"}""");
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
