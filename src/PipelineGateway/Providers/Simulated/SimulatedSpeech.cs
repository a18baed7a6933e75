using System.Buffers.Binary;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// Speech as OpenAI answers it, made up for both simulators: silence as long as the text would take to say (about
/// 0.4 s a word, at 1/<c>speed</c>), as real audio a player decodes — MP3 (MPEG-1 Layer III frames, 44.1 kHz mono),
/// WAV or raw PCM (24 kHz, 16-bit, mono, as OpenAI's <c>pcm</c>). The simulators make no Opus, AAC or FLAC: such a
/// request is refused as an upstream refuses a format it lacks.
/// </summary>
internal static class SimulatedSpeech
{
    /// <summary>OpenAI's PCM: 24 kHz, 16-bit little-endian, mono.</summary>
    private const int PcmRate = 24_000;

    /// <summary>An MPEG-1 Layer III frame at 128 kbit/s, 44.1 kHz, mono, no padding: 1,152 samples in 417 bytes.</summary>
    private const int Mp3FrameBytes = 417;

    /// <summary>The audio for a checked speech request.</summary>
    /// <exception cref="ProviderException">A format the simulators do not make (a 400, as an upstream's refusal).</exception>
    public static OperationAnswer Audio(OperationRequest operation)
    {
        var body = operation.Body;
        var words = body.GetProperty("input").GetString()!.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length;
        var speed = body.TryGetProperty("speed", out var s) && s.ValueKind == System.Text.Json.JsonValueKind.Number ? s.GetDouble() : 1.0;
        var seconds = Math.Max(0.5, words * 0.4 / speed);
        var format = Speech.Format(body);
        var audio = format switch
        {
            "mp3" => Mp3(seconds),
            "wav" => Wav(seconds),
            "pcm" => new byte[2 * (int)(seconds * PcmRate)],
            _ => throw new ProviderException(AttemptOutcome.NonRetryableError, $"The simulator makes mp3, wav and pcm audio, not {format}.", 400)
            {
                ErrorType = "invalid_request_error",
                Param = "response_format",
                UpstreamMessage = $"The simulator makes mp3, wav and pcm audio, not {format}.",
            },
        };
        return new OperationAnswer(OperationKind.Speech, audio, 1) { MediaType = Speech.MediaType(format) };
    }

    /// <summary>Silent MP3 frames: each header, then zeros (side information of no data: silence).</summary>
    private static byte[] Mp3(double seconds)
    {
        var frames = (int)Math.Ceiling(seconds * 44_100 / 1_152);
        var mp3 = new byte[frames * Mp3FrameBytes];
        for (var f = 0; f < frames; f++)
        {
            // Sync, MPEG-1, Layer III, no CRC; 128 kbit/s, 44.1 kHz, no padding; mono.
            mp3[f * Mp3FrameBytes] = 0xFF;
            mp3[(f * Mp3FrameBytes) + 1] = 0xFB;
            mp3[(f * Mp3FrameBytes) + 2] = 0x90;
            mp3[(f * Mp3FrameBytes) + 3] = 0xC0;
        }

        return mp3;
    }

    /// <summary>A RIFF WAVE file of silent 16-bit mono PCM at 24 kHz.</summary>
    private static byte[] Wav(double seconds)
    {
        var data = 2 * (int)(seconds * PcmRate);
        var wav = new byte[44 + data];
        var span = wav.AsSpan();
        "RIFF"u8.CopyTo(span);
        BinaryPrimitives.WriteInt32LittleEndian(span[4..], 36 + data);
        "WAVEfmt "u8.CopyTo(span[8..]);
        BinaryPrimitives.WriteInt32LittleEndian(span[16..], 16); // the format chunk's size
        BinaryPrimitives.WriteInt16LittleEndian(span[20..], 1); // PCM
        BinaryPrimitives.WriteInt16LittleEndian(span[22..], 1); // mono
        BinaryPrimitives.WriteInt32LittleEndian(span[24..], PcmRate);
        BinaryPrimitives.WriteInt32LittleEndian(span[28..], PcmRate * 2); // bytes a second
        BinaryPrimitives.WriteInt16LittleEndian(span[32..], 2); // bytes a sample
        BinaryPrimitives.WriteInt16LittleEndian(span[34..], 16); // bits a sample
        "data"u8.CopyTo(span[36..]);
        BinaryPrimitives.WriteInt32LittleEndian(span[40..], data);
        return wav;
    }
}
