using System.Buffers;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// A provider that also serves OpenAI's embeddings API (<c>POST {base}/embeddings</c>): the OpenAI and OpenAI-compatible
/// adapters (Azure included) and the simulated provider. Anthropic has no embeddings API; a deployment whose provider does
/// not implement this refuses an embeddings request (<see cref="Embeddings.NotServed"/>).
/// </summary>
internal interface IEmbeddingProvider
{
    /// <summary>
    /// Sends one embeddings request (<see cref="ChatCompletionRequest.Embedding"/>) and returns the answer in the gateway's
    /// answer type: no choices, the upstream's <c>data</c> list kept as its bytes in
    /// <see cref="ChatCompletionResponse.Embeddings"/>, its usage (prompt tokens only).
    /// </summary>
    ValueTask<ChatCompletionResponse> EmbedAsync(ProviderRequest request, CancellationToken cancellationToken);
}

/// <summary>
/// OpenAI's embeddings request and answer as the pipeline carries them. An embeddings request travels as a
/// <see cref="ChatCompletionRequest"/> so every stage serves it as it serves a chat request — admission (rate limits,
/// token limits, budgets), the cache and single flight, routing with failover and health, the worker pools, cost,
/// metrics and the request log: its inputs are one user message (what admission counts, the log shows), and the request
/// body as the caller sent it rides in <see cref="ChatCompletionRequest.Embedding"/> (what the cache key covers and the
/// upstream gets, with the deployment's model). The answer's vectors are never parsed into numbers: the upstream's
/// <c>data</c> is kept as JSON and written as it came.
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
    public static ChatCompletionRequest Read(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body);
        var root = JsonElement.ParseValue(ref reader);
        if (reader.Read())
        {
            throw new JsonException("The body holds more than one JSON value.");
        }

        return ToRequest(root);
    }

    /// <summary>Checks an embeddings request given as JSON and makes the pipeline's request of it (see <see cref="Read"/>).</summary>
    public static ChatCompletionRequest ToRequest(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException(null, "The request body must be a JSON object.");
        }

        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.String || model.GetString() is not { Length: > 0 } name)
        {
            throw new InvalidRequestException("model", "'model' is required: a string naming an embedding model.");
        }

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
            Embedding = root,
        };
    }

    /// <summary>
    /// Checks <c>input</c> and gives what stands for it in the pipeline's one user message: the texts, one per paragraph;
    /// token ids as how many there are (they are counted, not read).
    /// </summary>
    private static string Describe(JsonElement input)
    {
        switch (input.ValueKind)
        {
            case JsonValueKind.String:
                var only = input.GetString()!;
                return only.Length > 0 ? only : throw new InvalidRequestException("input", "'input' must not be empty.");
            case JsonValueKind.Array:
                var count = input.GetArrayLength();
                if (count == 0 || count > MaxInputs)
                {
                    throw new InvalidRequestException("input", $"'input' must hold from 1 to {MaxInputs} items (it holds {count}).");
                }

                var first = input[0].ValueKind;
                if (first == JsonValueKind.Number)
                {
                    CheckTokens(input, "input");
                    return $"[{count} token ids]";
                }

                var text = new StringBuilder();
                var i = 0;
                foreach (var item in input.EnumerateArray())
                {
                    if (item.ValueKind != first)
                    {
                        throw new InvalidRequestException($"input[{i}]", "'input' must be a list of strings, of token ids or of lists of token ids, not a mix.");
                    }

                    if (first == JsonValueKind.String)
                    {
                        var s = item.GetString()!;
                        if (s.Length == 0)
                        {
                            throw new InvalidRequestException($"input[{i}]", $"'input[{i}]' must not be empty.");
                        }

                        text.Append(i == 0 ? string.Empty : "\n\n").Append(s);
                    }
                    else if (first == JsonValueKind.Array)
                    {
                        if (item.GetArrayLength() == 0)
                        {
                            throw new InvalidRequestException($"input[{i}]", $"'input[{i}]' must not be empty.");
                        }

                        CheckTokens(item, $"input[{i}]");
                        text.Append(i == 0 ? string.Empty : "\n\n").Append('[').Append(item.GetArrayLength()).Append(" token ids]");
                    }
                    else
                    {
                        throw new InvalidRequestException($"input[{i}]", "'input' must be a list of strings, of token ids or of lists of token ids.");
                    }

                    i++;
                }

                return text.ToString();
            default:
                throw new InvalidRequestException("input", "'input' must be a string, a list of strings, a list of token ids or a list of lists of token ids.");
        }
    }

    private static void CheckTokens(JsonElement tokens, string param)
    {
        var i = 0;
        foreach (var token in tokens.EnumerateArray())
        {
            if (token.ValueKind != JsonValueKind.Number || !token.TryGetInt32(out var id) || id < 0)
            {
                throw new InvalidRequestException($"{param}[{i}]", $"'{param}' must hold token ids: whole numbers from 0 to {int.MaxValue}.");
            }

            i++;
        }
    }

    /// <summary>How many embeddings the request asks for: one per input.</summary>
    public static int InputCount(JsonElement body) =>
        body.TryGetProperty("input", out var input) && input.ValueKind == JsonValueKind.Array && input[0].ValueKind != JsonValueKind.Number ? input.GetArrayLength() : 1;

    /// <summary>The inputs' texts (none for token ids), for a tokenizer or a simulator.</summary>
    public static IEnumerable<string> Texts(JsonElement body)
    {
        var input = body.GetProperty("input");
        if (input.ValueKind == JsonValueKind.String)
        {
            yield return input.GetString()!;
            yield break;
        }

        foreach (var item in input.EnumerateArray())
        {
            if (item.ValueKind == JsonValueKind.String)
            {
                yield return item.GetString()!;
            }
        }
    }

    /// <summary>The inputs' token count: each text counted by <paramref name="count"/>, each token id one.</summary>
    public static int PromptTokens(JsonElement body, Func<string, int> count)
    {
        var input = body.GetProperty("input");
        if (input.ValueKind == JsonValueKind.String)
        {
            return count(input.GetString()!);
        }

        var tokens = 0;
        foreach (var item in input.EnumerateArray())
        {
            tokens += item.ValueKind switch
            {
                JsonValueKind.String => count(item.GetString()!),
                JsonValueKind.Array => item.GetArrayLength(),
                _ => 1,
            };
        }

        return tokens;
    }

    /// <summary>The body an upstream gets: the caller's, its <c>model</c> the deployment's.</summary>
    public static byte[] UpstreamBody(JsonElement body, string model)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            foreach (var member in body.EnumerateObject())
            {
                if (!member.NameEquals("model"))
                {
                    member.WriteTo(w);
                }
            }

            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// Reads an OpenAI embeddings answer in one forward pass: <c>model</c>, <c>usage</c> and <c>data</c>, which is kept as
    /// its bytes (<see cref="EmbeddingsData"/>: never a parsed document, whose index alone would be about the size of the
    /// vectors' text again) after each item is checked — an object whose <c>embedding</c> is a list of numbers or a
    /// (base64) string. <paramref name="copy"/>: the bytes of <c>data</c> are copied out of <paramref name="json"/> (a
    /// pooled buffer); else the answer refers to them (an immutable stored answer).
    /// </summary>
    /// <param name="error">An <c>error</c> object the body carries (a 200 that is an error), for the caller to classify.</param>
    /// <exception cref="JsonException">The body is not JSON, or not an object.</exception>
    /// <exception cref="ProviderException">The answer is not a usable embeddings list (retryable: the provider's failure).</exception>
    public static ChatCompletionResponse ReadAnswer(ReadOnlyMemory<byte> json, bool copy, string provider, out JsonElement? error)
    {
        error = null;
        var reader = new Utf8JsonReader(json.Span);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            throw new JsonException("The answer is not a JSON object.");
        }

        var response = new ChatCompletionResponse { Object = "list", Choices = [] };
        EmbeddingsData? data = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (reader.ValueTextEquals("data"u8))
            {
                reader.Read();
                if (reader.TokenType != JsonTokenType.StartArray)
                {
                    reader.Skip();
                    continue; // not a list: no data (unusable unless a later 'data' is one)
                }

                var start = (int)reader.TokenStartIndex;
                var count = ReadItems(ref reader, provider);
                var bytes = json[start..(int)reader.BytesConsumed];
                data = new EmbeddingsData(copy ? bytes.ToArray() : bytes, count);
            }
            else if (reader.ValueTextEquals("model"u8))
            {
                reader.Read();
                response.Model = reader.TokenType == JsonTokenType.String ? reader.GetString()! : response.Model;
                reader.Skip();
            }
            else if (reader.ValueTextEquals("usage"u8))
            {
                reader.Read();
                response.Usage = reader.TokenType == JsonTokenType.StartObject ? ReadUsage(ref reader) : null;
                reader.Skip();
            }
            else if (reader.ValueTextEquals("error"u8))
            {
                reader.Read();
                error = JsonElement.ParseValue(ref reader);
            }
            else
            {
                reader.Read();
                reader.Skip();
            }
        }

        response.Embeddings = data;
        return response;
    }

    /// <summary>Checks each item of a <c>data</c> list (the reader on its start), leaving the reader on its end; how many there are.</summary>
    private static int ReadItems(ref Utf8JsonReader reader, string provider)
    {
        var count = 0;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            var vector = false;
            if (reader.TokenType == JsonTokenType.StartObject)
            {
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var embedding = reader.ValueTextEquals("embedding"u8);
                    reader.Read();
                    if (embedding && reader.TokenType == JsonTokenType.String)
                    {
                        vector = true;
                    }
                    else if (embedding && reader.TokenType == JsonTokenType.StartArray)
                    {
                        while (reader.Read() && reader.TokenType == JsonTokenType.Number)
                        {
                        }

                        vector = reader.TokenType == JsonTokenType.EndArray;
                        if (!vector)
                        {
                            throw Unusable(provider, "an embedding holds something that is not a number");
                        }
                    }
                    else
                    {
                        reader.Skip();
                    }
                }
            }

            if (!vector)
            {
                throw Unusable(provider, "an item of 'data' has no 'embedding' (a list of numbers or a base64 string)");
            }

            count++;
        }

        return count;
    }

    private static TokenUsage ReadUsage(ref Utf8JsonReader reader)
    {
        var usage = new TokenUsage();
        var depth = reader.CurrentDepth;
        while (reader.Read() && reader.CurrentDepth > depth)
        {
            if (reader.TokenType != JsonTokenType.PropertyName)
            {
                continue;
            }

            var prompt = reader.ValueTextEquals("prompt_tokens"u8);
            var total = reader.ValueTextEquals("total_tokens"u8);
            reader.Read();
            if ((prompt || total) && reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var n))
            {
                _ = prompt ? usage.PromptTokens = n : usage.TotalTokens = n;
            }
            else
            {
                reader.Skip();
            }
        }

        return usage;
    }

    /// <summary>
    /// An answer as the worker accepts it from any provider: embeddings (<see cref="ChatCompletionResponse.Embeddings"/>),
    /// one per input. Anything else is the provider's retryable failure (a hostile or broken upstream's answer is never
    /// passed on as vectors).
    /// </summary>
    public static ChatCompletionResponse Accept(ChatCompletionResponse? response, ChatCompletionRequest request, string provider)
    {
        if (response?.Embeddings is not { } data)
        {
            throw Unusable(provider, "it has no 'data' list");
        }

        var expected = InputCount(request.Embedding!.Value);
        if (data.Count != expected)
        {
            throw Unusable(provider, $"it holds {data.Count} embeddings for {expected} inputs");
        }

        response.Choices ??= [];
        response.Object = "list";
        return response;
    }

    /// <summary>
    /// The embeddings of an answer as numbers, in input order (by each item's <c>index</c> when it has one in range): a JSON
    /// list of numbers, or base64 of little-endian float32s (what <c>encoding_format: "base64"</c> answers).
    /// </summary>
    /// <exception cref="FormatException">Base64 that is not, or not whole float32s.</exception>
    public static float[][] Vectors(EmbeddingsData data)
    {
        using var doc = JsonDocument.Parse(data.Json);
        var vectors = new float[data.Count][];
        var position = 0;
        foreach (var item in doc.RootElement.EnumerateArray())
        {
            var index = item.TryGetProperty("index", out var i) && i.ValueKind == JsonValueKind.Number && i.TryGetInt32(out var n) && n >= 0 && n < vectors.Length && vectors[n] is null ? n : position;
            vectors[index] = Floats(item.GetProperty("embedding"));
            position++;
        }

        return vectors;
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

    /// <summary>The parts of OpenAI's embeddings answer around its <c>data</c>: <c>{"object":"list","data":</c> … <c>,"model":…,"usage":{…}}</c>.</summary>
    public static (byte[] Head, byte[] Tail) Frame(ChatCompletionResponse response)
    {
        var head = """{"object":"list","data":"""u8.ToArray();
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("model", response.Model);
            w.WriteStartObject("usage");
            w.WriteNumber("prompt_tokens", response.Usage?.PromptTokens ?? 0);
            w.WriteNumber("total_tokens", response.Usage?.TotalTokens ?? 0);
            w.WriteEndObject();
            w.WriteEndObject();
        }

        var tail = buffer.WrittenSpan.ToArray();
        tail[0] = (byte)','; // the object's members, after data's
        return (head, tail);
    }

    /// <summary>OpenAI's embeddings answer, whole, as <c>/v1/embeddings</c> writes it (<see cref="Frame"/> around the data).</summary>
    public static byte[] ToJson(ChatCompletionResponse response)
    {
        var (head, tail) = Frame(response);
        var data = response.Embeddings!.Json.Span;
        var json = new byte[head.Length + data.Length + tail.Length];
        head.CopyTo(json.AsSpan());
        data.CopyTo(json.AsSpan(head.Length));
        tail.CopyTo(json.AsSpan(head.Length + data.Length));
        return json;
    }

    /// <summary>The answer as a value of a JSON document being written (a batch result's <c>body</c>).</summary>
    public static void WriteAnswer(Utf8JsonWriter w, ChatCompletionResponse response) => w.WriteRawValue(ToJson(response), skipInputValidation: true);

    /// <summary>
    /// An embeddings request for a deployment whose provider has no embeddings API (Anthropic, a chat client): not sent, so
    /// the group's other deployments and its fallbacks are tried and the deployment's health is untouched; when none can
    /// embed, the caller's 400 naming <c>model</c>.
    /// </summary>
    public static ProviderException NotServed(string provider, string model) =>
        ProviderException.Unsupported("model", $"The model '{ProviderException.Quoted(model)}' is served by '{provider}', which has no embeddings API.");

    /// <summary>The same for a deployment whose upstream answered an embeddings request as a route or model it does not serve.</summary>
    public static ProviderException NotServedBy(string provider, string model, ProviderException refusal) =>
        ProviderException.Unsupported("model", $"The model '{ProviderException.Quoted(model)}' is served by '{provider}', whose upstream serves no embeddings for it ({refusal.StatusCode}: {refusal.UpstreamMessage ?? refusal.Message}).");

    private static ProviderException Unusable(string provider, string why) =>
        new(AttemptOutcome.RetryableError, $"'{provider}' returned an answer that is not a usable embeddings list: {why}.");
}

/// <summary>
/// An embeddings answer's <c>data</c> list as the upstream wrote it (immutable: shared by a stored answer and its hits) and
/// how many embeddings it holds.
/// </summary>
internal sealed record EmbeddingsData(ReadOnlyMemory<byte> Json, int Count);
