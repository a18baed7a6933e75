using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// OpenAI's text-to-speech request (<c>POST /v1/audio/speech</c>) as the pipeline carries it (<see cref="Operations"/>):
/// <c>model</c>, <c>input</c> (the text to speak), <c>voice</c> (a name, or <c>{"id":…}</c> for a custom voice),
/// <c>response_format</c> (<c>mp3</c> when left out, <c>opus</c>, <c>aac</c>, <c>flac</c>, <c>wav</c>, <c>pcm</c>),
/// <c>speed</c> (0.25–4), <c>instructions</c>; other members sent on as they came. The answer is the audio's bytes, kept
/// as they came and written with the format's media type — never JSON. Priced per character of input (what TTS is
/// priced in): a speech request's prompt count is its input's characters.
/// </summary>
internal static class Speech
{
    /// <summary>OpenAI's bound on <c>input</c>, in characters.</summary>
    public const int MaxInput = 4096;

    private static readonly string[] Formats = ["mp3", "opus", "aac", "flac", "wav", "pcm"];

    /// <summary>Checks a speech request given as JSON and makes the pipeline's request of it.</summary>
    /// <exception cref="InvalidRequestException">A member is missing or not what the schema allows; its name is the error's param.</exception>
    /// <param name="route">The model the route names (Azure's deployment path), which the body's then does not.</param>
    public static ChatCompletionRequest ToRequest(JsonElement root, string? route = null)
    {
        var model = Operations.Model(root, route, "a speech model");

        if (!root.TryGetProperty("input", out var input) || input.ValueKind != JsonValueKind.String)
        {
            throw new InvalidRequestException("input", "'input' is required: the text to speak.");
        }

        var text = Operations.NonEmpty(input, "input");
        if (text.Length > MaxInput)
        {
            throw new InvalidRequestException("input", $"'input' must be at most {MaxInput} characters (it has {text.Length}).");
        }

        if (!root.TryGetProperty("voice", out var voice)
            || !(voice.ValueKind == JsonValueKind.String && voice.GetString() is { Length: > 0 }
                 || voice.ValueKind == JsonValueKind.Object && voice.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String && id.GetString() is { Length: > 0 }))
        {
            throw new InvalidRequestException("voice", "'voice' is required: a voice's name (alloy, ash, coral…) or {\"id\": a custom voice's id}.");
        }

        Format(root); // checked
        if (root.TryGetProperty("speed", out var speed) && speed.ValueKind != JsonValueKind.Null
            && !(speed.ValueKind == JsonValueKind.Number && speed.TryGetDouble(out var s) && s is >= 0.25 and <= 4))
        {
            throw new InvalidRequestException("speed", "'speed' must be a number from 0.25 to 4.");
        }

        if (root.TryGetProperty("instructions", out var instructions) && instructions.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
        {
            throw new InvalidRequestException("instructions", "'instructions' must be a string.");
        }

        if (root.TryGetProperty("stream_format", out var stream) && stream.ValueKind != JsonValueKind.Null && !(stream.ValueKind == JsonValueKind.String && (stream.ValueEquals("audio") || stream.ValueEquals("sse"))))
        {
            throw new InvalidRequestException("stream_format", "'stream_format' must be \"audio\" (the audio's bytes, the default) or \"sse\" (server-sent speech.audio.* events).");
        }

        return new ChatCompletionRequest
        {
            Model = model,
            Messages = [ChatCompletionMessage.User(text)],
            Operation = new OperationRequest(OperationKind.Speech, root),
        };
    }

    /// <summary>The audio format a checked request asks for (<c>mp3</c> when left out).</summary>
    public static string Format(JsonElement body)
    {
        if (!body.TryGetProperty("response_format", out var format) || format.ValueKind == JsonValueKind.Null)
        {
            return "mp3";
        }

        return format.ValueKind == JsonValueKind.String && Array.IndexOf(Formats, format.GetString()) is >= 0 and var i
            ? Formats[i]
            : throw new InvalidRequestException("response_format", $"'response_format' must be one of {string.Join(", ", Formats)}.");
    }

    /// <summary>The media type an audio format is written with (OpenAI's).</summary>
    public static string MediaType(string format) => format switch
    {
        "mp3" => "audio/mpeg",
        "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        _ => "audio/pcm",
    };

    /// <summary>The input's characters: what a speech request is counted and priced in.</summary>
    public static int Characters(OperationRequest operation) => operation.Body.GetProperty("input").GetString()!.Length;

    /// <summary>
    /// A block of streamed audio as a chunk: the bytes kept (the endpoint writes them as they came), its choices marked as
    /// content without being objects — the stream starts for the caller at its first block, and nothing in the pipeline
    /// reads them — and the members a chunk must have set, so none is filled later (which would let the bytes go).
    /// </summary>
    public static ChatCompletionChunk Block(ReadOnlySpan<byte> audio, string model, long created)
    {
        var chunk = new ChatCompletionChunk { Id = "speech", Created = created, Model = model };
        chunk.KeepEventJson(audio, membersUnread: false);
        chunk.SkipChoices(1, finishes: false, contentBytes: 1); // content, not text: speech is billed by its input's characters
        return chunk;
    }

    /// <summary>Whether a checked request asks for server-sent events (<c>stream_format: "sse"</c>) instead of the audio's bytes.</summary>
    public static bool AsEvents(OperationRequest operation) =>
        operation.Body.TryGetProperty("stream_format", out var f) && f.ValueKind == JsonValueKind.String && f.ValueEquals("sse");

    /// <summary>
    /// One server-sent event of speech asked with <c>stream_format: "sse"</c>, as a chunk keeping its bytes: a
    /// <c>speech.audio.delta</c> (its <c>audio</c> a base64 string) carries content — the stream starts for the caller —,
    /// <c>speech.audio.done</c> finishes it (<paramref name="done"/>) with the usage speech is billed by (its characters,
    /// as the other forms: the event's own token counts are passed on as they came, not billed), any other type passes
    /// through without content; an object with an <c>error</c> is <paramref name="error"/> (no chunk).
    /// </summary>
    /// <exception cref="JsonException">The event is not a JSON object, or a delta without its audio.</exception>
    public static ChatCompletionChunk? ReadEvent(ReadOnlySpan<byte> data, OperationRequest operation, string model, long created, out JsonElement? error, out bool done)
    {
        done = false;
        using var doc = Operations.ParseEvent(data, "A speech event", out error, out var type);
        if (doc is null)
        {
            return null;
        }

        var root = doc.RootElement;
        var delta = type == "speech.audio.delta";
        if (delta && !(root.TryGetProperty("audio", out var audio) && audio.ValueKind == JsonValueKind.String))
        {
            throw new JsonException("A speech.audio.delta event has no 'audio' string.");
        }

        done = type == "speech.audio.done";
        var chunk = new ChatCompletionChunk { Id = "speech", Created = created, Model = model, Usage = done ? Usage(operation) : null };
        chunk.KeepEventJson(data, membersUnread: false);
        chunk.SkipChoices(1, finishes: done, contentBytes: delta ? 1 : 0);
        return chunk;
    }

    /// <summary>A <c>speech.audio.delta</c> event of <paramref name="audio"/> (its bytes base64), as OpenAI writes one.</summary>
    public static byte[] DeltaEvent(ReadOnlySpan<byte> audio) =>
        System.Text.Encoding.UTF8.GetBytes($$"""{"type":"speech.audio.delta","audio":"{{Convert.ToBase64String(audio)}}"}""");

    /// <summary>Speech's events as OpenAI sends them (the simulators'): a <c>speech.audio.delta</c> per block of the audio, then <c>speech.audio.done</c> with a usage.</summary>
    public static List<byte[]> Events(ReadOnlyMemory<byte> audio, int blockBytes, int inputTokens, int outputTokens)
    {
        var events = new List<byte[]>();
        for (var at = 0; at < audio.Length; at += blockBytes)
        {
            var block = audio.Span.Slice(at, Math.Min(blockBytes, audio.Length - at));
            events.Add(DeltaEvent(block));
        }

        events.Add(System.Text.Encoding.UTF8.GetBytes($$$"""{"type":"speech.audio.done","usage":{"input_tokens":{{{inputTokens}}},"output_tokens":{{{outputTokens}}},"total_tokens":{{{inputTokens + outputTokens}}}}}"""));
        return events;
    }

    /// <summary>The closing chunk of streamed audio: finished, with the usage speech is billed by (<see cref="Usage"/>).</summary>
    public static ChatCompletionChunk Finish(OperationRequest operation, string model, long created) => new()
    {
        Id = "speech",
        Created = created,
        Model = model,
        Choices = [new ChunkChoice { FinishReason = "stop" }],
        Usage = Usage(operation),
    };

    /// <summary>What speech is billed by, known before it is made: its characters (no usage comes with audio).</summary>
    public static TokenUsage Usage(OperationRequest operation)
    {
        var characters = Characters(operation);
        return new TokenUsage { PromptTokens = characters, TotalTokens = characters };
    }

    /// <summary>
    /// An upstream's answer to a speech request: its bytes are the audio — unless they are a JSON object (an <c>error</c>
    /// sent with a 200, <paramref name="error"/>, or a JSON answer where audio was asked: no audio, the provider's
    /// failure), or nothing at all (likewise). Raw PCM may start with any byte, but is never a whole JSON object.
    /// </summary>
    public static ChatCompletionResponse ReadAnswer(ReadOnlyMemory<byte> body, bool copy, out JsonElement? error)
    {
        error = null;
        var start = body.Span.IndexOfAnyExcept(" \t\r\n"u8);
        if (start >= 0 && body.Span[start] == (byte)'{')
        {
            try
            {
                using var doc = JsonDocument.Parse(body);
                if (doc.RootElement.ValueKind == JsonValueKind.Object)
                {
                    error = doc.RootElement.TryGetProperty("error", out var e) ? e.Clone() : null;
                    return new ChatCompletionResponse { Choices = [] }; // JSON, not audio
                }
            }
            catch (JsonException)
            {
                // Not JSON: audio.
            }
        }

        return new ChatCompletionResponse
        {
            Choices = [],
            Operation = body.Length == 0 ? null : new OperationAnswer(OperationKind.Speech, copy ? body.ToArray() : body, 1),
        };
    }
}
