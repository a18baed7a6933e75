using System.Buffers;
using System.Buffers.Binary;
using System.Text.Json;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// Embeddings as OpenAI answers them, made up deterministically for both simulators (in-process and <c>pgw simulate</c>):
/// one unit-length vector per input, a function of the input (its text or token ids) alone, of <c>dimensions</c> numbers
/// (<see cref="DefaultDimensions"/> when not asked), as a list of numbers or, with <c>encoding_format: "base64"</c>, the
/// little-endian float32 bytes in base64 — what the OpenAI SDKs ask for by default and decode.
/// </summary>
internal static class SimulatedEmbeddings
{
    /// <summary>text-embedding-3-small's size.</summary>
    public const int DefaultDimensions = 1536;

    /// <summary>text-embedding-3-large's size, the most the simulators give.</summary>
    public const int MaxDimensions = 3072;

    /// <summary>Usage as the simulators bill an embeddings or moderations request: about four characters a token, a token id one.</summary>
    public static int PromptTokens(OperationRequest operation) => Math.Max(1, Operations.PromptTokens(operation, static text => Math.Max(1, text.Length / 4)));

    /// <summary>The answer's <c>data</c> list for an embeddings request body, as its bytes.</summary>
    public static OperationAnswer Data(OperationRequest operation)
    {
        var body = operation.Body;
        var dimensions = body.TryGetProperty("dimensions", out var d) && d.ValueKind == JsonValueKind.Number && d.TryGetInt32(out var n) && n > 0 ? n : DefaultDimensions;
        if (dimensions > MaxDimensions)
        {
            // As OpenAI refuses more than its model has (never an allocation a caller chooses).
            var message = $"This model's embeddings have at most {MaxDimensions} dimensions; {dimensions} were asked.";
            throw new ProviderException(AttemptOutcome.NonRetryableError, message, 400) { ErrorType = "invalid_request_error", Param = "dimensions", UpstreamMessage = message };
        }

        var base64 = body.TryGetProperty("encoding_format", out var f) && f.ValueKind == JsonValueKind.String && f.ValueEquals("base64");
        // Sized for the answer up front (a float is at most ~14 characters written, base64 is 16 per 3 floats), so the
        // buffer is not grown by doubling through tens of MB, and its written part is the answer (no copy).
        var count = operation.InputCount;
        var buffer = new ArrayBufferWriter<byte>((int)Math.Min(int.MaxValue / 2, (long)count * ((dimensions * (base64 ? 6L : 14L)) + 64) + 16));
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            var index = 0;
            foreach (var seed in Seeds(body.GetProperty("input")))
            {
                w.WriteStartObject();
                w.WriteString("object", "embedding");
                w.WriteNumber("index", index++);
                var vector = Vector(seed, dimensions);
                if (base64)
                {
                    var bytes = new byte[vector.Length * sizeof(float)];
                    for (var i = 0; i < vector.Length; i++)
                    {
                        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * sizeof(float)), vector[i]);
                    }

                    w.WriteBase64String("embedding", bytes);
                }
                else
                {
                    w.WriteStartArray("embedding");
                    foreach (var x in vector)
                    {
                        w.WriteNumberValue(x);
                    }

                    w.WriteEndArray();
                }

                w.WriteEndObject();
            }

            w.WriteEndArray();
        }

        return new OperationAnswer(OperationKind.Embeddings, buffer.WrittenMemory, count);
    }

    /// <summary>A stable number per input: its text, or its token ids.</summary>
    private static IEnumerable<ulong> Seeds(JsonElement input)
    {
        if (input.ValueKind == JsonValueKind.String)
        {
            yield return (ulong)SimulatedText.StableHash(input.GetString()!);
        }
        else if (input.ValueKind == JsonValueKind.Array && input.GetArrayLength() > 0 && input[0].ValueKind == JsonValueKind.Number)
        {
            yield return Tokens(input);
        }
        else
        {
            foreach (var item in input.EnumerateArray())
            {
                yield return item.ValueKind == JsonValueKind.String ? (ulong)SimulatedText.StableHash(item.GetString()!) : Tokens(item);
            }
        }
    }

    private static ulong Tokens(JsonElement ids)
    {
        var seed = 0x243F6A8885A308D3UL;
        foreach (var id in ids.EnumerateArray())
        {
            seed = SimulatedProvider.Mix(seed, (ulong)id.GetInt64());
        }

        return seed;
    }

    private static float[] Vector(ulong seed, int dimensions)
    {
        var vector = new float[dimensions];
        var norm = 0.0;
        for (var i = 0; i < dimensions; i++)
        {
            var x = (SimulatedProvider.Mix(seed, (ulong)i) >> 11) * (1.0 / (1UL << 53)) * 2 - 1;
            vector[i] = (float)x;
            norm += x * x;
        }

        var scale = (float)(1 / Math.Sqrt(Math.Max(norm, double.Epsilon)));
        for (var i = 0; i < dimensions; i++)
        {
            vector[i] *= scale;
        }

        return vector;
    }
}
