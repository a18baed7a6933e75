using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>An uploaded file of a multipart request (the audio of a transcription): its bytes, name and media type.</summary>
internal sealed record Upload(ReadOnlyMemory<byte> Bytes, string FileName, string? ContentType)
{
    /// <summary>
    /// A caller's file name as it may go upstream (in a part's <c>Content-Disposition</c>) and into the log: its last path
    /// segment, without control characters, quotes or backslashes (a header line must not be broken or forged), at most
    /// 255 characters; <c>audio</c> when nothing is left.
    /// </summary>
    public static string SafeName(string? name)
    {
        var last = (name ?? string.Empty).Split('/', '\\')[^1];
        var kept = new System.Text.StringBuilder(Math.Min(last.Length, 255));
        for (var i = 0; i < last.Length && kept.Length < 255; i++)
        {
            var c = last[i];
            if (char.IsHighSurrogate(c) && i + 1 < last.Length && char.IsLowSurrogate(last[i + 1]))
            {
                if (kept.Length + 2 <= 255)
                {
                    kept.Append(c).Append(last[++i]); // a whole pair, never half of one
                }
                else
                {
                    break;
                }
            }
            else if (!char.IsControl(c) && !char.IsSurrogate(c) && c is not ('"' or '\\'))
            {
                kept.Append(c);
            }
        }

        var safe = kept.ToString().Trim();
        return safe.Length == 0 ? "audio" : safe;
    }
}

/// <summary>
/// OpenAI's speech-to-text requests (<c>POST /v1/audio/transcriptions</c>, <c>/v1/audio/translations</c>: multipart
/// forms) as the pipeline carries them (<see cref="Operations"/>): the form's text fields as a JSON object (each a string,
/// a repeated field — <c>timestamp_granularities[]</c>, <c>include[]</c> — a list of strings), what the upstream gets
/// again as a form with the deployment's model; the audio as an <see cref="Upload"/>. The answer is kept as it came: JSON
/// (<c>json</c>, <c>verbose_json</c>: checked to hold a <c>text</c>) or plain text (<c>text</c>, <c>srt</c>, <c>vtt</c>).
/// Billed from the answer's usage: tokens (gpt-4o-transcribe), or seconds of audio (whisper-1's
/// <c>{"type":"duration","seconds":…}</c>, verbose_json's <c>duration</c>) at <see cref="Cost.ModelPrice.PerAudioMinute"/>.
/// </summary>
internal static class Transcriptions
{
    /// <summary>OpenAI's bound on the audio file.</summary>
    public const int MaxFileBytes = 25 * 1024 * 1024;

    private static readonly string[] Formats = ["json", "text", "srt", "verbose_json", "vtt"];

    /// <summary>The usage member that carries seconds of audio for pricing; never written out.</summary>
    private const string SecondsMember = "audio_seconds";

    /// <summary>
    /// Checks a form's fields and file and makes the pipeline's request: <c>model</c> (unless the route names one),
    /// <c>file</c> (non-empty, at most <see cref="MaxFileBytes"/>), <c>response_format</c>, <c>temperature</c> (0–1),
    /// <c>language</c>, <c>prompt</c>, <c>timestamp_granularities[]</c> (<c>word</c>, <c>segment</c>), <c>stream</c> (a
    /// transcription's only: its text as <c>transcript.text.*</c> events, <see cref="TranscriptEvents"/>). Other fields are
    /// sent on as they came.
    /// </summary>
    /// <exception cref="InvalidRequestException">A field is missing or not what the API allows; its name is the error's param.</exception>
    public static ChatCompletionRequest ToRequest(OperationKind kind, IReadOnlyList<KeyValuePair<string, string>> fields, Upload? file, string? route = null)
    {
        Forms.CheckNames(fields);
        string? Field(string name) => Forms.Field(fields, name);

        var model = route ?? Field("model");
        if (string.IsNullOrEmpty(model))
        {
            throw new InvalidRequestException("model", "'model' is required: a form field naming a speech-to-text model.");
        }

        if (file is null || file.Bytes.IsEmpty)
        {
            throw new InvalidRequestException("file", "'file' is required: the audio to transcribe, as a file part of the form (flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav or webm).");
        }

        if (file.Bytes.Length > MaxFileBytes)
        {
            throw new InvalidRequestException("file", $"'file' must be at most {MaxFileBytes / (1024 * 1024)} MB (it has {file.Bytes.Length} bytes).");
        }

        Format(Field("response_format"));
        if (Field("temperature") is { } t && !(double.TryParse(t, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var temperature) && temperature is >= 0 and <= 1))
        {
            throw new InvalidRequestException("temperature", "'temperature' must be a number from 0 to 1.");
        }

        var streamed = Field("stream") switch
        {
            null => false,
            var s when s.Equals("false", StringComparison.OrdinalIgnoreCase) => false,
            var s when s.Equals("true", StringComparison.OrdinalIgnoreCase) => kind == OperationKind.Transcription
                ? true
                : throw new InvalidRequestException("stream", "A translation is answered whole: 'stream' is a transcription's (as OpenAI's API has it)."),
            _ => throw new InvalidRequestException("stream", "'stream' must be true or false."),
        };

        foreach (var (key, value) in fields)
        {
            if (key is "timestamp_granularities[]" or "timestamp_granularities" && value is not ("word" or "segment"))
            {
                throw new InvalidRequestException("timestamp_granularities[]", "'timestamp_granularities[]' must be \"word\" or \"segment\".");
            }
        }

        if (kind == OperationKind.Translation && Field("language") is not null)
        {
            throw new InvalidRequestException("language", "A translation takes no 'language': its answer is English.");
        }

        var prompt = Field("prompt");
        return new ChatCompletionRequest
        {
            Model = model,
            Messages = [ChatCompletionMessage.User($"[{file.FileName}, {file.Bytes.Length} bytes of audio]{(prompt is null ? string.Empty : "\n\n" + prompt)}")],
            Temperature = null, // a transcription's temperature is no reason to keep it from the cache: it is never cached
            Stream = streamed ? true : null,
            Operation = new OperationRequest(kind, Forms.Json(fields, model)) { Files = [new FilePart("file", file)] },
        };
    }

    /// <summary>The answer format a request asks for (<c>json</c> when left out).</summary>
    public static string Format(string? format) =>
        format is null ? "json"
        : Array.IndexOf(Formats, format) >= 0 ? format
        : throw new InvalidRequestException("response_format", $"'response_format' must be one of {string.Join(", ", Formats)}.");

    /// <summary>The answer format of a checked request.</summary>
    public static string Format(OperationRequest operation) =>
        Format(operation.Body.TryGetProperty("response_format", out var f) && f.ValueKind == JsonValueKind.String ? f.GetString() : null);

    /// <summary>Prompt tokens at admission: the <c>prompt</c> field's (the audio's are known only from the answer).</summary>
    public static int PromptTokens(OperationRequest operation, Func<string, int> count) =>
        operation.Body.TryGetProperty("prompt", out var p) && p.ValueKind == JsonValueKind.String ? count(p.GetString()!) : 0;

    /// <summary>
    /// An upstream's answer, for <paramref name="format"/>: JSON with a <c>text</c> (its usage read: tokens, or seconds of
    /// audio), or plain text — unless it is a JSON object with an <c>error</c> (<paramref name="error"/>) or, where JSON was
    /// asked, without a <c>text</c> (no answer: the provider's failure).
    /// </summary>
    public static ChatCompletionResponse ReadAnswer(OperationKind kind, string format, ReadOnlyMemory<byte> body, bool copy, out JsonElement? error)
    {
        error = null;
        var json = format is "json" or "verbose_json";
        var response = new ChatCompletionResponse { Choices = [] };
        var start = body.Span.IndexOfAnyExcept(" \t\r\n"u8);
        if (start >= 0 && body.Span[start] == (byte)'{')
        {
            try
            {
                using var doc = JsonDocument.Parse(body);
                var root = doc.RootElement;
                if (root.TryGetProperty("error", out var e))
                {
                    error = e.Clone();
                    return response;
                }

                if (!json || !root.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                {
                    return response; // JSON without a transcript, or JSON where text was asked: no answer
                }

                response.Usage = Usage(root);
            }
            catch (JsonException)
            {
                if (json)
                {
                    return response;
                }
            }
        }
        else if (json || body.IsEmpty)
        {
            return response;
        }

        response.Operation = new OperationAnswer(kind, copy ? body.ToArray() : body, 1)
        {
            MediaType = json ? "application/json" : "text/plain; charset=utf-8",
        };
        return response;
    }

    /// <summary>
    /// One event of a streamed transcription (<see cref="TranscriptEvents"/>) as a chunk that keeps the event's bytes: a
    /// <c>transcript.text.delta</c> its text as the delta's content, <c>transcript.text.done</c> a finishing chunk with the
    /// usage (<paramref name="done"/>), any other (<c>transcript.text.segment</c>, a type to come) a chunk without content;
    /// an object with an <c>error</c> is <paramref name="error"/> (no chunk).
    /// </summary>
    /// <exception cref="JsonException">The event is not JSON, not an object, or a delta or done event without its text.</exception>
    public static ChatCompletionChunk? ReadEvent(ReadOnlySpan<byte> data, string model, long created, out JsonElement? error, out bool done)
    {
        done = false;
        using var doc = Operations.ParseEvent(data, "A transcription event", out error, out var type);
        if (doc is null)
        {
            return null;
        }

        var root = doc.RootElement;
        var choice = new ChunkChoice();
        TokenUsage? usage = null;
        if (type == "transcript.text.delta")
        {
            choice.Delta.Content = root.TryGetProperty("delta", out var d) && d.ValueKind == JsonValueKind.String ? d.GetString() : throw new JsonException("A transcript.text.delta event has no 'delta' string.");
        }
        else if (type == "transcript.text.done")
        {
            _ = root.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String ? text : throw new JsonException("A transcript.text.done event has no 'text' string.");
            choice.FinishReason = "stop";
            usage = Usage(root);
            done = true;
        }

        // The members a chunk must have, set here: filling them later would drop the kept bytes (ProviderAnswer.Fill).
        var chunk = new ChatCompletionChunk { Id = "transcript", Created = created, Model = model, Choices = [choice], Usage = usage };
        chunk.KeepEventJson(data, membersUnread: false);
        return chunk;
    }

    /// <summary>
    /// A whole transcription answer where a stream was asked (whisper-1 ignores <c>stream</c>, as OpenAI documents) as a
    /// chat answer the stream path replays as chunks: its text as the message, its usage (the audio's length when it
    /// says none); null when it is no transcript (<paramref name="error"/> set when it is an error object).
    /// </summary>
    public static ChatCompletionResponse? AsStreamAnswer(OperationRequest operation, string model, ReadOnlySpan<byte> body, out JsonElement? error)
    {
        var format = Format(operation);
        var read = ReadAnswer(operation.Kind, format, body.ToArray(), copy: false, out error);
        if (read.Operation is not { } answer)
        {
            return null;
        }

        string text;
        if (format is "json" or "verbose_json")
        {
            using var doc = JsonDocument.Parse(answer.List);
            text = doc.RootElement.GetProperty("text").GetString()!;
        }
        else
        {
            text = System.Text.Encoding.UTF8.GetString(answer.List.Span).TrimEnd('\r', '\n'); // the text format's closing line end
        }

        var response = new ChatCompletionResponse
        {
            Model = model,
            Choices = [new ChatChoice { Index = 0, Message = ChatCompletionMessage.Assistant(text), FinishReason = "stop" }],
            Usage = read.Usage,
        };
        BillUncounted(response, operation);
        return response;
    }

    /// <summary>
    /// A streamed transcription's closing event as the gateway writes it when the upstream's own did not come through
    /// (an answer given whole, a provider of another shape): the whole text and, when known, the usage in OpenAI's form
    /// (tokens, or seconds of audio).
    /// </summary>
    public static byte[] DoneEvent(string text, TokenUsage? usage)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256 + text.Length);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("type", "transcript.text.done");
            w.WriteString("text", text);
            if (usage is not null && Seconds(usage) is > 0 and var seconds && usage.TotalTokens == 0)
            {
                w.WriteStartObject("usage");
                w.WriteString("type", "duration");
                w.WriteNumber("seconds", seconds);
                w.WriteEndObject();
            }
            else if (usage is not null)
            {
                w.WriteStartObject("usage");
                w.WriteString("type", "tokens");
                w.WriteNumber("input_tokens", usage.PromptTokens);
                w.WriteNumber("output_tokens", usage.CompletionTokens);
                w.WriteNumber("total_tokens", usage.TotalTokens);
                w.WriteEndObject();
            }

            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A <c>transcript.text.delta</c> event of <paramref name="delta"/>, as the gateway writes one for a provider whose chunks carry no event bytes.</summary>
    public static byte[] DeltaEvent(string delta)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(64 + delta.Length);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("type", "transcript.text.delta");
            w.WriteString("delta", delta);
            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>The answer's usage: tokens (<c>input_tokens</c>, <c>output_tokens</c>), or seconds of audio (<c>seconds</c>, or verbose_json's <c>duration</c>).</summary>
    private static TokenUsage? Usage(JsonElement root)
    {
        double? seconds = root.TryGetProperty("duration", out var d) && d.ValueKind == JsonValueKind.Number ? d.GetDouble() : null;
        TokenUsage? usage = null;
        if (root.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object)
        {
            if (u.TryGetProperty("seconds", out var s) && s.ValueKind == JsonValueKind.Number)
            {
                seconds = s.GetDouble();
            }

            int Count(string name) => u.TryGetProperty(name, out var n) && n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out var c) && c >= 0 ? c : 0;
            if (Count("input_tokens") + Count("output_tokens") > 0)
            {
                usage = TokenUsage.Of(Count("input_tokens"), Count("output_tokens"));
            }
        }

        if (seconds is > 0 and < 1e7)
        {
            SetSeconds(usage ??= new TokenUsage(), seconds.Value);
        }

        return usage;
    }

    /// <summary>Marks the seconds of audio a usage bills (what <see cref="Seconds"/> reads for pricing).</summary>
    public static void SetSeconds(TokenUsage usage, double seconds) =>
        (usage.AdditionalProperties ??= [])[SecondsMember] = JsonSerializer.SerializeToElement(seconds, GatewayJsonContext.Default.Double);

    /// <summary>
    /// An answer that says neither tokens nor seconds (whisper-1's <c>text</c>, <c>srt</c>, <c>vtt</c>) is billed the
    /// audio's own length where its format says it (<see cref="AudioDuration"/>: WAV, FLAC, MP3), marked estimated;
    /// otherwise it stays as it is (billed nothing by the minute).
    /// </summary>
    public static void BillUncounted(ChatCompletionResponse response, OperationRequest operation)
    {
        if ((response.Usage is null || (response.Usage.TotalTokens == 0 && Seconds(response.Usage) == 0))
            && operation.Upload is { } audio && AudioDuration.Seconds(audio.Bytes.Span) is { } seconds and > 0)
        {
            var usage = response.Usage ?? new TokenUsage();
            SetSeconds(usage, seconds);
            (usage.AdditionalProperties ??= [])["estimated"] = JsonSerializer.SerializeToElement(true, GatewayJsonContext.Default.Boolean);
            response.Usage = usage;
        }
    }

    /// <summary>The seconds of audio an answer's usage says were transcribed (0 for any other answer).</summary>
    public static double Seconds(TokenUsage usage) =>
        usage.AdditionalProperties?.TryGetValue(SecondsMember, out var s) == true && s.ValueKind == JsonValueKind.Number && s.GetDouble() is > 0 and var seconds ? seconds : 0;
}
