using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// OpenAI's embeddings request as the pipeline carries it (<see cref="Operations"/>: what all operations share), and its
/// vectors as numbers for the library's embedding generator.
/// </summary>
internal static class Embeddings
{
    /// <summary>OpenAI's bound on the inputs of one request.</summary>
    public const int MaxInputs = 2048;

    /// <summary>
    /// Reads and checks an embeddings request body (OpenAI's schema: <c>model</c>, <c>input</c> — a string, a list of
    /// strings, a list of token ids or a list of such lists —, <c>encoding_format</c>, <c>dimensions</c>, <c>user</c>;
    /// other members are sent on as they came, for OpenAI-compatible servers that take more).
    /// </summary>
    /// <exception cref="JsonException">The body is not one JSON value.</exception>
    /// <exception cref="InvalidRequestException">A member is missing or not what the schema allows; its name is the error's param.</exception>
    public static ChatCompletionRequest Read(ReadOnlySpan<byte> body) => Operations.Read(OperationKind.Embeddings, body);

    /// <summary>Checks an embeddings request given as JSON and makes the pipeline's request of it (see <see cref="Read"/>).</summary>
    /// <param name="model">The model the route names (Azure's deployment path): then the body's may be left out.</param>
    public static ChatCompletionRequest ToRequest(JsonElement root, string? model = null)
    {
        var name = Operations.Model(root, model, "an embedding model");

        if (!root.TryGetProperty("input", out var input) || input.ValueKind is JsonValueKind.Null)
        {
            throw new InvalidRequestException("input", "'input' is required: a string, a list of strings, a list of token ids or a list of lists of token ids.");
        }

        var text = Describe(input);
        if (root.TryGetProperty("encoding_format", out var format) && format.ValueKind != JsonValueKind.Null
            && !(format.ValueKind == JsonValueKind.String && (format.ValueEquals("float") || format.ValueEquals("base64"))))
        {
            throw new InvalidRequestException("encoding_format", "'encoding_format' must be \"float\" or \"base64\".");
        }

        if (root.TryGetProperty("dimensions", out var dimensions) && dimensions.ValueKind != JsonValueKind.Null
            && !(dimensions.ValueKind == JsonValueKind.Number && dimensions.TryGetInt32(out var d) && d > 0))
        {
            throw new InvalidRequestException("dimensions", "'dimensions' must be a whole number of at least 1.");
        }

        string? user = null;
        if (root.TryGetProperty("user", out var u) && u.ValueKind != JsonValueKind.Null)
        {
            user = u.ValueKind == JsonValueKind.String ? u.GetString() : throw new InvalidRequestException("user", "'user' must be a string.");
        }

        if (root.TryGetProperty("stream", out var stream) && stream.ValueKind == JsonValueKind.True)
        {
            throw new InvalidRequestException("stream", "Embeddings are not streamed.");
        }

        return new ChatCompletionRequest
        {
            Model = name,
            Messages = [ChatCompletionMessage.User(text)],
            User = user,
            Operation = new OperationRequest(OperationKind.Embeddings, root),
        };
    }

    /// <summary>
    /// Checks <c>input</c> and gives what stands for it in the pipeline's one user message: the texts, one per paragraph;
    /// token ids as how many there are (they are counted, not read).
    /// </summary>
    private static string Describe(JsonElement input) => Operations.DescribeInput(
        input,
        "a string, a list of strings, a list of token ids or a list of lists of token ids",
        [JsonValueKind.String, JsonValueKind.Array],
        static (item, param) =>
        {
            if (item.ValueKind == JsonValueKind.String)
            {
                return Operations.NonEmpty(item, param);
            }

            if (item.GetArrayLength() == 0)
            {
                throw new InvalidRequestException(param, $"'{param}' must not be empty.");
            }

            Operations.CheckTokens(item, param);
            return $"[{item.GetArrayLength()} token ids]";
        },
        static list =>
        {
            if (list[0].ValueKind != JsonValueKind.Number)
            {
                return null;
            }

            Operations.CheckTokens(list, "input"); // one input of token ids
            return $"[{list.GetArrayLength()} token ids]";
        });

    /// <summary>
    /// The embeddings of an answer as numbers, in input order (by each item's <c>index</c> when it has one in range and not taken): a JSON
    /// list of numbers, or base64 of little-endian float32s (what <c>encoding_format: "base64"</c> answers).
    /// </summary>
    /// <exception cref="FormatException">Base64 that is not, or not whole float32s.</exception>
    public static float[][] Vectors(OperationAnswer data)
    {
        using var doc = JsonDocument.Parse(data.List);
        var vectors = new float[data.Count][];
        var taken = new bool[data.Count];
        foreach (var item in doc.RootElement.EnumerateArray())
        {
            vectors[Place(item, taken)] = Floats(item.GetProperty("embedding"));
        }

        return vectors;
    }

    /// <summary>Whether the request asks its embeddings as base64 (<c>"encoding_format": "base64"</c>; else numbers).</summary>
    public static bool AsksBase64(JsonElement body) =>
        body.ValueKind == JsonValueKind.Object && body.TryGetProperty("encoding_format", out var f) && f.ValueKind == JsonValueKind.String && f.ValueEquals("base64");

    /// <summary>
    /// An item's place in the list: its index when it has one in range not taken yet, else the first place left — every
    /// item kept, none overwritten.
    /// </summary>
    private static int Place(JsonElement item, bool[] taken)
    {
        var place = item.TryGetProperty("index", out var i) && i.ValueKind == JsonValueKind.Number && i.TryGetInt32(out var n) && n >= 0 && n < taken.Length && !taken[n] ? n : Array.IndexOf(taken, false);
        taken[place] = true;
        return place;
    }

    /// <summary>
    /// An upstream's embeddings list (checked: <paramref name="count"/> items, each with an embedding) written as the
    /// caller asked it: in input order (by <see cref="Place"/>), each item's <c>index</c> its place, each embedding as
    /// numbers or as base64 of little-endian float32s (OpenAI's form) — an upstream that answers in its own order, or
    /// ignores <c>encoding_format</c> (base64 always, or numbers always), would otherwise give a client what it did not
    /// ask for. Its other members are kept as they came.
    /// </summary>
    public static byte[] Rewrite(ReadOnlySpan<byte> list, int count, bool base64)
    {
        using var doc = JsonDocument.Parse(list.ToArray());
        var items = new JsonElement[count];
        var taken = new bool[count];
        foreach (var item in doc.RootElement.EnumerateArray())
        {
            items[Place(item, taken)] = item;
        }

        var output = new System.Buffers.ArrayBufferWriter<byte>(list.Length + 64);
        using (var w = new Utf8JsonWriter(output, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartArray();
            for (var at = 0; at < count; at++)
            {
                w.WriteStartObject();
                foreach (var member in items[at].EnumerateObject())
                {
                    if (!member.NameEquals("index"u8) && !member.NameEquals("embedding"u8))
                    {
                        member.WriteTo(w);
                    }
                }

                w.WriteNumber("index"u8, at);
                var vector = Floats(items[at].GetProperty("embedding"));
                if (base64)
                {
                    var bytes = new byte[vector.Length * sizeof(float)];
                    for (var k = 0; k < vector.Length; k++)
                    {
                        System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(k * sizeof(float)), vector[k]);
                    }

                    w.WriteBase64String("embedding"u8, bytes);
                }
                else
                {
                    w.WriteStartArray("embedding"u8);
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

        return output.WrittenSpan.ToArray();
    }

    private static float[] Floats(JsonElement embedding)
    {
        if (embedding.ValueKind == JsonValueKind.String)
        {
            var bytes = embedding.GetBytesFromBase64();
            if (bytes.Length % sizeof(float) != 0)
            {
                throw new FormatException($"A base64 embedding of {bytes.Length} bytes is not whole float32 values.");
            }

            var floats = new float[bytes.Length / sizeof(float)];
            for (var i = 0; i < floats.Length; i++)
            {
                floats[i] = System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(i * sizeof(float)));
            }

            return floats;
        }

        var vector = new float[embedding.GetArrayLength()];
        var k = 0;
        foreach (var x in embedding.EnumerateArray())
        {
            vector[k++] = x.GetSingle();
        }

        return vector;
    }
}
