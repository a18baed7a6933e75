using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// OpenAI's image generation request (<c>POST /v1/images/generations</c>) as the pipeline carries it (<see cref="Operations"/>):
/// <c>prompt</c>, <c>model</c> (a model group; <see cref="DefaultModel"/> when left out, as OpenAI defaults it), <c>n</c>
/// (the images asked for: the answer must hold as many) and the options — <c>size</c>, <c>quality</c>, <c>style</c>,
/// <c>response_format</c>, <c>background</c>, <c>output_format</c>, <c>output_compression</c>, <c>moderation</c>,
/// <c>user</c> — checked for their type and sent on with any other member as they came; their values are the model's
/// to accept (each model takes different sizes). The answer's images (<c>b64_json</c> or <c>url</c>) are never parsed.
/// </summary>
internal static class Images
{
    /// <summary>The model a request without one is for (OpenAI's default).</summary>
    public const string DefaultModel = "dall-e-2";

    /// <summary>OpenAI's bound on <c>n</c>.</summary>
    public const int MaxImages = 10;

    /// <summary>The usage member that counts the answer's images for pricing (<see cref="Cost.PricingTable"/>); never written out.</summary>
    private const string GeneratedMember = "generated_images";

    /// <summary>Checks an image generation request given as JSON and makes the pipeline's request of it.</summary>
    /// <exception cref="InvalidRequestException">A member is missing or not what the schema allows; its name is the error's param.</exception>
    /// <param name="route">The model the route names (Azure's deployment path), which the body's then does not.</param>
    public static ChatCompletionRequest ToRequest(JsonElement root, string? route = null)
    {
        var model = Operations.Model(root, route, "an image model", DefaultModel);

        if (!root.TryGetProperty("prompt", out var prompt) || prompt.ValueKind != JsonValueKind.String)
        {
            throw new InvalidRequestException("prompt", "'prompt' is required: a text description of the image.");
        }

        var text = Operations.NonEmpty(prompt, "prompt");
        if (root.TryGetProperty("n", out var n) && n.ValueKind != JsonValueKind.Null
            && !(n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out var count) && count is >= 1 and <= MaxImages))
        {
            throw new InvalidRequestException("n", $"'n' must be a whole number from 1 to {MaxImages}.");
        }

        foreach (var member in (ReadOnlySpan<string>)["size", "quality", "style", "background", "output_format", "moderation", "user"])
        {
            if (root.TryGetProperty(member, out var value) && value.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
            {
                throw new InvalidRequestException(member, $"'{member}' must be a string.");
            }
        }

        if (root.TryGetProperty("response_format", out var format) && format.ValueKind != JsonValueKind.Null
            && !(format.ValueKind == JsonValueKind.String && (format.ValueEquals("url") || format.ValueEquals("b64_json"))))
        {
            throw new InvalidRequestException("response_format", "'response_format' must be \"url\" or \"b64_json\".");
        }

        if (root.TryGetProperty("output_compression", out var compression) && compression.ValueKind != JsonValueKind.Null
            && !(compression.ValueKind == JsonValueKind.Number && compression.TryGetInt32(out var c) && c is >= 0 and <= 100))
        {
            throw new InvalidRequestException("output_compression", "'output_compression' must be a whole number from 0 to 100.");
        }

        if (root.TryGetProperty("stream", out var stream) && stream.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
        {
            throw new InvalidRequestException("stream", "'stream' must be true or false.");
        }

        if (root.TryGetProperty("partial_images", out var partials) && partials.ValueKind != JsonValueKind.Null
            && !(partials.ValueKind == JsonValueKind.Number && partials.TryGetInt32(out var p) && p is >= 0 and <= MaxPartialImages))
        {
            throw new InvalidRequestException("partial_images", $"'partial_images' must be a whole number from 0 to {MaxPartialImages}.");
        }

        if (stream.ValueKind == JsonValueKind.True && Count(root) != 1)
        {
            throw new InvalidRequestException("n", "A streamed image generation makes one image: ask with 'n' 1 (or without 'stream').");
        }

        return new ChatCompletionRequest
        {
            Model = model,
            Messages = [ChatCompletionMessage.User(text)],
            User = root.TryGetProperty("user", out var user) && user.ValueKind == JsonValueKind.String ? user.GetString() : null,
            Operation = new OperationRequest(OperationKind.Images, root),
        };
    }

    /// <summary>The most partial images a streamed generation may ask for (OpenAI's bound).</summary>
    public const int MaxPartialImages = 3;

    /// <summary>
    /// Whether a checked image generation or edit asks to be streamed (<c>stream: true</c>; an edit's form field "true"):
    /// its events are passed on as they come.
    /// </summary>
    public static bool Streams(OperationRequest operation) =>
        operation.Body.TryGetProperty("stream", out var s) && operation.Kind switch
        {
            OperationKind.Images => s.ValueKind == JsonValueKind.True,
            OperationKind.ImageEdit => s.ValueKind == JsonValueKind.String && string.Equals(s.GetString(), "true", StringComparison.OrdinalIgnoreCase),
            _ => false,
        };

    /// <summary>The prefix of a streamed operation's event types: <c>image_generation</c>, or an edit's <c>image_edit</c>.</summary>
    public static string EventPrefix(OperationRequest operation) => operation.Kind == OperationKind.ImageEdit ? "image_edit" : "image_generation";

    /// <summary>
    /// One server-sent event of a streamed image generation, as a chunk keeping its bytes: an
    /// <c>image_generation.partial_image</c> (its <c>b64_json</c>) carries content — the stream starts for the caller —,
    /// <c>image_generation.completed</c> (the image, and gpt-image-1's token usage) finishes it (<paramref name="done"/>),
    /// billed as a whole answer of one image is (its tokens, and one image at its size's weight); any other type passes
    /// through; an object with an <c>error</c> is <paramref name="error"/> (no chunk).
    /// </summary>
    /// <exception cref="JsonException">The event is not a JSON object, or an image event without its <c>b64_json</c>.</exception>
    public static ChatCompletionChunk? ReadEvent(ReadOnlySpan<byte> data, OperationRequest operation, string model, long created, out JsonElement? error, out bool done)
    {
        done = false;
        using var doc = Operations.ParseEvent(data, "An image generation event", out error, out var type);
        if (doc is null)
        {
            return null;
        }

        var root = doc.RootElement;
        var prefix = EventPrefix(operation);
        var image = type == prefix + ".partial_image" || type == prefix + ".completed";
        if (image && !(root.TryGetProperty("b64_json", out var b64) && b64.ValueKind == JsonValueKind.String))
        {
            throw new JsonException($"An {type} event has no 'b64_json' string.");
        }

        done = type == prefix + ".completed";
        TokenUsage? usage = null;
        if (done)
        {
            usage = new TokenUsage();
            if (root.TryGetProperty("usage", out var counted) && counted.ValueKind == JsonValueKind.Object)
            {
                var reader = new Utf8JsonReader(System.Text.Encoding.UTF8.GetBytes(counted.GetRawText()));
                reader.Read();
                usage = ReadUsage(ref reader);
            }

            SetGenerated(usage, 1, operation.Body);
        }

        var chunk = new ChatCompletionChunk { Id = "image", Created = created, Model = model, Usage = usage };
        chunk.KeepEventJson(data, membersUnread: false);
        chunk.SkipChoices(1, finishes: done, contentBytes: image ? 1 : 0); // content, not text: billed per image and token
        return chunk;
    }

    /// <summary>
    /// A streamed generation's events as OpenAI sends them, made of a whole answer of one image (the simulators'): its
    /// <c>partial_images</c> partial images, then <c>image_generation.completed</c> with the answer's usage and members.
    /// </summary>
    /// <exception cref="ProviderException">The answer has no <c>b64_json</c> (a DALL·E model: only gpt-image models stream).</exception>
    public static List<byte[]> Events(OperationAnswer answer, OperationRequest operation, long created)
    {
        using var list = JsonDocument.Parse(answer.List);
        if (list.RootElement.GetArrayLength() == 0 || !list.RootElement[0].TryGetProperty("b64_json", out var b64))
        {
            const string Message = "Streaming image generation is supported for gpt-image models only.";
            throw new ProviderException(AttemptOutcome.NonRetryableError, Message, 400) { ErrorType = "invalid_request_error", Param = "stream", UpstreamMessage = Message };
        }

        using var members = JsonDocument.Parse(answer.Members.IsEmpty ? "{}"u8.ToArray() : [.. "{"u8, .. answer.Members.Span, .. "}"u8]);
        var partials = !operation.Body.TryGetProperty("partial_images", out var p) ? 0
            : p.ValueKind == JsonValueKind.Number ? p.GetInt32()
            : int.Parse(p.GetString()!, System.Globalization.CultureInfo.InvariantCulture); // an edit's form field, checked
        var events = new List<byte[]>(partials + 1);
        for (var i = 0; i <= partials; i++)
        {
            var completed = i == partials;
            var buffer = new System.Buffers.ArrayBufferWriter<byte>(b64.GetString()!.Length + 256);
            using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
            {
                w.WriteStartObject();
                w.WriteString("type", EventPrefix(operation) + (completed ? ".completed" : ".partial_image"));
                w.WriteString("b64_json", b64.GetString());
                w.WriteNumber("created_at", created);
                foreach (var member in members.RootElement.EnumerateObject())
                {
                    if (completed || member.Name != "usage")
                    {
                        member.WriteTo(w);
                    }
                }

                if (!completed)
                {
                    w.WriteNumber("partial_image_index", i);
                }

                w.WriteEndObject();
            }

            events.Add(buffer.WrittenSpan.ToArray());
        }

        return events;
    }

    /// <summary>The most images one edit may take (gpt-image-1's bound).</summary>
    public const int MaxEditImages = 16;

    /// <summary>
    /// Checks an image edit (<c>POST /v1/images/edits</c>: a multipart form) and makes the pipeline's request of it: the
    /// images to edit (<c>image</c>, or <c>image[]</c> for several, at most <see cref="MaxEditImages"/>), an optional
    /// <c>mask</c>, <c>prompt</c> (non-empty), <c>model</c> (<see cref="DefaultModel"/> when left out), <c>n</c> (1–10),
    /// <c>response_format</c>, <c>output_compression</c>; other fields (size, quality, background, input_fidelity…) sent
    /// on as they came; <c>stream</c> refused.
    /// </summary>
    /// <exception cref="InvalidRequestException">A field or file is missing or not what the API allows; its name is the error's param.</exception>
    public static ChatCompletionRequest EditRequest(IReadOnlyList<KeyValuePair<string, string>> fields, IReadOnlyList<FilePart> files, string? route = null)
    {
        Forms.CheckNames(fields);
        var model = route ?? (Forms.Field(fields, "model") is { Length: > 0 } named ? named : DefaultModel);
        if (Forms.Field(fields, "prompt") is not { Length: > 0 } prompt)
        {
            throw new InvalidRequestException("prompt", "'prompt' is required: a text description of the edit.");
        }

        var images = files.Count(static f => f.Field is "image" or "image[]");
        if (images == 0 || images > MaxEditImages || files.Any(static f => f.File.Bytes.IsEmpty))
        {
            throw new InvalidRequestException("image", $"'image' is required: 1 to {MaxEditImages} non-empty image files ('image', or 'image[]' for several).");
        }

        var other = files.Any(static f => f.Field is not ("image" or "image[]" or "mask"));
        if (other || files.Count(static f => f.Field == "mask") > 1)
        {
            throw new InvalidRequestException(other ? null : "mask", "The form takes the images to edit ('image' or 'image[]') and at most one 'mask'.");
        }

        if (Forms.Field(fields, "n") is { } n && !(int.TryParse(n, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var count) && count is >= 1 and <= MaxImages))
        {
            throw new InvalidRequestException("n", $"'n' must be a whole number from 1 to {MaxImages}.");
        }

        if (Forms.Field(fields, "response_format") is { } format && format is not ("url" or "b64_json"))
        {
            throw new InvalidRequestException("response_format", "'response_format' must be \"url\" or \"b64_json\".");
        }

        if (Forms.Field(fields, "output_compression") is { } compression && !(int.TryParse(compression, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var c) && c is >= 0 and <= 100))
        {
            throw new InvalidRequestException("output_compression", "'output_compression' must be a whole number from 0 to 100.");
        }

        var streamed = Forms.Field(fields, "stream") is { } stream && (stream.Equals("true", StringComparison.OrdinalIgnoreCase)
            || (!stream.Equals("false", StringComparison.OrdinalIgnoreCase) ? throw new InvalidRequestException("stream", "'stream' must be true or false.") : false));
        if (Forms.Field(fields, "partial_images") is { } partials && !(int.TryParse(partials, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var p) && p <= MaxPartialImages))
        {
            throw new InvalidRequestException("partial_images", $"'partial_images' must be a whole number from 0 to {MaxPartialImages}.");
        }

        if (streamed && Forms.Field(fields, "n") is { } one && one != "1")
        {
            throw new InvalidRequestException("n", "A streamed image edit makes one image: ask with 'n' 1 (or without 'stream').");
        }

        return new ChatCompletionRequest
        {
            Model = model,
            Messages = [ChatCompletionMessage.User($"{prompt}\n\n[{images} image(s) to edit{(files.Any(static f => f.Field == "mask") ? ", a mask" : string.Empty)}]")],
            Operation = new OperationRequest(OperationKind.ImageEdit, Forms.Json(fields, model)) { Files = files },
        };
    }

    /// <summary>How many images a checked request asks for (<c>n</c>, 1 when left out; a form's value is text).</summary>
    public static int Count(JsonElement body) =>
        !body.TryGetProperty("n", out var n) ? 1
        : n.ValueKind == JsonValueKind.Number ? n.GetInt32()
        : n.ValueKind == JsonValueKind.String && int.TryParse(n.GetString(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var count) ? count
        : 1;

    /// <summary>
    /// An image answer's usage (gpt-image-1: <c>input_tokens</c>, <c>output_tokens</c>, <c>total_tokens</c>) as the
    /// gateway's (prompt, completion, total), the reader on the object's start; unknown or malformed counts are none.
    /// </summary>
    public static TokenUsage ReadUsage(ref Utf8JsonReader reader)
    {
        var usage = new TokenUsage();
        var depth = reader.CurrentDepth;
        while (reader.Read() && reader.CurrentDepth > depth)
        {
            if (reader.TokenType != JsonTokenType.PropertyName || reader.CurrentDepth != depth + 1)
            {
                continue;
            }

            var which = reader.ValueTextEquals("input_tokens"u8) ? 0 : reader.ValueTextEquals("output_tokens"u8) ? 1 : reader.ValueTextEquals("total_tokens"u8) ? 2 : -1;
            reader.Read();
            if (which >= 0 && reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var count) && count >= 0)
            {
                _ = which switch { 0 => usage.PromptTokens = count, 1 => usage.CompletionTokens = count, _ => usage.TotalTokens = count };
            }
            else
            {
                reader.Skip();
            }
        }

        usage.TotalTokens = Math.Max(usage.TotalTokens, usage.PromptTokens + usage.CompletionTokens);
        return usage;
    }

    /// <summary>
    /// Marks how many images an answer holds on its usage, counted in standard images (what <see cref="Generated"/> reads
    /// for pricing): each weighed by its size and quality as OpenAI prices DALL·E (<see cref="Weight"/>).
    /// </summary>
    public static void SetGenerated(TokenUsage usage, int images, JsonElement body) =>
        (usage.AdditionalProperties ??= [])[GeneratedMember] = JsonSerializer.SerializeToElement(images * Weight(body), GatewayJsonContext.Default.Decimal);

    /// <summary>
    /// One image's price in standard images (<see cref="Cost.ModelPrice.PerImage"/> is a standard 1024x1024 image's), by
    /// OpenAI's DALL·E list: DALL·E 3 $0.04 standard, $0.08 for a wide or tall one or an HD square, $0.12 an HD wide one;
    /// DALL·E 2 $0.02 at 1024x1024, $0.018 at 512x512, $0.016 at 256x256. A model priced by the token has no image price.
    /// </summary>
    public static decimal Weight(JsonElement body)
    {
        var size = body.TryGetProperty("size", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString() : null;
        var hd = body.TryGetProperty("quality", out var q) && q.ValueKind == JsonValueKind.String && q.ValueEquals("hd");
        var wide = size is "1792x1024" or "1024x1792";
        return size switch
        {
            "256x256" => 0.8m,
            "512x512" => 0.9m,
            _ => (hd, wide) switch { (false, false) => 1m, (true, true) => 3m, _ => 2m },
        };
    }

    /// <summary>The standard images an answer's usage says were made (0 for any other answer).</summary>
    public static decimal Generated(TokenUsage usage) =>
        usage.AdditionalProperties?.TryGetValue(GeneratedMember, out var n) == true && n.ValueKind == JsonValueKind.Number && n.TryGetDecimal(out var images) && images > 0 ? images : 0;
}
