using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using OpenAI;
using OpenAI.Audio;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// <c>POST /v1/audio/transcriptions</c> and <c>/v1/audio/translations</c> over real HTTP: the official OpenAI .NET SDK
/// through the gateway, the multipart form sent on (the audio byte for byte, the fields, the deployment's model), the
/// transcript as the upstream wrote it in every format, billing by the minute and by the token alike in the header, the
/// log and the metrics, providers without the API passed over, the upload bound, refusals of bad forms, a hostile upstream,
/// Azure's routes, and a CsCheck property over generated forms.
/// </summary>
public sealed class TranscriptionsTests : LoggedFleetTests
{

    /// <summary>Three seconds of silent WAV, as the speech simulator makes it.</summary>
    private static readonly byte[] Wav = SimulatedSpeech.Audio(Speech.ToRequest(JsonDocument.Parse("""{"model":"m","input":"one two three four five six seven","voice":"alloy","response_format":"wav","speed":0.9334}""").RootElement).Operation!).List.ToArray();

    internal override Task<SimulatorFleet> StartAsync(string database) => SimulatorFleet.StartLoggedAsync(
        [("sim", "OpenAICompatible", null), ("claude", "Anthropic", null)],
        [("whisper", ["sim"]), ("stt-mixed", ["claude", "sim"]), ("stt-claude", ["claude"])],
        "whisper-1",
        database,
        new Dictionary<string, string?>
        {
            ["Gateway:Server:MaxRequestBodyBytes"] = "65536",
            ["Gateway:Server:MaxUploadBytes"] = "262144",
            ["Gateway:Models:3:Name"] = "gpt-4o-transcribe",
            ["Gateway:Models:3:Deployments:0:Provider"] = "sim",
            ["Gateway:Models:3:Deployments:0:Model"] = "gpt-4o-transcribe",
        },
        Ct);

    private static MultipartFormDataContent Form(string? model, byte[]? audio, params (string Name, string Value)[] fields)
    {
        var form = new MultipartFormDataContent();
        if (model is not null)
        {
            form.Add(new StringContent(model), "model");
        }

        foreach (var (name, value) in fields)
        {
            form.Add(new StringContent(value), name);
        }

        if (audio is not null)
        {
            var file = new ByteArrayContent(audio);
            file.Headers.ContentType = new MediaTypeHeaderValue("audio/wav");
            form.Add(file, "file", "speech.wav");
        }

        return form;
    }

    private async Task<(HttpResponseMessage Response, string Text)> PostAsync(HttpContent form, string path = "v1/audio/transcriptions", HttpClient? http = null)
    {
        var response = await (http ?? Http).PostAsync(path, form, Ct);
        return (response, await response.Content.ReadAsStringAsync(Ct));
    }

    private static decimal Cost(HttpResponseMessage response) => decimal.Parse(Header(response, "x-gateway-cost-usd"), System.Globalization.CultureInfo.InvariantCulture);

    [Fact]
    public async Task The_OpenAI_SDK_transcribes_and_translates_through_the_gateway_billed_by_the_minute_alike_everywhere()
    {
        var client = new AudioClient("whisper", new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(Fleet.Base, "v1") });
        var transcription = (await client.TranscribeAudioAsync(new MemoryStream(Wav), "speech.wav", new AudioTranscriptionOptions { ResponseFormat = AudioTranscriptionFormat.Verbose, Language = "en" }, Ct)).Value;
        transcription.Text.Should().NotBeNullOrWhiteSpace();
        transcription.Duration!.Value.TotalSeconds.Should().BeApproximately(3, 0.1, "the WAV's length, as the upstream read it");
        var translation = (await client.TranslateAudioAsync(new MemoryStream(Wav), "speech.wav", cancellationToken: Ct)).Value;
        translation.Text.Should().Be(transcription.Text, "the simulator's words are the audio's, whatever the task");

        // The transcript as the upstream wrote it, byte for byte; whisper-1 by the minute ($0.006): 3 s.
        var (response, through) = await PostAsync(Form("whisper", Wav, ("temperature", "0.2")));
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var (_, direct) = await PostAsync(Form("whisper-1", Wav, ("temperature", "0.2")), "v1/audio/transcriptions", new HttpClient { BaseAddress = Fleet.Sims["sim"].BaseAddress });
        through.Should().Be(direct);
        JsonDocument.Parse(through).RootElement.GetProperty("usage").GetProperty("seconds").GetInt32().Should().Be(3);
        Cost(response).Should().Be(3m / 60m * 0.006m);

        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        row.GetProperty("cost_usd").GetDecimal().Should().Be(Cost(response));
        row.GetProperty("answer").GetString().Should().Be($"[transcription, {Encoding.UTF8.GetByteCount(through)} bytes]");
        row.GetProperty("prompt").GetString().Should().Contain("speech.wav").And.Contain($"{Wav.Length} bytes of audio");
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);
    }

    [Theory]
    [InlineData("text", "text/plain")]
    [InlineData("srt", "text/plain")]
    [InlineData("vtt", "text/plain")]
    [InlineData("verbose_json", "application/json")]
    public async Task Every_format_reaches_the_caller_as_the_upstream_wrote_it(string format, string mediaType)
    {
        var (response, text) = await PostAsync(Form("whisper", Wav, ("response_format", format)));
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        response.Content.Headers.ContentType!.MediaType.Should().Be(mediaType);
        var (_, direct) = await PostAsync(Form("whisper-1", Wav, ("response_format", format)), "v1/audio/transcriptions", new HttpClient { BaseAddress = Fleet.Sims["sim"].BaseAddress });
        text.Should().Be(direct);
        if (format == "vtt")
        {
            text.Should().StartWith("WEBVTT");
        }
    }

    /// <summary>
    /// whisper-1 in <c>text</c>, <c>srt</c> or <c>vtt</c> says no duration: the audio's own length is billed (read
    /// from the file's own structure, every format the API takes), marked estimated — it was billed nothing. The
    /// recordings are ffmpeg's (<c>Server/Audio/README.md</c>): browsers record WebM (Chrome, Firefox) and fragmented
    /// MP4 (Safari), which were billed $0 before.
    /// </summary>
    [Theory]
    [InlineData(null, 3.0)]
    [InlineData("tone.webm", 2.5)]
    [InlineData("tone-live.webm", 2.5)]
    [InlineData("tone-fragmented.mp4", 2.564)]
    [InlineData("tone-opus.ogg", 2.5)]
    public async Task A_transcript_without_usage_is_billed_the_audios_own_length_marked_estimated(string? file, double seconds)
    {
        var (response, text) = await PostAsync(Form("whisper", file is null ? Wav : Recording(file), ("response_format", "srt")));
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        text.Should().StartWith("1\n");
        Cost(response).Should().BeApproximately((decimal)seconds / 60m * 0.006m, 0.000002m);
        var row = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        row.GetProperty("usage_estimated").GetBoolean().Should().BeTrue();
        row.GetProperty("cost_usd").GetDecimal().Should().Be(Cost(response));
    }

    [Fact]
    public void An_audio_files_length_is_read_from_its_own_structure_and_never_from_a_guess()
    {
        AudioDuration.Seconds(Wav).Should().BeApproximately(3, 0.01);
        var mp3 = SimulatedSpeech.Audio(Speech.ToRequest(JsonDocument.Parse("""{"model":"m","input":"one two three four five","voice":"alloy"}""").RootElement).Operation!).List.ToArray();
        AudioDuration.Seconds(mp3).Should().BeApproximately(2, 0.03, "MP3 frames of 1,152 samples at 44.1 kHz");
        AudioDuration.Seconds([.. "ID3\u0004\0\0\0\0\0\u0002xx"u8.ToArray(), .. mp3]).Should().BeApproximately(2, 0.03, "an ID3v2 tag skipped");

        var flac = new byte[42];
        "fLaC"u8.CopyTo(flac);
        flac[18] = 0x0B; flac[19] = 0xB8; flac[20] = 0x00; // 48,000 Hz (20 bits), then channels and bits
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(flac.AsSpan(22), 96_000); // 36-bit total samples, low 32
        AudioDuration.Seconds(flac).Should().Be(2);

        AudioDuration.Seconds("OggS and more bytes"u8).Should().BeNull("a page cut short says no length");
        AudioDuration.Seconds([0x00, 0x00, 0x00, 0x0C, .. "ftypM4A "u8]).Should().BeNull("an MP4 with no movie header is unknown, not guessed");
        AudioDuration.Seconds(mp3.AsSpan(0, 300)).Should().BeNull("one frame's start is no evidence");
        Gen.Byte.Array[0, 4096].Sample(bytes => AudioDuration.Seconds(bytes) is null or >= 0, seed: "0N0XIzNsQ0O4", iter: 20_000 * Fuzz.Scale, threads: 1);
        Gen.Int[0, 8000].Sample(cut => AudioDuration.Seconds(Wav.AsSpan(0, Math.Min(cut, Wav.Length))) is null or >= 0, seed: "0N0XIzNsQ0O5", iter: 2_000, threads: 1);
    }

    /// <summary>A recording made by ffmpeg from a 2.5 s tone (<c>Server/Audio/README.md</c> has the commands).</summary>
    private static byte[] Recording(string name) => File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Server", "Audio", name));

    /// <summary>
    /// Every container the transcription APIs take is timed as ffprobe times it: MP4/M4A by its movie header or, when
    /// fragmented, its fragments' samples; Ogg by its last granule (Opus less its pre-skip, Vorbis at its rate); WebM by its
    /// duration or, recorded live without one, its last block (one 20 ms frame short). Every cut of each file is a length
    /// no longer than the whole, or unknown — never an exception or a made-up number.
    /// </summary>
    [Theory]
    [InlineData("tone.m4a", 2.5, 0.001)]
    [InlineData("tone-fragmented.mp4", 2.564, 0.001)]
    [InlineData("tone-opus.ogg", 2.5, 0.001)]
    [InlineData("tone-vorbis.ogg", 2.5, 0.001)]
    [InlineData("tone.webm", 2.508, 0.001)]
    [InlineData("tone-live.webm", 2.5, 0.03)]
    public void A_recordings_length_is_read_from_its_container(string name, double seconds, double within)
    {
        var audio = Recording(name);
        AudioDuration.Seconds(audio).Should().BeApproximately(seconds, within);
        for (var cut = 0; cut < audio.Length; cut += 7)
        {
            AudioDuration.Seconds(audio.AsSpan(0, cut)).Should().Match(d => d == null || (d > 0 && d <= seconds + within), $"a cut at {cut} bytes");
        }

        Gen.Int[0, audio.Length - 1].Select(Gen.Byte).Sample((at, value) =>
        {
            var broken = (byte[])audio.Clone();
            broken[at] = value;
            return AudioDuration.Seconds(broken) is null or (> 0 and < 86_400);
        }, seed: "0N0XIzNsQ0O6", iter: 3_000, threads: 1);
    }

    [Fact]
    public async Task GPT_4o_transcribe_is_billed_by_the_token_and_the_form_reaches_the_upstream_whole()
    {
        var (response, text) = await PostAsync(Form("gpt-4o-transcribe", Wav, ("prompt", "a test"), ("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment")));
        response.StatusCode.Should().Be(HttpStatusCode.OK);
        var usage = JsonDocument.Parse(text).RootElement.GetProperty("usage");
        Cost(response).Should().Be(((usage.GetProperty("input_tokens").GetInt32() * 6m) + (usage.GetProperty("output_tokens").GetInt32() * 10m)) / 1_000_000m).And.BePositive();
    }

    [Fact]
    public async Task The_adapter_sends_the_callers_form_with_the_deployments_model_and_the_audio_byte_for_byte()
    {
        var stub = new FormCapture("""{"text":"hello","usage":{"type":"duration","seconds":2}}""");
        using var provider = new PipelineGateway.Providers.OpenAI.OpenAIChatProvider("openai", new HttpClient(stub), new ProviderOptions { Name = "openai", Type = ProviderTypes.OpenAI, BaseUrl = "https://api.example.test/v1" }, "sk-test", TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var request = Transcriptions.ToRequest(OperationKind.Translation, [new("model", "group"), new("prompt", "p"), new("include[]", "logprobs"), new("include[]", "x")], new Upload(Wav, "a.wav", "audio/wav"));

        var response = Operations.Accept(await provider.SendAsync(new ProviderRequest(request, "whisper-1"), Ct), request, "openai");

        stub.Uri.Should().Be("https://api.example.test/v1/audio/translations");
        stub.MediaType.Should().Be("multipart/form-data");
        var sent = await stub.ReadAsync(Ct);
        sent.Fields.Should().Equal(("model", "whisper-1"), ("prompt", "p"), ("include[]", "logprobs"), ("include[]", "x"));
        (sent.FileName, sent.File).Should().Be(("a.wav", Convert.ToBase64String(Wav)));
        Encoding.UTF8.GetString(response.Operation!.List.Span).Should().Be("""{"text":"hello","usage":{"type":"duration","seconds":2}}""");
        PipelineGateway.Providers.Transcriptions.Seconds(response.Usage!).Should().Be(2);
    }

    [Fact]
    public async Task A_provider_without_the_API_is_passed_over_unsent_and_the_upload_bound_holds()
    {
        var (mixed, _) = await PostAsync(Form("stt-mixed", Wav));
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        var (refused, error) = await PostAsync(Form("stt-claude", Wav));
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        error.Should().Contain("no transcription API");
        Fleet.Sims["claude"].Requests.Should().Be(0);

        // Above the JSON bound (64 KiB here) but within the upload bound (256 KiB): served; above that: 413.
        var big = new byte[200 * 1024];
        Wav.CopyTo(big, 0);
        (await PostAsync(Form("whisper", big))).Response.StatusCode.Should().Be(HttpStatusCode.OK);
        using var tooBigRequest = new HttpRequestMessage(HttpMethod.Post, "v1/audio/transcriptions") { Content = Form("whisper", new byte[300 * 1024]) };
        tooBigRequest.Headers.ExpectContinue = true; // refused before the body is sent, as a careful client asks
        using var tooBig = await Http.SendAsync(tooBigRequest, Ct);
        var refusal = await tooBig.Content.ReadAsStringAsync(Ct);
        tooBig.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge);
        refusal.Should().Contain("262144");
        var unsized = Form("whisper", null);
        unsized.Add(new UnsizedContent(new byte[300 * 1024]), "file", "speech.wav");
        using var chunked = await Http.PostAsync("v1/audio/transcriptions", unsized, Ct);
        chunked.StatusCode.Should().Be(HttpStatusCode.RequestEntityTooLarge, "a body past the bound with no length announced is as large (it was a 400)");
        var (json, _) = await PostAsync(new StringContent(new string('x', 100_000), Encoding.UTF8, "application/json"));
        json.StatusCode.Should().BeOneOf(HttpStatusCode.RequestEntityTooLarge, HttpStatusCode.UnsupportedMediaType);
    }

    [Fact]
    public async Task Azures_routes_serve_the_deployment_in_their_path()
    {
        var (response, text) = await PostAsync(Form(null, Wav), "openai/deployments/whisper/audio/transcriptions?api-version=2024-10-21");
        response.StatusCode.Should().Be(HttpStatusCode.OK, text);
        var (translated, _) = await PostAsync(Form(null, Wav), "openai/deployments/whisper/audio/translations?api-version=2024-10-21");
        translated.StatusCode.Should().Be(HttpStatusCode.OK);
    }

    public static TheoryData<string, string?> BadForms() => new()
    {
        { "no-model", "model" },
        { "no-file", "file" },
        { "empty-file", "file" },
        { "two-files", "file" },
        { "format", "response_format" },
        { "temperature", "temperature" },
        { "stream", "stream" },
        { "granularity", "timestamp_granularities[]" },
        { "two-models", "model" },
        { "json", null },
        { "no-boundary", null },
    };

    [Theory]
    [MemberData(nameof(BadForms))]
    public async Task A_bad_form_is_a_4xx_naming_its_field_and_reaches_no_upstream(string bad, string? param)
    {
        HttpContent form = bad switch
        {
            "no-model" => Form(null, Wav),
            "no-file" => Form("whisper", null),
            "empty-file" => Form("whisper", []),
            "two-files" => WithSecondFile(Form("whisper", Wav)),
            "format" => Form("whisper", Wav, ("response_format", "xml")),
            "temperature" => Form("whisper", Wav, ("temperature", "1.5")),
            "stream" => Form("whisper", Wav, ("stream", "sometimes")),
            "granularity" => Form("whisper", Wav, ("timestamp_granularities[]", "sentence")),
            "two-models" => Form("whisper", Wav, ("model", "whisper")),
            "json" => new StringContent("""{"model":"whisper"}""", Encoding.UTF8, "application/json"),
            _ => new StringContent("--x\r\n", Encoding.UTF8, "multipart/form-data"),
        };
        var (response, text) = await PostAsync(form);
        ((int)response.StatusCode).Should().BeOneOf(400, 415);
        var e = FrontDoorTests.ErrorIn("v1/audio/transcriptions", JsonDocument.Parse(text).RootElement);
        (e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString()).Should().Be(param);
        Fleet.Sims["sim"].Requests.Should().Be(0);

        static MultipartFormDataContent WithSecondFile(MultipartFormDataContent form)
        {
            form.Add(new ByteArrayContent([1, 2, 3]), "file2", "b.wav");
            return form;
        }
    }

    /// <summary>
    /// Hostile forms written byte by byte: a file name that decodes to a line break (RFC 5987's <c>filename*</c>) is
    /// answered with the name made safe (it goes upstream in a header), a field name that does is refused, a form cut
    /// before its closing boundary is a 400 — none of them a 5xx, nothing half-sent.
    /// </summary>
    [Theory]
    [InlineData("filename*=UTF-8''a%0D%0AX-Evil%3A%201.wav", "file", HttpStatusCode.OK)]
    [InlineData("filename=\"../../etc/passwd\"", "file", HttpStatusCode.OK)]
    [InlineData("filename=\"a.wav\"", "name*=UTF-8''x%0D%0Ay", HttpStatusCode.BadRequest)]
    [InlineData("filename=\"a.wav\"", "cut", HttpStatusCode.BadRequest)]
    public async Task A_hostile_form_is_answered_safely_or_refused_never_a_5xx(string fileName, string variant, HttpStatusCode expected)
    {
        const string Boundary = "XyZ";
        var body = new MemoryStream();
        void Write(string text) => body.Write(Encoding.UTF8.GetBytes(text));
        Write($"--{Boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n");
        Write($"--{Boundary}\r\nContent-Disposition: form-data; name=\"file\"; {fileName}\r\nContent-Type: audio/wav\r\n\r\n");
        body.Write(Wav);
        Write("\r\n");
        if (variant.StartsWith("name*", StringComparison.Ordinal))
        {
            Write($"--{Boundary}\r\nContent-Disposition: form-data; {variant}\r\n\r\nv\r\n");
        }

        Write($"--{Boundary}--\r\n");
        var bytes = body.ToArray();
        var content = new ByteArrayContent(variant == "cut" ? bytes[..^12] : bytes);
        content.Headers.TryAddWithoutValidation("Content-Type", $"multipart/form-data; boundary={Boundary}");

        var (response, text) = await PostAsync(content);

        response.StatusCode.Should().Be(expected, text);
        if (expected != HttpStatusCode.OK)
        {
            FrontDoorTests.ErrorIn("v1/audio/transcriptions", JsonDocument.Parse(text).RootElement);
            Fleet.Sims["sim"].Requests.Should().Be(0);
        }
    }

    [Fact]
    public void A_file_name_goes_upstream_safe_whatever_the_caller_sent()
    {
        Gen.Char.Array[0, 400].Select(static c => new string(c)).Sample(name =>
        {
            var safe = Upload.SafeName(name);
            safe.Length.Should().BeInRange(1, 255);
            safe.Should().NotContainAny("\"", "\\", "/", "\r", "\n");
            safe.Where(char.IsControl).Should().BeEmpty();
            Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(safe)).Should().Be(safe, "no half of a surrogate pair");
            using var form = new MultipartFormDataContent { { new ByteArrayContent([1]), "file", safe } }; // a header it can write
            form.Headers.ContentType.Should().NotBeNull();
        }, seed: "0N0XIzNsQ0O3", iter: 20_000 * Fuzz.Scale, threads: 1);
        Upload.SafeName("../../a\\b.wav").Should().Be("b.wav");
        Upload.SafeName("\r\n").Should().Be("audio");
    }

    [Fact]
    public void Any_set_of_form_fields_is_refused_with_a_request_error_or_read_into_a_request_with_its_audio()
    {
        var names = new[] { "model", "response_format", "temperature", "language", "prompt", "stream", "timestamp_granularities[]", "include[]", "x" };
        var values = new[] { "whisper-1", "json", "text", "srt", "verbose_json", "vtt", "xml", "0", "0.5", "1", "2", "-1", "NaN", "true", "false", "word", "segment", "", "é", "\u0000" };
        var gen = Gen.Select(Gen.OneOf(names), Gen.OneOf(values)).Array[0, 8].Select(fields => fields.Select(f => new KeyValuePair<string, string>(f.Item1, f.Item2)).ToList());
        var accepted = 0;
        gen.Sample(fields =>
        {
            try
            {
                var request = Transcriptions.ToRequest(OperationKind.Transcription, fields, new Upload(Wav, "a.wav", "audio/wav"));
                accepted++;
                request.Operation!.Upload!.Bytes.Length.Should().Be(Wav.Length);
                request.Model.Should().NotBeNullOrEmpty();
                Forms.Upstream(request.Operation, "m").Should().NotBeNull();
            }
            catch (InvalidRequestException)
            {
                // The endpoint's 400.
            }
        }, seed: "0N0XIzNsQ0O2", iter: 20_000 * Fuzz.Scale, threads: 1);
        accepted.Should().BePositive();
    }

    /// <summary>
    /// Any event a streamed transcription's upstream may send — each kind, its members of the wrong type or missing, an
    /// error object, not an object, cut anywhere — is read into a chunk that keeps its bytes (a delta's text as its
    /// content, the done event finishing with its usage), an upstream error, or a JsonException the stream reports as
    /// an invalid event: never another exception (CsCheck, fixed seed).
    /// </summary>
    [Fact]
    public void Any_transcription_stream_event_is_a_chunk_keeping_its_bytes_an_upstream_error_or_a_JsonException()
    {
        var types = new[] { "transcript.text.delta", "transcript.text.done", "transcript.text.segment", "other", "" };
        var gen = Gen.Select(Gen.OneOf(types), Gen.String[0, 12], Gen.Int[0, 6], Gen.Int[-5, 400], Gen.Int[0, 3]);
        var kinds = new HashSet<string>();
        gen.Sample((type, text, shape, number, cut) =>
        {
            var quoted = JsonSerializer.Serialize(text);
            var json = shape switch
            {
                0 => $$"""{"type":"{{type}}","delta":{{quoted}}}""",
                1 => $$$"""{"type":"{{{type}}}","text":{{{quoted}}},"usage":{"type":"tokens","input_tokens":{{{number}}},"output_tokens":3,"total_tokens":{{{number + 3}}}}}""",
                2 => $$$"""{"error":{"message":{{{quoted}}},"type":"server_error"}}""",
                3 => $$"""{"type":"{{type}}","delta":{{number}},"text":null}""",
                4 => $"[{quoted}]",
                5 => "null",
                _ => $$$"""{"type":"{{{type}}}","text":{{{quoted}}},"usage":{"type":"duration","seconds":{{{number}}}}}""",
            };
            var bytes = Encoding.UTF8.GetBytes(json);
            if (cut > 0)
            {
                bytes = bytes[..(bytes.Length * cut / 4)];
            }

            try
            {
                var chunk = Transcriptions.ReadEvent(bytes, "m", 1, out var error, out var done);
                if (error is not null)
                {
                    chunk.Should().BeNull();
                    kinds.Add("error");
                    return;
                }

                chunk!.EventJson.ToArray().Should().Equal(bytes, "the event's bytes are kept as they came");
                chunk.Choices.Should().ContainSingle();
                done.Should().Be(type == "transcript.text.done");
                chunk.Finishes.Should().Be(done);
                if (type == "transcript.text.delta")
                {
                    chunk.Choices[0].Delta.Content.Should().Be(text);
                }

                (chunk.Id, chunk.Model, chunk.Created).Should().Be(("transcript", "m", 1L), "nothing left for the worker to fill (which would drop the bytes)");
                kinds.Add(done ? "done" : "chunk");
            }
            catch (JsonException)
            {
                kinds.Add("invalid");
            }
        }, seed: "0N0XIzNsQ0O4", iter: 5_000 * Fuzz.Scale, threads: 1);
        kinds.Should().BeEquivalentTo(["error", "done", "chunk", "invalid"]);
    }

    /// <summary>The <c>data:</c> events of a streamed answer, each parsed (a transcription's stream has no <c>[DONE]</c>).</summary>
    private static List<JsonElement> Events(string text) =>
        [.. text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e.Trim()).Where(e => e.StartsWith("data: ", StringComparison.Ordinal)).Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.Clone())];

    /// <summary>
    /// A transcription asked with <c>stream=true</c> (gpt-4o-transcribe) reaches the caller as the upstream's own events —
    /// a <c>transcript.text.delta</c> per piece, with the logprobs asked for, then <c>transcript.text.done</c> with the
    /// whole text and the usage, no <c>[DONE]</c> — the form sent on with its <c>stream</c>, and it is billed exactly
    /// as the same transcription answered whole: the log and the metrics agree.
    /// </summary>
    [Fact]
    public async Task A_streamed_transcription_reaches_the_caller_as_the_upstreams_events_and_is_billed_as_a_whole_one()
    {
        var (response, text) = await PostAsync(Form("gpt-4o-transcribe", Wav, ("stream", "true"), ("include[]", "logprobs")));
        response.StatusCode.Should().Be(HttpStatusCode.OK, text);
        response.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        Header(response, "x-gateway-provider").Should().Be("sim");
        text.Should().NotContain("[DONE]");
        var events = Events(text);
        var deltas = events.SkipLast(1).ToList();
        deltas.Should().HaveCountGreaterThan(1).And.AllSatisfy(e =>
        {
            e.GetProperty("type").GetString().Should().Be("transcript.text.delta");
            e.GetProperty("logprobs")[0].GetProperty("token").GetString().Should().Be(e.GetProperty("delta").GetString(), "the upstream's event as it came");
        });
        var done = events[^1];
        done.GetProperty("type").GetString().Should().Be("transcript.text.done");
        done.GetProperty("text").GetString().Should().Be(string.Concat(deltas.Select(e => e.GetProperty("delta").GetString())));
        var usage = done.GetProperty("usage");

        var (whole, wholeText) = await PostAsync(Form("gpt-4o-transcribe", Wav, ("include[]", "logprobs")));
        var wholeAnswer = JsonDocument.Parse(wholeText).RootElement;
        wholeAnswer.GetProperty("text").GetString().Should().Be(done.GetProperty("text").GetString());
        usage.GetProperty("input_tokens").GetInt32().Should().Be(wholeAnswer.GetProperty("usage").GetProperty("input_tokens").GetInt32());
        var streamed = await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct);
        streamed.GetProperty("cost_usd").GetDecimal().Should().Be(Cost(whole)).And.BePositive();
        (streamed.GetProperty("prompt_tokens").GetInt32(), streamed.GetProperty("completion_tokens").GetInt32()).Should().Be((usage.GetProperty("input_tokens").GetInt32(), usage.GetProperty("output_tokens").GetInt32()));
        streamed.GetProperty("stream").GetBoolean().Should().BeTrue();
        streamed.GetProperty("answer").GetString().Should().Be("[transcription, streamed]");
        await Fleet.SpendShouldBeTheMetricsAsync(Ct);
    }

    /// <summary>
    /// whisper-1 ignores <c>stream</c> and answers whole, in any format (as OpenAI documents): the caller still gets the
    /// stream it asked for — the text, then <c>transcript.text.done</c> with the usage (the seconds whisper-1 reports, or
    /// the audio's own length when its format says none) — billed as the whole answer.
    /// </summary>
    [Theory]
    [InlineData("json")]
    [InlineData("text")]
    public async Task A_whole_answer_to_a_streamed_transcription_still_reaches_the_caller_as_its_events(string format)
    {
        var (response, text) = await PostAsync(Form("whisper", Wav, ("stream", "true"), ("response_format", format)));
        response.StatusCode.Should().Be(HttpStatusCode.OK, text);
        var events = Events(text);
        events.Select(e => e.GetProperty("type").GetString()).Should().EndWith("transcript.text.done").And.Contain("transcript.text.delta");
        var done = events[^1];
        done.GetProperty("text").GetString().Should().Be(string.Concat(events.SkipLast(1).Select(e => e.GetProperty("delta").GetString())).TrimEnd('\n')).And.NotBeNullOrWhiteSpace();
        done.GetProperty("usage").GetProperty("type").GetString().Should().Be("duration");
        var seconds = done.GetProperty("usage").GetProperty("seconds").GetDouble();
        seconds.Should().BeApproximately(3, 0.01, "the seconds whisper-1 reports, or (text) the WAV's own length");
        (await Fleet.LogRowAsync(Header(response, "x-request-id"), Ct)).GetProperty("cost_usd").GetDecimal().Should().Be((decimal)seconds / 60m * 0.006m);
    }

    /// <summary>
    /// A provider that cannot stream a transcription (Anthropic's) is passed over unsent; with none that can, a 400 naming
    /// <c>stream</c>. A translation does not stream (OpenAI's has no <c>stream</c>): a 400 too, as is a <c>stream</c> that
    /// is not a boolean.
    /// </summary>
    [Fact]
    public async Task A_streamed_transcription_goes_only_where_it_can_stream_and_bad_stream_fields_are_refused()
    {
        var (mixed, text) = await PostAsync(Form("stt-mixed", Wav, ("stream", "true")));
        (mixed.StatusCode, Header(mixed, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        Events(text)[^1].GetProperty("type").GetString().Should().Be("transcript.text.done");
        var (refused, error) = await PostAsync(Form("stt-claude", Wav, ("stream", "true")));
        refused.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        JsonDocument.Parse(error).RootElement.GetProperty("error").GetProperty("param").GetString().Should().Be("stream");
        Fleet.Sims["claude"].Requests.Should().Be(0);

        foreach (var (path, value) in new[] { ("v1/audio/translations", "true"), ("v1/audio/transcriptions", "yes") })
        {
            var (bad, why) = await PostAsync(Form("whisper", Wav, ("stream", value)), path);
            bad.StatusCode.Should().Be(HttpStatusCode.BadRequest);
            JsonDocument.Parse(why).RootElement.GetProperty("error").GetProperty("param").GetString().Should().Be("stream");
        }
    }

    /// <summary>
    /// A streamed transcription that fails after its first words ends with an error event — the upstream's status kept,
    /// its key never echoed — and one cut before <c>transcript.text.done</c> ends with an error event too: never a
    /// stream that just stops as if it were whole. One that fails before any text fails over to the next deployment.
    /// </summary>
    [Fact]
    public async Task A_streamed_transcription_that_breaks_ends_with_an_error_event_and_fails_over_before_its_first_words()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        const string KeyVariable = "PGW_TEST_STT_STREAM_KEY";
        const string UpstreamKey = "sk-stt-stream-secret-0123456789";
        Environment.SetEnvironmentVariable(KeyVariable, UpstreamKey);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["transcript-error-mid", "transcript-cut", "stream-error-first"], "gpt-4o-transcribe", Ct, KeyVariable);
        foreach (var model in new[] { "transcript-error-mid", "transcript-cut" })
        {
            var (response, text) = await PostAsync(Form(model, Wav, ("stream", "true")), http: gateway.Http);
            response.StatusCode.Should().Be(HttpStatusCode.OK, "the stream had started");
            var events = Events(text);
            events[0].GetProperty("delta").GetString().Should().Be("Hello");
            events[^1].GetProperty("error").GetProperty("message").GetString().Should().NotBeNullOrEmpty(model);
            events.Select(e => e.TryGetProperty("type", out var t) ? t.GetString() : null).Should().NotContain("transcript.text.done", model);
            text.Should().NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);
        }

        var (failedOver, answer) = await PostAsync(Form("stream-error-first-then-sim", Wav, ("stream", "true")), http: gateway.Http);
        (failedOver.StatusCode, Header(failedOver, "x-gateway-provider")).Should().Be((HttpStatusCode.OK, "sim"));
        Events(answer)[^1].GetProperty("type").GetString().Should().Be("transcript.text.done");
    }

    [Fact]
    public async Task An_upstream_answer_that_is_no_transcript_fails_over_and_upstream_refusals_keep_their_status_without_the_key()
    {
        await using var scripted = await ScriptedUpstream.StartAsync(Ct);
        const string KeyVariable = "PGW_TEST_STT_SCRIPTED_KEY";
        const string UpstreamKey = "sk-stt-upstream-secret-0123456789";
        Environment.SetEnvironmentVariable(KeyVariable, UpstreamKey);
        await using var gateway = await ScriptedGateway.StartAsync(Fleet.Sims["sim"].BaseAddress, scripted, ["embeddings-chat", "embeddings-404", "echo-400"], "whisper-1", Ct, KeyVariable);
        var http = gateway.Http;
        async Task<(HttpStatusCode Status, string Text, string Provider)> Transcribe(string model)
        {
            var (response, text) = await PostAsync(Form(model, Wav), http: http);
            return (response.StatusCode, text, Header(response, "x-gateway-provider"));
        }

        // A chat completion where a transcript was asked: no 'text' — the provider's failure, and the next deployment's answer.
        var (status, text, _) = await Transcribe("embeddings-chat");
        status.Should().Be(HttpStatusCode.BadGateway);
        text.Should().Contain("not a usable transcription");
        (await Transcribe("embeddings-chat-then-sim")).Should().Match<(HttpStatusCode Status, string Text, string Provider)>(r => r.Status == HttpStatusCode.OK && r.Provider == "sim");

        var (chatOnly, refusal, _) = await Transcribe("embeddings-404");
        chatOnly.Should().Be(HttpStatusCode.BadRequest);
        refusal.Should().Contain("serves no transcription");
        (await Transcribe("embeddings-404-then-sim")).Status.Should().Be(HttpStatusCode.OK);

        var (rejected, rejection, _) = await Transcribe("echo-400");
        rejected.Should().Be(HttpStatusCode.BadRequest);
        rejection.Should().Contain("temperature is too high").And.NotContain(UpstreamKey).And.NotContain(UpstreamKey[..12]);
    }

    /// <summary>An upstream that answers <paramref name="answer"/> and keeps the multipart request it got, to read its fields and file.</summary>
    private sealed class FormCapture(string answer) : HttpMessageHandler
    {
        private byte[] _body = [];
        private string _boundary = string.Empty;

        public string? Uri { get; private set; }

        public string? MediaType { get; private set; }

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Uri = request.RequestUri!.ToString();
            MediaType = request.Content!.Headers.ContentType!.MediaType;
            _boundary = request.Content.Headers.ContentType.Parameters.Single(p => p.Name == "boundary").Value!.Trim('"');
            _body = await request.Content.ReadAsByteArrayAsync(cancellationToken);
            return new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent(answer, Encoding.UTF8, "application/json") };
        }

        public async Task<(List<(string, string)> Fields, string? FileName, string? File)> ReadAsync(CancellationToken ct)
        {
            var reader = new Microsoft.AspNetCore.WebUtilities.MultipartReader(_boundary, new MemoryStream(_body));
            var fields = new List<(string, string)>();
            string? fileName = null, file = null;
            while (await reader.ReadNextSectionAsync(ct) is { } section)
            {
                var disposition = ContentDispositionHeaderValue.Parse(section.ContentDisposition!);
                var name = disposition.Name!.Trim('"');
                using var body = new MemoryStream();
                await section.Body.CopyToAsync(body, ct);
                if (disposition.FileName is { } f)
                {
                    (fileName, file) = (f.Trim('"'), Convert.ToBase64String(body.ToArray()));
                }
                else
                {
                    fields.Add((name, Encoding.UTF8.GetString(body.ToArray())));
                }
            }

            return (fields, fileName, file);
        }
    }
}
