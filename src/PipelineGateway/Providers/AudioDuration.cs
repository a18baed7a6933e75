using System.Buffers.Binary;

namespace PipelineGateway.Providers;

/// <summary>
/// How long an audio file plays, read from its own structure where that is cheap and exact — every format the
/// transcription APIs take: WAV (the data chunk's bytes over the format's byte rate), FLAC (STREAMINFO's samples over its
/// rate), MP3 (its MPEG audio frames walked, each 1,152 or 576 samples at its rate; an ID3v2 tag skipped), MP4/M4A (the
/// movie header's duration; a fragmented file's — as Safari records — from its fragments' samples), Ogg (Opus or Vorbis:
/// the last page's granule position over the rate) and WebM/Matroska (the segment's duration; a file recorded live —
/// as Chrome's and Firefox's MediaRecorder write it, with none — its last block's time). Anything else, or a broken file,
/// is unknown (null), never guessed: what the transcription APIs bill by the minute when the answer itself says no
/// duration (whisper-1's <c>text</c>, <c>srt</c>, <c>vtt</c>).
/// </summary>
/// <remarks>
/// Hand-written rather than a media library's: the gateway needs one number from a header or a walk of the file's
/// boxes, pages or elements (every read bounds-checked, every step forward), not a decoder; the libraries that read these
/// containers in .NET decode or wrap native code.
/// </remarks>
internal static class AudioDuration
{
    private static readonly int[] Mpeg1Layer3Bitrates = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0];
    private static readonly int[] Mpeg2Layer3Bitrates = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0];
    private static readonly int[] Mpeg1Rates = [44_100, 48_000, 32_000, 0];

    /// <summary>More than a day of audio is no file the APIs take (25 MB): a header that says so is broken.</summary>
    private const double MaxSeconds = 86_400;

    /// <summary>Seconds of audio, or null when the format is not one read here or the file is broken.</summary>
    public static double? Seconds(ReadOnlySpan<byte> audio) => Read(audio) is > 0 and < MaxSeconds and var seconds ? seconds : null;

    private static double? Read(ReadOnlySpan<byte> audio)
    {
        if (audio.Length >= 8 && audio[4..8].SequenceEqual("ftyp"u8))
        {
            return IsoMedia(audio);
        }

        if (audio.Length >= 4 && audio[..4].SequenceEqual("OggS"u8))
        {
            return Ogg(audio);
        }

        if (audio.Length >= 4 && audio[..4].SequenceEqual((ReadOnlySpan<byte>)[0x1A, 0x45, 0xDF, 0xA3]))
        {
            return Matroska(audio);
        }

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

    /// <summary>What <see cref="IsoMedia"/> reads as it walks the boxes.</summary>
    private ref struct Mp4
    {
        public uint MovieScale;
        public ulong MovieDuration;
        public ulong FragmentDuration;
        public uint Track; // the first track's id, and its timescale (its samples are the fragments' time)
        public uint TrackScale;
        public uint TrackDefault; // trex's default sample duration for that track
        public bool InTrack;
        public uint FragmentDefault; // the current track fragment's (tfhd), 0 when it is another track's
        public bool FragmentOurs;
        public ulong Ticks;
    }

    private static double? IsoMedia(ReadOnlySpan<byte> file)
    {
        var state = default(Mp4);
        Boxes(file, ref state, depth: 0);
        if (state.MovieScale > 0 && state.MovieDuration is > 0 and < uint.MaxValue)
        {
            return state.MovieDuration / (double)state.MovieScale;
        }

        if (state.MovieScale > 0 && state.FragmentDuration > 0)
        {
            return state.FragmentDuration / (double)state.MovieScale;
        }

        return state.TrackScale > 0 && state.Ticks > 0 ? state.Ticks / (double)state.TrackScale : null;
    }

    /// <summary>ISO base media boxes: a 32-bit size (1: a 64-bit one follows the type; 0: to the end), a type, the content.</summary>
    private static void Boxes(ReadOnlySpan<byte> span, ref Mp4 s, int depth)
    {
        for (var at = 0; at + 8 <= span.Length && depth < 8;)
        {
            long size = BinaryPrimitives.ReadUInt32BigEndian(span[at..]);
            var header = 8;
            if (size == 1)
            {
                if (at + 16 > span.Length)
                {
                    return;
                }

                size = (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(span[(at + 8)..]), long.MaxValue);
                header = 16;
            }
            else if (size == 0)
            {
                size = span.Length - at;
            }

            if (size < header)
            {
                return; // broken: no step forward
            }

            var type = span.Slice(at + 4, 4);
            var box = span.Slice(at + header, (int)Math.Min(size - header, span.Length - at - header)); // a cut file: what is there
            if (type.SequenceEqual("moov"u8) || type.SequenceEqual("mvex"u8) || type.SequenceEqual("mdia"u8) || type.SequenceEqual("moof"u8))
            {
                Boxes(box, ref s, depth + 1);
            }
            else if (type.SequenceEqual("trak"u8))
            {
                s.InTrack = s.Track == 0;
                Boxes(box, ref s, depth + 1);
                s.InTrack = false;
            }
            else if (type.SequenceEqual("traf"u8))
            {
                s.FragmentOurs = false;
                Boxes(box, ref s, depth + 1);
            }
            else
            {
                Leaf(type, box, ref s);
            }

            if (size > span.Length - at)
            {
                return;
            }

            at += (int)size;
        }
    }

    /// <summary>The boxes that time the file; each a full box (a version byte and 24 bits of flags first).</summary>
    private static void Leaf(ReadOnlySpan<byte> type, ReadOnlySpan<byte> box, ref Mp4 s)
    {
        if (box.Length < 8)
        {
            return;
        }

        var wide = box[0] == 1; // version 1: 64-bit times
        var flags = BinaryPrimitives.ReadUInt32BigEndian(box) & 0xFFFFFF;
        if (type.SequenceEqual("mvhd"u8) && box.Length >= (wide ? 32 : 20))
        {
            s.MovieScale = BinaryPrimitives.ReadUInt32BigEndian(box[(wide ? 20 : 12)..]);
            s.MovieDuration = wide ? BinaryPrimitives.ReadUInt64BigEndian(box[24..]) : BinaryPrimitives.ReadUInt32BigEndian(box[16..]);
        }
        else if (type.SequenceEqual("mehd"u8) && box.Length >= (wide ? 12 : 8))
        {
            s.FragmentDuration = wide ? BinaryPrimitives.ReadUInt64BigEndian(box[4..]) : BinaryPrimitives.ReadUInt32BigEndian(box[4..]);
        }
        else if (type.SequenceEqual("tkhd"u8) && s.InTrack && box.Length >= (wide ? 24 : 16))
        {
            s.Track = BinaryPrimitives.ReadUInt32BigEndian(box[(wide ? 20 : 12)..]);
        }
        else if (type.SequenceEqual("mdhd"u8) && s.InTrack && box.Length >= (wide ? 24 : 16))
        {
            s.TrackScale = BinaryPrimitives.ReadUInt32BigEndian(box[(wide ? 20 : 12)..]);
        }
        else if (type.SequenceEqual("trex"u8) && box.Length >= 16 && BinaryPrimitives.ReadUInt32BigEndian(box[4..]) == s.Track)
        {
            s.TrackDefault = BinaryPrimitives.ReadUInt32BigEndian(box[12..]);
        }
        else if (type.SequenceEqual("tfhd"u8))
        {
            s.FragmentOurs = BinaryPrimitives.ReadUInt32BigEndian(box[4..]) == s.Track;
            var at = 8 + ((flags & 0x01) != 0 ? 8 : 0) + ((flags & 0x02) != 0 ? 4 : 0); // past the base data offset and description index
            s.FragmentDefault = (flags & 0x08) != 0 && box.Length >= at + 4 ? BinaryPrimitives.ReadUInt32BigEndian(box[at..]) : s.TrackDefault;
        }
        else if (type.SequenceEqual("trun"u8) && s.FragmentOurs)
        {
            var count = BinaryPrimitives.ReadUInt32BigEndian(box[4..]);
            if ((flags & 0x100) == 0)
            {
                s.Ticks += (ulong)count * s.FragmentDefault; // every sample the default's length
                return;
            }

            var at = 8 + ((flags & 0x01) != 0 ? 4 : 0) + ((flags & 0x04) != 0 ? 4 : 0); // past the data offset and first sample's flags
            var stride = 4 * (1 + ((flags & 0x200) != 0 ? 1 : 0) + ((flags & 0x400) != 0 ? 1 : 0) + ((flags & 0x800) != 0 ? 1 : 0));
            for (var i = 0u; i < count && at + 4 <= box.Length; i++, at += stride)
            {
                s.Ticks += BinaryPrimitives.ReadUInt32BigEndian(box[at..]);
            }
        }
    }

    /// <summary>
    /// Ogg pages (<c>OggS</c>, a 27-byte header, a segment table, the body): the first stream's rate from its first packet
    /// (Opus: always 48 kHz, less its pre-skip; Vorbis: its identification header's), its length the granule position of
    /// its last whole page. Any other codec is unknown.
    /// </summary>
    private static double? Ogg(ReadOnlySpan<byte> file)
    {
        uint serial = 0, rate = 0;
        long preSkip = 0, last = -1;
        for (var at = 0; at + 27 <= file.Length && file.Slice(at, 4).SequenceEqual("OggS"u8);)
        {
            var segments = file[at + 26];
            var body = at + 27 + segments;
            if (body > file.Length)
            {
                break;
            }

            var length = 0;
            foreach (var lace in file.Slice(at + 27, segments))
            {
                length += lace;
            }

            if (body + length > file.Length)
            {
                break; // a cut page: its granule is not all there
            }

            var granule = BinaryPrimitives.ReadInt64LittleEndian(file[(at + 6)..]);
            var pageSerial = BinaryPrimitives.ReadUInt32LittleEndian(file[(at + 14)..]);
            var packet = file.Slice(body, length);
            if (at == 0)
            {
                serial = pageSerial;
                if (packet.Length >= 12 && packet[..8].SequenceEqual("OpusHead"u8))
                {
                    rate = 48_000;
                    preSkip = BinaryPrimitives.ReadUInt16LittleEndian(packet[10..]);
                }
                else if (packet.Length >= 16 && packet[..7].SequenceEqual("\u0001vorbis"u8))
                {
                    rate = BinaryPrimitives.ReadUInt32LittleEndian(packet[12..]);
                }
                else
                {
                    return null;
                }
            }
            else if (pageSerial == serial && granule >= 0)
            {
                last = granule; // -1: no packet ends on this page
            }

            at = body + length;
        }

        return rate > 0 && last > preSkip ? (last - preSkip) / (double)rate : null;
    }

    /// <summary>
    /// Matroska/WebM elements (an EBML id, a size, the data): the segment's <c>Duration</c> in its <c>TimecodeScale</c>;
    /// without one (a live recording), the latest block's time — its cluster's timecode plus its own — which is the file's
    /// length less its last frame (20 ms of Opus). Masters that hold these are entered, even of unknown size (live ones).
    /// </summary>
    private static double? Matroska(ReadOnlySpan<byte> file)
    {
        long scale = 1_000_000, cluster = 0, latest = -1;
        var duration = 0.0;
        for (var at = 0; at < file.Length;)
        {
            if (!Vint(file[at..], out var idLength, out _, keepMarker: true) || !Vint(file[(at + idLength)..], out var sizeLength, out var size, keepMarker: false))
            {
                break;
            }

            var id = 0u;
            foreach (var b in file.Slice(at, idLength))
            {
                id = (id << 8) | b;
            }

            var data = at + idLength + sizeLength;
            if (id is 0x18538067 or 0x1549A966 or 0x1F43B675 or 0xA0) // Segment, Info, Cluster, BlockGroup: entered
            {
                at = data;
                continue;
            }

            if (size < 0 || size > file.Length - data)
            {
                break; // an unknown size here, or cut
            }

            var value = file.Slice(data, (int)size);
            switch (id)
            {
                case 0x2AD7B1 when size is > 0 and <= 8: // TimecodeScale, nanoseconds a tick
                    scale = (long)Math.Min(Unsigned(value), long.MaxValue);
                    break;
                case 0x4489 when size is 4 or 8: // Duration, in ticks
                    duration = size == 4 ? BinaryPrimitives.ReadSingleBigEndian(value) : BinaryPrimitives.ReadDoubleBigEndian(value);
                    break;
                case 0xE7 when size is > 0 and <= 8: // a cluster's Timecode
                    cluster = (long)Math.Min(Unsigned(value), int.MaxValue);
                    break;
                case 0xA3 or 0xA1: // SimpleBlock, Block: a track number, then a 16-bit time from the cluster's
                    if (Vint(value, out var trackLength, out _, keepMarker: false) && value.Length >= trackLength + 2)
                    {
                        latest = Math.Max(latest, cluster + BinaryPrimitives.ReadInt16BigEndian(value[trackLength..]));
                    }

                    break;
            }

            at = data + (int)size;
        }

        var seconds = duration is > 0 and < double.MaxValue ? duration * scale / 1e9 : latest > 0 ? latest * (double)scale / 1e9 : 0;
        return seconds > 0 ? seconds : null;
    }

    /// <summary>
    /// An EBML variable-length integer: its length from the first byte's leading zeros (ids up to 4 bytes, sizes up to 8);
    /// a size with every value bit set is unknown (-1).
    /// </summary>
    private static bool Vint(ReadOnlySpan<byte> span, out int length, out long value, bool keepMarker)
    {
        value = 0;
        length = span.IsEmpty || span[0] == 0 ? 0 : System.Numerics.BitOperations.LeadingZeroCount((uint)span[0]) - 23;
        if (length == 0 || length > (keepMarker ? 4 : 8) || length > span.Length)
        {
            return false;
        }

        value = keepMarker ? span[0] : span[0] & (0xFF >> length);
        var all = value == (0xFF >> length);
        for (var i = 1; i < length; i++)
        {
            value = (value << 8) | span[i];
            all &= span[i] == 0xFF;
        }

        if (!keepMarker && all)
        {
            value = -1;
        }

        return true;
    }

    private static ulong Unsigned(ReadOnlySpan<byte> value)
    {
        ulong v = 0;
        foreach (var b in value)
        {
            v = (v << 8) | b;
        }

        return v;
    }
}
