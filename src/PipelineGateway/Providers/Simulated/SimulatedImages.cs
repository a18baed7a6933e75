using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;
using System.Text.Json;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// Images as OpenAI answers them, made up deterministically for both simulators (in-process and <c>pgw simulate</c>):
/// <c>n</c> real PNGs of the size asked for (one colour each, a function of the prompt and the image's place), as
/// <c>b64_json</c> — or, with <c>response_format: "url"</c> (DALL·E's default), an address for each — with DALL·E 3's
/// <c>revised_prompt</c>, and for gpt-image models the usage in tokens and the members they add (size, quality,
/// background, output format).
/// </summary>
internal static class SimulatedImages
{
    /// <summary>The largest side the simulators draw (gpt-image-1's and DALL·E 3's largest sizes are 1792 and 1536).</summary>
    public const int MaxSide = 2048;

    /// <summary>Prompt tokens as the simulators bill an image request: about four characters a token.</summary>
    public static int PromptTokens(OperationRequest operation) => Math.Max(1, Operations.PromptTokens(operation, static text => Math.Max(1, text.Length / 4)));

    /// <summary>The answer's <c>data</c> list and other members for an image generation request body to <paramref name="model"/>.</summary>
    public static OperationAnswer Data(OperationRequest operation, string model)
    {
        var body = operation.Body;
        var prompt = body.GetProperty("prompt").GetString()!;
        var gptImage = model.StartsWith("gpt-image", StringComparison.OrdinalIgnoreCase);
        var size = body.TryGetProperty("size", out var s) && s.ValueKind == JsonValueKind.String && s.GetString() is { } asked && asked != "auto" ? asked : "1024x1024";
        if (!TryParseSize(size, out var width, out var height))
        {
            // As OpenAI refuses a size its models do not make (never an allocation a caller chooses).
            var message = $"Invalid size '{size}': a size is WIDTHxHEIGHT, each from 1 to {MaxSide}.";
            throw new ProviderException(AttemptOutcome.NonRetryableError, message, 400) { ErrorType = "invalid_request_error", Param = "size", UpstreamMessage = message };
        }

        var url = !gptImage && !(body.TryGetProperty("response_format", out var f) && f.ValueKind == JsonValueKind.String && f.ValueEquals("b64_json"));
        var count = operation.InputCount;
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            for (var i = 0; i < count; i++)
            {
                var seed = (uint)SimulatedText.StableHash($"{prompt}#{i}");
                w.WriteStartObject();
                if (url)
                {
                    w.WriteString("url", $"https://images.simulator.invalid/{seed:x8}/{width}x{height}.png");
                }
                else
                {
                    w.WriteBase64String("b64_json", Png(width, height, seed));
                }

                if (model.StartsWith("dall-e-3", StringComparison.OrdinalIgnoreCase))
                {
                    w.WriteString("revised_prompt", "A detailed image of " + prompt);
                }

                w.WriteEndObject();
            }

            w.WriteEndArray();
        }

        var members = ReadOnlyMemory<byte>.Empty;
        if (gptImage)
        {
            var tokens = PromptTokens(operation);
            var output = count * Math.Max(16, width * height / 1000); // about gpt-image-1's count at medium quality (1,056 for 1024x1024)
            members = JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, JsonElement>
            {
                ["usage"] = JsonSerializer.SerializeToElement(new Dictionary<string, int> { ["input_tokens"] = tokens, ["output_tokens"] = output, ["total_tokens"] = tokens + output }, SimulatedJson.Default.DictionaryStringInt32),
                ["size"] = JsonSerializer.SerializeToElement($"{width}x{height}", SimulatedJson.Default.String),
                ["quality"] = JsonSerializer.SerializeToElement("medium", SimulatedJson.Default.String),
                ["background"] = JsonSerializer.SerializeToElement("opaque", SimulatedJson.Default.String),
                ["output_format"] = JsonSerializer.SerializeToElement("png", SimulatedJson.Default.String),
            }, SimulatedJson.Default.DictionaryStringJsonElement).AsMemory(1..^1); // the members, without the braces
        }

        return new OperationAnswer(operation.Kind, buffer.WrittenMemory.ToArray(), count) { Members = members }; // a generation's or an edit's
    }

    /// <summary>An answer's usage as <see cref="Operations.ReadAnswer"/> reads it back from <see cref="OperationAnswer.Members"/> (null: none).</summary>
    public static TokenUsage? Usage(OperationAnswer answer)
    {
        if (answer.Members.IsEmpty)
        {
            return null;
        }

        var json = new byte[answer.Members.Length + 2];
        json[0] = (byte)'{';
        answer.Members.Span.CopyTo(json.AsSpan(1));
        json[^1] = (byte)'}';
        using var doc = JsonDocument.Parse(json);
        var usage = doc.RootElement.GetProperty("usage");
        return TokenUsage.Of(usage.GetProperty("input_tokens").GetInt32(), usage.GetProperty("output_tokens").GetInt32());
    }

    private static bool TryParseSize(string size, out int width, out int height)
    {
        width = height = 0;
        var x = size.IndexOf('x', StringComparison.Ordinal);
        return x > 0
            && int.TryParse(size.AsSpan(0, x), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out width)
            && int.TryParse(size.AsSpan(x + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out height)
            && width is >= 1 and <= MaxSide && height is >= 1 and <= MaxSide;
    }

    /// <summary>A PNG of one colour (8-bit RGB): every row after the first filtered as the row above's, so it deflates to little.</summary>
    internal static byte[] Png(int width, int height, uint seed)
    {
        using var png = new MemoryStream();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        header[8] = 8; // bits per channel
        header[9] = 2; // RGB
        Chunk(png, "IHDR"u8, header);

        using var pixels = new MemoryStream();
        using (var z = new ZLibStream(pixels, CompressionLevel.Fastest, leaveOpen: true))
        {
            var row = new byte[1 + (3 * width)];
            for (var x = 0; x < width; x++)
            {
                row[1 + (3 * x)] = (byte)seed;
                row[2 + (3 * x)] = (byte)(seed >> 8);
                row[3 + (3 * x)] = (byte)(seed >> 16);
            }

            z.Write(row); // filter 0: the colour
            Array.Clear(row);
            row[0] = 2; // filter "up": the same as the row above, all zeros
            for (var y = 1; y < height; y++)
            {
                z.Write(row);
            }
        }

        Chunk(png, "IDAT"u8, pixels.ToArray());
        Chunk(png, "IEND"u8, []);
        return png.ToArray();
    }

    private static void Chunk(Stream png, ReadOnlySpan<byte> type, ReadOnlySpan<byte> data)
    {
        Span<byte> number = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(number, data.Length);
        png.Write(number);
        png.Write(type);
        png.Write(data);
        var crc = new System.IO.Hashing.Crc32();
        crc.Append(type);
        crc.Append(data);
        BinaryPrimitives.WriteUInt32BigEndian(number, crc.GetCurrentHashAsUInt32());
        png.Write(number);
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, JsonElement>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, int>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class SimulatedJson : System.Text.Json.Serialization.JsonSerializerContext;
