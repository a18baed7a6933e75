using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using OpenAI;
using OpenAI.Audio;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/audio/speech</c> over real HTTP: the official OpenAI .NET SDK through the gateway, the audio byte for byte
/// as the upstream made it with the format's media type, billing per character alike in the header, the log and the
/// metrics, providers without the API passed over, no cache, refusals of bad requests, a hostile upstream, Azure's
/// route, and a CsCheck property over mutated bodies.
/// </summary>
public sealed class SpeechTests : LoggedFleetTests
{

    internal override Task<SimulatorFleet> StartAsync(string database) => SimulatorFleet.StartLoggedAsync(
        [("sim", "OpenAICompatible", null), ("claude", "Anthropic", null)],
        [("tts", ["sim"]), ("tts-mixed", ["claude", "sim"]), ("tts-claude", ["claude"])],
        "tts-1",
        database,
        new Dictionary<string, string?>
        {
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Cache:CacheNonDeterministic"] = "true",
        },
        Ct);

    private async Task<(HttpResponseMessage Response, byte[] Body)> PostAsync(string body, HttpClient? http = null, string path = "v1/audio/speech")
    {
        var response = await (http ?? Http).PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        return (response, await response.Content.ReadAsByteArrayAsync(Ct));
    }

    [Fact]
    public async Task The_OpenAI_SDK_gets_the_upstreams_audio_through_the_gateway_billed_per_character_alike_everywhere()
    {
        var client = new AudioClient("tts", new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(Fleet.Base, "v1") });
        const string Text = "The gateway speaks for every provider.";
        var mp3 = (await client.GenerateSpeechAsync(Text, GeneratedSpeechVoice.Alloy, cancellationToken: Ct)).Value.ToArray();
        mp3[..4].Should().Equal(0xFF, 0xFB, 0x90, 0xC0); // an MPEG-1 Layer III frame header
        var wav = (await client.GenerateSpeechAsync(Text, GeneratedSpeechVoice.Alloy, new SpeechGenerationOptions { ResponseFormat = GeneratedSpeechFormat.Wav }, Ct)).Value.ToArray();
        Encoding.ASCII.GetString(wav, 0, 4).Should().Be("RIFF");

        // The audio as the upstream made it, byte for byte, with the format's media type, streamed.
        const string Body = """{"model":"tts","input":"The gateway speaks for every provider.","voice":"coral","speed":1.5}""";
        var (response, through) = await PostAsync(Body);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        response.Content.Headers.ContentType!.MediaType.Should().Be("audio/mpeg");
        response.Headers.TransferEncodingChunked.Should().BeTrue("streamed as it is made, as OpenAI sends it");
        using var direct = await new HttpClient().PostAsync(new Uri(Fleet.Sims["sim"].BaseAddress, "v1/audio/speech"), new StringContent(Body.Replace("\"tts\"", "\"tts-1\"", StringComparison.Ordinal), Encoding.UTF8, "application/json"), Ct);
        through.Should().Equal(await direct.Content.ReadAsByteArrayAsync(Ct));
        through.Length.Should().BeLessThan(mp3.Length, "spoken faster, shorter");

        // tts-1 by the character: $15 per million — in the header, the log and the metrics alike.
        decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture).Should().Be(Text.Length * 15m / 1_000_000m);
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        (row.GetProperty("prompt_tokens").GetInt32(), row.GetProperty("completion_tokens").GetInt32()).Should().Be((Text.Length, 0));
        row.GetProperty("usage_estimated").GetBoolean().Should().BeFalse("the characters are counted, not estimated");
        row.GetProperty("cost_usd").GetDecimal().Should().Be(Text.Length * 15m / 1_000_000m);
        row.GetProperty("answer").GetString().Should().Be("[audio/mpeg, streamed]", "the audio is not kept as a text (it went out as it came)");
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);
    }

    [Fact]
    public async Task A_provider_without_speech_is_passed_over_unsent_and_audio_is_never_cached()
    {
        var (mixed, _) = await PostAsync("""{"model":"tts-mixed","input":"skip claude","voice":"alloy","response_format":"pcm"}""");
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        mixed.Content.Headers.ContentType!.MediaType.Should().Be("audio/pcm");

        var (refused, error) = await PostAsync("""{"model":"tts-claude","input":"x","voice":"alloy"}""");
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = JsonDocument.Parse(error).RootElement.GetProperty("error");
        (e.GetProperty("param").GetString(), e.GetProperty("message").GetString()).Should().Match<(string?, string?)>(p => p.Item1 == "model" && p.Item2!.Contains("no speech API"));
        Fleet.Sims["claude"].Requests.Should().Be(0, "nothing is sent to a provider without the API");

        // Audio never goes into the cache, even with non-deterministic answers cached (this fleet's setting).
        var calls = Fleet.Sims["sim"].Requests;
        var (first, _) = await PostAsync("""{"model":"tts","input":"same","voice":"alloy"}""");
        var (second, _) = await PostAsync("""{"model":"tts","input":"same","voice":"alloy"}""");
        (first.StatusCode, second.StatusCode).Should().Be((HttpStatusCode.OK, HttpStatusCode.OK));
        Header(second, "x-gateway-cache").Should().NotBe("hit");
        Fleet.Sims["sim"].Requests.Should().Be(calls + 2);
    }

    [Fact]
    public async Task Azures_speech_route_serves_the_deployment_in_its_path()
    {
        var (response, audio) = await PostAsync("""{"input":"azure","voice":"alloy","response_format":"wav"}""", path: "openai/deployments/tts/audio/speech?api-version=2025-03-01-preview");
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        Encoding.ASCII.GetString(audio, 0, 4).Should().Be("RIFF");
    }

    [Theory]
    [InlineData("""{"input":"x","voice":"alloy"}""", "model")]
    [InlineData("""{"model":"tts","voice":"alloy"}""", "input")]
    [InlineData("""{"model":"tts","input":"","voice":"alloy"}""", "input")]
    [InlineData("""{"model":"tts","input":["a"],"voice":"alloy"}""", "input")]
    [InlineData("""{"model":"tts","input":"x"}""", "voice")]
    [InlineData("""{"model":"tts","input":"x","voice":""}""", "voice")]
    [InlineData("""{"model":"tts","input":"x","voice":{"name":"v"}}""", "voice")]
    [InlineData("""{"model":"tts","input":"x","voice":"alloy","response_format":"ogg"}""", "response_format")]
    [InlineData("""{"model":"tts","input":"x","voice":"alloy","speed":0.1}""", "speed")]
    [InlineData("""{"model":"tts","input":"x","voice":"alloy","speed":"fast"}""", "speed")]
    [InlineData("""{"model":"tts","input":"x","voice":"alloy","instructions":5}""", "instructions")]
    [InlineData("""{"model":"tts","input":"x","voice":"alloy","stream_format":"events"}""", "stream_format")]
    [InlineData("""["tts"]""", null)]
    public async Task A_bad_request_is_a_400_naming_its_field_and_reaches_no_upstream(string body, string? param)
    {
        var (response, error) = await PostAsync(body);
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        var e = FrontDoorTests.ErrorIn("v1/audio/speech", JsonDocument.Parse(error).RootElement);
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        Fleet.Sims["sim"].Requests.Should().Be(0);
    }

    [Fact]
    public async Task Too_long_an_input_is_refused()
    {
        var (response, error) = await PostAsync(JsonSerializer.Serialize(new { model = "tts", input = new string('a', Speech.MaxInput + 1), voice = "alloy" }));
        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        JsonDocument.Parse(error).RootElement.GetProperty("error").GetProperty("param").GetString().Should().Be("input");
        (await PostAsync(JsonSerializer.Serialize(new { model = "tts", input = new string('a', Speech.MaxInput), voice = "alloy" }))).Response.StatusCode.Should().Be(HttpStatusCode.OK);
    }

    [Fact]
    public void The_request_reader_refuses_any_mutation_with_a_request_error_and_never_anything_else()
    {
        Fuzz.CheckOperationReader(OperationKind.Speech, Fuzz.SpeechTemplate, Fuzz.Seed + 19);
    }

    [Fact]
    public async Task An_upstream_answer_that_is_not_audio_fails_over_and_upstream_refusals_keep_their_status_without_the_key()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        const string KeyVariable = "PGW_TEST_SPEECH_SCRIPTED_KEY";
        const string UpstreamKey = "sk-speech-upstream-secret-0123456789";
        Environment.SetEnvironmentVariable(KeyVariable, UpstreamKey);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["embeddings-chat", "embeddings-404", "echo-400"], "tts-1", Ct, KeyVariable);
        var http = gateway.Http;
        async Task<(HttpStatusCode Status, string Text, string Provider, string? Type)> Speak(string model)
        {
            using var response = await http.PostAsync("v1/audio/speech", new StringContent($$"""{"model":"{{model}}","input":"p","voice":"alloy"}""", Encoding.UTF8, "application/json"), Ct);
            return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct), Header(response, "x-gateway-provider"), response.Content.Headers.ContentType?.MediaType);
        }

        // A JSON answer (a chat completion) where audio was asked: the provider's failure, never passed on as audio.
        var (status, text, _, type) = await Speak("embeddings-chat");
        (status, type).Should().Be((HttpStatusCode.BadGateway, "application/json"));
        text.Should().Contain("not a usable speech");
        var fallback = await Speak("embeddings-chat-then-sim");
        (fallback.Status, fallback.Provider, fallback.Type).Should().Be((HttpStatusCode.OK, "sim", "audio/mpeg"));

        var (chatOnly, refusal, _, _) = await Speak("embeddings-404");
        chatOnly.Should().Be(HttpStatusCode.BadRequest);
        refusal.Should().Contain("serves no speech");
        (await Speak("embeddings-404-then-sim")).Status.Should().Be(HttpStatusCode.OK);

        var (rejected, rejection, _, _) = await Speak("echo-400");
        rejected.Should().Be(HttpStatusCode.BadRequest, "the upstream refused the request itself: its status, not a 502");
        rejection.Should().Contain("temperature is too high").And.NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);
    }

    /// <summary>
    /// Any event speech asked as events may bring — each kind, its audio of the wrong type or missing, an error object, not
    /// an object, cut anywhere — is a chunk keeping its bytes (a delta carrying content, the done event finishing with the
    /// characters' usage), an upstream error, or a JsonException the stream reports as an invalid event (CsCheck, fixed seed).
    /// </summary>
    [Fact]
    public void Any_speech_event_is_a_chunk_keeping_its_bytes_an_upstream_error_or_a_JsonException()
    {
        var operation = Speech.ToRequest(JsonDocument.Parse("""{"model":"m","input":"four chars","voice":"alloy","stream_format":"sse"}""").RootElement).Operation!;
        var types = new[] { "speech.audio.delta", "speech.audio.done", "speech.audio.other", "" };
        var kinds = new HashSet<string>();
        Gen.Select(Gen.OneOf(types), Gen.String[0, 12], Gen.Int[0, 5], Gen.Int[0, 3]).Sample((type, text, shape, cut) =>
        {
            var quoted = JsonSerializer.Serialize(text);
            var json = shape switch
            {
                0 => $$"""{"type":"{{type}}","audio":{{quoted}}}""",
                1 => $$$"""{"type":"{{{type}}}","usage":{"input_tokens":3,"output_tokens":{{{text.Length}}}}}""",
                2 => $$$"""{"error":{"message":{{{quoted}}},"type":"server_error"}}""",
                3 => $$"""{"type":"{{type}}","audio":7}""",
                4 => $"[{quoted}]",
                _ => "null",
            };
            var bytes = Encoding.UTF8.GetBytes(json);
            if (cut > 0)
            {
                bytes = bytes[..(bytes.Length * cut / 4)];
            }

            try
            {
                var chunk = Speech.ReadEvent(bytes, operation, "m", 1, out var error, out var done);
                if (error is not null)
                {
                    chunk.Should().BeNull();
                    kinds.Add("error");
                    return;
                }

                chunk!.EventJson.ToArray().Should().Equal(bytes);
                done.Should().Be(type == "speech.audio.done");
                (chunk.Finishes, chunk.CarriesContent).Should().Be((done, type == "speech.audio.delta"));
                (done ? chunk.Usage!.PromptTokens : 0).Should().Be(done ? "four chars".Length : 0, "billed by its characters");
                kinds.Add(done ? "done" : "chunk");
            }
            catch (JsonException)
            {
                kinds.Add("invalid");
            }
        }, seed: "0N0XIzNsQ0O5", iter: 5_000 * Fuzz.Scale, threads: 1);
        kinds.Should().BeEquivalentTo(["error", "done", "chunk", "invalid"]);
    }

    /// <summary>
    /// Speech asked as events (<c>stream_format: "sse"</c>, gpt-4o-mini-tts's): the upstream's <c>speech.audio.delta</c>
    /// events as they came — their audio, decoded, the very audio asked without them — then <c>speech.audio.done</c>
    /// with its usage; billed by the characters as the other forms (the header from the start, the log alike). A cut
    /// after the first audio ends with an error event.
    /// </summary>
    [Fact]
    public async Task Speech_asked_as_events_reaches_the_caller_as_the_upstreams_events_and_is_billed_as_audio()
    {
        const string Text = "Events for every provider.";
        var body = $$"""{"model":"tts","input":"{{Text}}","voice":"alloy","stream_format":"sse"}""";
        var response = await Http.PostAsync("v1/audio/speech", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK, text);
        response.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        var events = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e.Trim()["data: ".Length..]).RootElement.Clone()).ToList();
        events.SkipLast(1).Should().NotBeEmpty().And.AllSatisfy(e => e.GetProperty("type").GetString().Should().Be("speech.audio.delta"));
        events[^1].GetProperty("type").GetString().Should().Be("speech.audio.done");
        events[^1].GetProperty("usage").GetProperty("total_tokens").GetInt32().Should().BePositive();
        var audio = events.SkipLast(1).SelectMany(e => Convert.FromBase64String(e.GetProperty("audio").GetString()!)).ToArray();
        var (_, whole) = await PostAsync($$"""{"model":"tts","input":"{{Text}}","voice":"alloy"}""");
        audio.Should().Equal(whole, "the same audio, as events");

        var cost = Text.Length * 15m / 1_000_000m;
        decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture).Should().Be(cost);
        (await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct)).GetProperty("cost_usd").GetDecimal().Should().Be(cost);
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);

        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["speech-sse-cut"], "gpt-4o-mini-tts", Ct);
        using var cutRequest = new HttpRequestMessage(HttpMethod.Post, "v1/audio/speech") { Content = new StringContent("""{"model":"speech-sse-cut","input":"Hello.","voice":"alloy","stream_format":"sse"}""", Encoding.UTF8, "application/json") };
        using var cut = await gateway.Http.SendAsync(cutRequest, HttpCompletionOption.ResponseHeadersRead, Ct);
        cut.StatusCode.Should().Be(HttpStatusCode.OK);
        using var reader = new StreamReader(await cut.Content.ReadAsStreamAsync(Ct));
        var firstEvent = await reader.ReadLineAsync(Ct);
        scripted.SpeechCutGate.SetResult(); // the caller has the first event: the upstream resets its connection
        var cutEvents = (firstEvent + "\n" + await reader.ReadToEndAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e.Trim()["data: ".Length..]).RootElement.Clone()).ToList();
        cutEvents[0].GetProperty("type").GetString().Should().Be("speech.audio.delta");
        cutEvents[^1].GetProperty("error").GetProperty("message").GetString().Should().NotBeNullOrEmpty("a cut after the first audio ends with an error event");
    }

    /// <summary>
    /// Speech streams as OpenAI's does: the caller has the upstream's first audio while the rest is still being made
    /// (the upstream held between its two halves), then every byte in order; a body that only starts like JSON (raw PCM
    /// beginning with '{') is audio; and a cut after the first audio resets the caller's connection — never a short file
    /// taken for a whole one. Before any audio, a failure fails over.
    /// </summary>
    [Fact]
    public async Task Speech_reaches_the_caller_as_it_is_made_and_a_cut_after_the_first_audio_breaks_the_transfer()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["speech-gated", "speech-cut", "speech-brace", "stream-error-first"], "tts-1", Ct);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/audio/speech") { Content = new StringContent("""{"model":"speech-gated","input":"Hello there.","voice":"alloy"}""", Encoding.UTF8, "application/json") };
        using var response = await gateway.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        Header(response, "x-gateway-cost-usd").Should().Be((12 * 15m / 1_000_000m).ToString("0.##########", System.Globalization.CultureInfo.InvariantCulture), "its cost is known from its characters before its audio");
        await using var body = await response.Content.ReadAsStreamAsync(Ct);
        var received = new MemoryStream();
        var buffer = new byte[65536];
        while (received.Length < 20_000)
        {
            var n = await body.ReadAsync(buffer, Ct);
            n.Should().BePositive("the first half arrives while the upstream still holds the second");
            received.Write(buffer, 0, n);
        }

        received.Length.Should().Be(20_000);
        scripted.SpeechGate.SetResult();
        await body.CopyToAsync(received, Ct);
        received.ToArray().Should().Equal(ScriptedUpstream.SpeechAudio);

        // Asked as events of an upstream that answers with the audio itself (one without events): the events, made of it.
        var asEvents = await gateway.Http.PostAsync("v1/audio/speech", new StringContent("""{"model":"speech-gated","input":"Hello there.","voice":"alloy","stream_format":"sse"}""", Encoding.UTF8, "application/json"), Ct);
        asEvents.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        var made = (await asEvents.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => JsonDocument.Parse(e.Trim()["data: ".Length..]).RootElement.Clone()).ToList();
        made[^1].GetProperty("type").GetString().Should().Be("speech.audio.done");
        made.SkipLast(1).SelectMany(e => Convert.FromBase64String(e.GetProperty("audio").GetString()!)).Should().Equal(ScriptedUpstream.SpeechAudio);

        var (brace, braceBody) = await Speak("speech-brace");
        (brace.StatusCode, brace.Content.Headers.ContentType!.MediaType).Should().Be((HttpStatusCode.OK, "audio/mpeg"));
        braceBody.Should().Equal("{\u0001\u0002 not json"u8.ToArray());

        using var cutRequest = new HttpRequestMessage(HttpMethod.Post, "v1/audio/speech") { Content = new StringContent("""{"model":"speech-cut","input":"Hello there.","voice":"alloy"}""", Encoding.UTF8, "application/json") };
        using var cutResponse = await gateway.Http.SendAsync(cutRequest, HttpCompletionOption.ResponseHeadersRead, Ct);
        cutResponse.StatusCode.Should().Be(HttpStatusCode.OK);
        await using var cutBody = await cutResponse.Content.ReadAsStreamAsync(Ct);
        var first = 0;
        while (first < 20_000)
        {
            first += await cutBody.ReadAsync(buffer, Ct);
        }

        scripted.SpeechCutGate.SetResult(); // the upstream resets its connection after the first half
        var rest = async () => await cutBody.CopyToAsync(Stream.Null, Ct);
        await rest.Should().ThrowAsync<Exception>("the transfer is broken, not ended");

        var (failedOver, audio) = await Speak("stream-error-first-then-sim");
        (failedOver.StatusCode, Header(failedOver, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        audio[..2].Should().Equal(0xFF, 0xFB);

        async Task<(HttpResponseMessage Response, byte[] Body)> Speak(string model)
        {
            var answer = await gateway.Http.PostAsync("v1/audio/speech", new StringContent($$"""{"model":"{{model}}","input":"Hello there.","voice":"alloy"}""", Encoding.UTF8, "application/json"), Ct);
            return (answer, await answer.Content.ReadAsByteArrayAsync(Ct));
        }
    }
}
