using System.Buffers.Binary;

namespace PipelineGateway.Providers;

/// <summary>
/// How long an audio file plays, read from its own structure where that is cheap and exact: WAV (the data chunk's bytes
/// over the format's byte rate), FLAC (STREAMINFO's samples over its rate) and MP3 (its MPEG audio frames walked, each
/// 1,152 or 576 samples at its rate; an ID3v2 tag skipped). Anything else is unknown (null): what the transcription APIs
/// bill by the minute when the answer itself says no duration (whisper-1's <c>text</c>, <c>srt</c>, <c>vtt</c>).
/// </summary>
internal static class AudioDuration
{
    private static readonly int[] Mpeg1Layer3Bitrates = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0];
    private static readonly int[] Mpeg2Layer3Bitrates = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0];
    private static readonly int[] Mpeg1Rates = [44_100, 48_000, 32_000, 0];

    /// <summary>Seconds of audio, or null when the format is not one read here or the file is broken.</summary>
    public static double? Seconds(ReadOnlySpan<byte> audio)
    {
        if (audio.Length >= 12 && audio[..4].SequenceEqual("RIFF"u8) && audio[8..12].SequenceEqual("WAVE"u8))
        {
            return Wav(audio);
        }

        if (audio.Length >= 42 && audio[..4].SequenceEqual("fLaC"u8))
        {
            return Flac(audio);
        }

        return Mp3(audio);
    }

    private static double? Wav(ReadOnlySpan<byte> audio)
    {
        var byteRate = 0;
        for (var at = 12; at + 8 <= audio.Length;)
        {
            var size = BinaryPrimitives.ReadUInt32LittleEndian(audio[(at + 4)..]);
            var id = audio.Slice(at, 4);
            if (id.SequenceEqual("fmt "u8) && at + 20 <= audio.Length)
            {
                byteRate = BinaryPrimitives.ReadInt32LittleEndian(audio[(at + 16)..]);
            }
            else if (id.SequenceEqual("data"u8))
            {
                var data = Math.Min(size, (uint)(audio.Length - at - 8)); // a streamed WAV announces more than it holds
                return byteRate > 0 ? data / (double)byteRate : null;
            }

            at += 8 + (int)Math.Min(size + (size & 1), int.MaxValue - at - 8);
        }

        return null;
    }

    private static double? Flac(ReadOnlySpan<byte> audio)
    {
        // STREAMINFO, the first metadata block: 20 bits of sample rate, 3 of channels, 5 of bits, 36 of total samples.
        var info = audio[8..];
        var rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4);
        var samples = ((long)(info[13] & 0x0F) << 32) | BinaryPrimitives.ReadUInt32BigEndian(info[14..]);
        return rate > 0 && samples > 0 ? samples / (double)rate : null;
    }

    private static double? Mp3(ReadOnlySpan<byte> audio)
    {
        var at = 0;
        if (audio.Length >= 10 && audio[..3].SequenceEqual("ID3"u8))
        {
            at = 10 + ((audio[6] & 0x7F) << 21 | (audio[7] & 0x7F) << 14 | (audio[8] & 0x7F) << 7 | (audio[9] & 0x7F)); // a syncsafe size
        }

        var seconds = 0.0;
        var frames = 0;
        while (at + 4 <= audio.Length)
        {
            if (audio[at] != 0xFF || (audio[at + 1] & 0xE0) != 0xE0)
            {
                break; // not a frame: the audio ends here (a trailing tag, or not MP3 at all)
            }

            var version = (audio[at + 1] >> 3) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
            var layer = (audio[at + 1] >> 1) & 3; // 1: Layer III
            var bitrateIndex = audio[at + 2] >> 4;
            var rateIndex = (audio[at + 2] >> 2) & 3;
            var padding = (audio[at + 2] >> 1) & 1;
            if (version == 1 || layer != 1 || rateIndex == 3)
            {
                break;
            }

            var rate = Mpeg1Rates[rateIndex] / (version == 3 ? 1 : version == 2 ? 2 : 4);
            var kbps = version == 3 ? Mpeg1Layer3Bitrates[bitrateIndex] : Mpeg2Layer3Bitrates[bitrateIndex];
            if (kbps == 0)
            {
                break;
            }

            var samples = version == 3 ? 1152 : 576;
            var length = (samples / 8 * kbps * 1000 / rate) + padding;
            seconds += samples / (double)rate;
            frames++;
            at += length;
        }

        return frames >= 2 ? seconds : null; // one "frame" can be chance bytes
    }
}
