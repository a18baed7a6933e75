using System.Globalization;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// Transcripts as OpenAI answers them, made up deterministically for both simulators: words drawn from the audio's bytes,
/// about 2.5 a second of audio (a WAV's length from its header, an MP3's from its 128 kbit/s frames, anything else at
/// 128 kbit/s), in the format asked — <c>json</c> and <c>verbose_json</c> with the usage whisper-1 reports (seconds) or
/// gpt-4o-transcribe reports (tokens), or <c>text</c>, <c>srt</c>, <c>vtt</c>.
/// </summary>
internal static class SimulatedTranscripts
{
    /// <summary>The answer to a checked transcription or translation request to <paramref name="model"/>.</summary>
    public static OperationAnswer Answer(OperationRequest operation, string model)
    {
        var audio = operation.Upload!.Bytes.Span;
        var seconds = Math.Max(0.1, Seconds(audio));
        var hash = (ulong)System.IO.Hashing.XxHash64.HashToUInt64(audio);
        var words = SimulatedText.Answer(hash.ToString(CultureInfo.InvariantCulture), 7, Math.Clamp((int)(seconds * 2.5), 1, 400));
        var text = string.Join(' ', words);
        var format = Transcriptions.Format(operation);
        var end = Time(seconds, ',');
        var body = format switch
        {
            "text" => text + "\n",
            "srt" => $"1\n00:00:00,000 --> {end}\n{text}\n\n",
            "vtt" => $"WEBVTT\n\n00:00:00.000 --> {Time(seconds, '.')}\n{text}\n\n",
            _ => Json(operation, model, format == "verbose_json", text, seconds, words.Length),
        };
        return new OperationAnswer(operation.Kind, Encoding.UTF8.GetBytes(body), 1)
        {
            MediaType = format is "json" or "verbose_json" ? "application/json" : "text/plain; charset=utf-8",
        };
    }

    /// <summary>
    /// A streamed transcription's events as OpenAI sends them (gpt-4o-transcribe with <c>stream=true</c>): a
    /// <c>transcript.text.delta</c> per word — with its <c>logprobs</c> when <c>include[]</c> asks for them — then
    /// <c>transcript.text.done</c> with the whole text and the token usage.
    /// </summary>
    public static List<byte[]> Events(OperationRequest operation, string model)
    {
        var whole = Transcriptions.AsStreamAnswer(operation, model, Answer(operation, model).List.Span, out _)!;
        var text = whole.Choices[0].Message!.Content!.GetText()!.TrimEnd('\n');
        var logprobs = operation.Body.TryGetProperty("include[]", out var include) && include.ToString().Contains("logprobs", StringComparison.Ordinal);
        var events = new List<byte[]>();
        var words = text.Split(' ');
        for (var i = 0; i < words.Length; i++)
        {
            var delta = i == 0 ? words[i] : " " + words[i];
            using var buffer = new MemoryStream();
            using (var w = new Utf8JsonWriter(buffer))
            {
                w.WriteStartObject();
                w.WriteString("type", "transcript.text.delta");
                w.WriteString("delta", delta);
                if (logprobs)
                {
                    w.WriteStartArray("logprobs");
                    w.WriteStartObject();
                    w.WriteString("token", delta);
                    w.WriteNumber("logprob", -0.125);
                    w.WriteStartArray("bytes");
                    foreach (var b in Encoding.UTF8.GetBytes(delta))
                    {
                        w.WriteNumberValue(b);
                    }

                    w.WriteEndArray();
                    w.WriteEndObject();
                    w.WriteEndArray();
                }

                w.WriteEndObject();
            }

            events.Add(buffer.ToArray());
        }

        events.Add(Transcriptions.DoneEvent(text, whole.Usage));
        return events;
    }

    private static string Json(OperationRequest operation, string model, bool verbose, string text, double seconds, int words)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            if (verbose)
            {
                w.WriteString("task", operation.Kind == OperationKind.Translation ? "translate" : "transcribe");
                w.WriteString("language", "english");
                w.WriteNumber("duration", Math.Round(seconds, 2));
            }

            w.WriteString("text", text);
            if (verbose)
            {
                w.WriteStartArray("segments");
                w.WriteStartObject();
                w.WriteNumber("id", 0);
                w.WriteNumber("start", 0.0);
                w.WriteNumber("end", Math.Round(seconds, 2));
                w.WriteString("text", text);
                w.WriteNumber("avg_logprob", -0.2);
                w.WriteNumber("no_speech_prob", 0.01);
                w.WriteEndObject();
                w.WriteEndArray();
            }

            w.WriteStartObject("usage");
            if (model.StartsWith("whisper", StringComparison.OrdinalIgnoreCase))
            {
                w.WriteString("type", "duration");
                w.WriteNumber("seconds", (int)Math.Ceiling(seconds));
            }
            else
            {
                var input = (int)Math.Ceiling(seconds * 10); // about gpt-4o-transcribe's audio tokens a second
                w.WriteString("type", "tokens");
                w.WriteNumber("input_tokens", input);
                w.WriteNumber("output_tokens", words);
                w.WriteNumber("total_tokens", input + words);
            }

            w.WriteEndObject();
            w.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>Seconds of audio: as its format says (WAV, FLAC, MP3: <see cref="AudioDuration"/>), else at 128 kbit/s.</summary>
    internal static double Seconds(ReadOnlySpan<byte> audio) => AudioDuration.Seconds(audio) ?? audio.Length * 8 / 128_000.0;

    private static string Time(double seconds, char separator)
    {
        var t = TimeSpan.FromSeconds(seconds);
        return $"{(int)t.TotalHours:00}:{t.Minutes:00}:{t.Seconds:00}{separator}{t.Milliseconds:000}";
    }
}
