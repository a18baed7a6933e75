using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>The OpenAI APIs besides chat that the pipeline carries.</summary>
internal enum OperationKind
{
    /// <summary><c>POST /v1/embeddings</c> (<see cref="Providers.Embeddings"/>).</summary>
    Embeddings,

    /// <summary><c>POST /v1/moderations</c> (<see cref="Providers.Moderations"/>).</summary>
    Moderations,

    /// <summary><c>POST /v1/images/generations</c> (<see cref="Providers.Images"/>).</summary>
    Images,

    /// <summary><c>POST /v1/audio/speech</c> (<see cref="Providers.Speech"/>): the answer is audio, not JSON.</summary>
    Speech,

    /// <summary><c>POST /v1/audio/transcriptions</c> (<see cref="Providers.Transcriptions"/>): a multipart form in.</summary>
    Transcription,

    /// <summary><c>POST /v1/audio/translations</c> (<see cref="Providers.Transcriptions"/>): a transcription into English.</summary>
    Translation,

    /// <summary><c>POST /v1/rerank</c> (<see cref="Providers.Rerank"/>): documents ranked against a query.</summary>
    Rerank,

    /// <summary><c>POST /v1/images/edits</c> (<see cref="Images.EditRequest"/>): a multipart form in, images out.</summary>
    ImageEdit,
}

/// <summary>An operation's request: its kind and its body as the caller sent it (checked), which the upstream gets with the deployment's model.</summary>
internal sealed record OperationRequest(OperationKind Kind, JsonElement Body)
{
    /// <summary>A multipart request's files (a transcription's audio, an edit's images); the body then holds the form's text fields.</summary>
    public IReadOnlyList<FilePart>? Files { get; init; }

    /// <summary>The first file of a multipart request (a transcription's audio).</summary>
    public Upload? Upload => Files is { Count: > 0 } files ? files[0].File : null;

    /// <summary>The upstream route under the provider's base URL (<c>embeddings</c>, <c>moderations</c>).</summary>
    public string Path => Kind switch
    {
        OperationKind.Embeddings => "embeddings",
        OperationKind.Moderations => "moderations",
        OperationKind.Images => "images/generations",
        OperationKind.Speech => "audio/speech",
        OperationKind.Transcription => "audio/transcriptions",
        OperationKind.Translation => "audio/translations",
        OperationKind.Rerank => "rerank",
        _ => "images/edits",
    };

    /// <summary>
    /// Marks on <paramref name="usage"/> what the request will be billed beyond its tokens, as far as the request says it:
    /// the images asked (weighed by size and quality, <see cref="Images.SetGenerated"/>), the audio's minutes where its file
    /// says them (<see cref="AudioDuration"/>). What the budgets reserve before the answer; the answer's own usage bills.
    /// </summary>
    public void KnownCost(TokenUsage usage)
    {
        if (Kind is OperationKind.Images or OperationKind.ImageEdit)
        {
            Images.SetGenerated(usage, Images.Count(Body), Body);
        }
        else if (Kind is OperationKind.Transcription or OperationKind.Translation && Upload is { } audio && AudioDuration.Seconds(audio.Bytes.Span) is { } seconds)
        {
            Transcriptions.SetSeconds(usage, seconds);
        }
    }

    /// <summary>How many answers the request asks for (embeddings, moderation results: one per input; images: <c>n</c>).</summary>
    public int InputCount
    {
        get
        {
            if (Kind is not (OperationKind.Embeddings or OperationKind.Moderations))
            {
                return Kind switch { OperationKind.Images or OperationKind.ImageEdit => Images.Count(Body), OperationKind.Rerank => Rerank.Results(Body), _ => 1 };
            }

            var input = Body.GetProperty("input");
            return input.ValueKind != JsonValueKind.Array || input[0].ValueKind is JsonValueKind.Number or JsonValueKind.Object ? 1 : input.GetArrayLength();
        }
    }
}

/// <summary>
/// An operation's answer: its list (<c>data</c>, <c>results</c>) as the upstream wrote it — immutable, shared by a stored
/// answer and its hits — how many items it holds, a moderation's <c>id</c>, and an image answer's other members as they
/// came (<c>"usage":{…},"size":…</c>: written back after the list).
/// </summary>
internal sealed record OperationAnswer(OperationKind Kind, ReadOnlyMemory<byte> List, int Count, string? Id = null)
{
    public ReadOnlyMemory<byte> Members { get; init; }

    /// <summary>What the answer is written as: JSON, or speech's audio format (<see cref="Speech.MediaType"/>).</summary>
    public string MediaType { get; init; } = "application/json";
}

/// <summary>
/// A provider that streams the operations that stream — transcriptions asked with <c>stream=true</c> (their text as
/// chunks, <see cref="Transcriptions.ReadEvent"/>) and speech (its audio as it comes, <see cref="Speech.Block"/>): its
/// <see cref="ILlmProvider.StreamAsync"/> takes such a request. They are never sent to another provider: it would read
/// them as chat requests.
/// </summary>
internal interface IStreamedOperationProvider;

/// <summary>
/// A provider that also serves OpenAI's other APIs (<see cref="OperationKind"/>): the OpenAI-format adapters (an upstream
/// without the route is passed over, <see cref="Operations.NotServedBy"/>) and the simulated provider. Anthropic and
/// custom providers have none: a deployment on them is passed over unsent (<see cref="Operations.NotServed"/>).
/// </summary>
internal interface IOperationProvider
{
    /// <summary>
    /// Sends one operation (<see cref="ChatCompletionRequest.Operation"/>) and returns its answer in the gateway's answer
    /// type: no choices, the upstream's list kept as its bytes in <see cref="ChatCompletionResponse.Operation"/>, usage
    /// when the upstream gives it (embeddings).
    /// </summary>
    ValueTask<ChatCompletionResponse> SendAsync(ProviderRequest request, CancellationToken cancellationToken);
}

/// <summary>
/// What every operation shares on its way through the pipeline. An operation travels as a <see cref="ChatCompletionRequest"/>
/// so every stage serves it as it serves a chat request — admission (rate and token limits, budgets), the cache and
/// single flight, routing with failover and health, the worker pools, cost, metrics and the request log: its inputs'
/// text is one user message (what the log shows), its body rides in <see cref="ChatCompletionRequest.Operation"/> (what
/// admission counts, the cache key covers and the upstream gets). The answer's list is never parsed into objects: it is
/// read once, each item checked, kept as its bytes and written as it came.
/// </summary>
internal static class Operations
{
    /// <summary>One JSON value (the whole body), or a <see cref="JsonException"/>.</summary>
    public static JsonElement Parse(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body);
        var root = JsonElement.ParseValue(ref reader);
        if (reader.Read())
        {
            throw new JsonException("The body holds more than one JSON value.");
        }

        return root;
    }

    /// <summary>Reads and checks an operation's body (<see cref="Embeddings.ToRequest"/>, <see cref="Moderations.ToRequest"/>).</summary>
    /// <exception cref="JsonException">The body is not one JSON value.</exception>
    /// <exception cref="InvalidRequestException">A member is missing or not what the schema allows; its name is the error's param.</exception>
    /// <param name="model">The model the route names (Azure's deployment path), which the body need not.</param>
    public static ChatCompletionRequest Read(OperationKind kind, ReadOnlySpan<byte> body, string? model = null) => kind switch
    {
        OperationKind.Embeddings => Embeddings.ToRequest(Parse(body), model),
        OperationKind.Moderations => Moderations.ToRequest(Parse(body), model),
        OperationKind.Images => Images.ToRequest(Parse(body), model),
        OperationKind.Speech => Speech.ToRequest(Parse(body), model),
        OperationKind.Rerank => Rerank.ToRequest(Parse(body)),
        _ => throw new InvalidOperationException("A transcription or an image edit is a multipart form, not JSON (Transcriptions.ToRequest, Images.EditRequest)."),
    };

    /// <summary>
    /// Checks an operation's <c>input</c> — a non-empty string, or a list of 1 to <see cref="Embeddings.MaxInputs"/> items
    /// of one kind among <paramref name="kinds"/> — and gives its text for the pipeline's one user message: the items'
    /// texts (<paramref name="item"/>, which checks each with its param, <c>input[3]</c>), one per paragraph; or what
    /// <paramref name="whole"/> makes of the list read as one input (embeddings' token ids), when it does.
    /// </summary>
    /// <param name="what">What <c>input</c> may be, in a refusal.</param>
    /// <param name="param">The member's name (<c>input</c>; a completion's <c>prompt</c>).</param>
    public static string DescribeInput(JsonElement input, string what, JsonValueKind[] kinds, Func<JsonElement, string, string> item, Func<JsonElement, string?>? whole = null, string param = "input")
    {
        switch (input.ValueKind)
        {
            case JsonValueKind.String:
                return NonEmpty(input, param);
            case JsonValueKind.Array:
                var count = input.GetArrayLength();
                if (count == 0 || count > Embeddings.MaxInputs)
                {
                    throw new InvalidRequestException(param, $"'{param}' must hold from 1 to {Embeddings.MaxInputs} items (it holds {count}).");
                }

                if (whole?.Invoke(input) is { } one)
                {
                    return one;
                }

                var first = input[0].ValueKind;
                var text = new System.Text.StringBuilder();
                var i = 0;
                foreach (var element in input.EnumerateArray())
                {
                    var at = $"{param}[{i}]";
                    if (element.ValueKind != first || Array.IndexOf(kinds, first) < 0)
                    {
                        throw new InvalidRequestException(at, $"'{param}' must be {what}{(Array.IndexOf(kinds, first) < 0 ? string.Empty : ", not a mix")}.");
                    }

                    text.Append(i == 0 ? string.Empty : "\n\n").Append(item(element, at));
                    i++;
                }

                return text.ToString();
            default:
                throw new InvalidRequestException(param, $"'{param}' must be {what}.");
        }
    }

    /// <summary>
    /// A request body's model, the body checked to be an object: the route's when it names one (Azure's deployment path),
    /// else the body's <c>model</c> — required (a non-empty string naming <paramref name="what"/>) unless
    /// <paramref name="fallback"/> stands for a body without one (the API's default model).
    /// </summary>
    public static string Model(JsonElement root, string? route, string what, string? fallback = null)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException(null, "The request body must be a JSON object.");
        }

        if (route is not null)
        {
            return route;
        }

        if (!root.TryGetProperty("model", out var m) || (fallback is not null && m.ValueKind == JsonValueKind.Null))
        {
            return fallback ?? throw new InvalidRequestException("model", $"'model' is required: a string naming {what}.");
        }

        return m.ValueKind == JsonValueKind.String && m.GetString() is { Length: > 0 } name
            ? name
            : throw new InvalidRequestException("model", fallback is null ? $"'model' is required: a string naming {what}." : $"'model' must be a string naming {what}.");
    }

    /// <summary>A list of token ids (whole numbers from 0), its bad item named as <c>param[i]</c>.</summary>
    public static void CheckTokens(JsonElement tokens, string param)
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

    /// <summary>A string member that must not be empty (its param named when it is).</summary>
    public static string NonEmpty(JsonElement text, string param) =>
        text.GetString() is { Length: > 0 } value ? value : throw new InvalidRequestException(param, $"'{param}' must not be empty.");

    /// <summary>The inputs' token count: each text counted by <paramref name="count"/>, each token id one, an image none.</summary>
    public static int PromptTokens(OperationRequest operation, Func<string, int> count)
    {
        if (operation.Kind is OperationKind.Images or OperationKind.ImageEdit)
        {
            return count(operation.Body.GetProperty("prompt").GetString()!);
        }

        if (operation.Kind == OperationKind.Speech)
        {
            return Speech.Characters(operation); // speech is counted and priced in characters
        }

        if (operation.Kind is OperationKind.Transcription or OperationKind.Translation)
        {
            return Transcriptions.PromptTokens(operation, count);
        }

        if (operation.Kind == OperationKind.Rerank)
        {
            return Rerank.PromptTokens(operation, count);
        }

        var input = operation.Body.GetProperty("input");
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
                JsonValueKind.Object => item.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String ? count(text.GetString()!) : 0,
                _ => 1,
            };
        }

        return tokens;
    }

    /// <summary>The body an upstream gets: the caller's, its <c>model</c> the deployment's.</summary>
    public static byte[] UpstreamBody(OperationRequest operation, string model)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            foreach (var member in operation.Body.EnumerateObject())
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
    /// Reads an operation's answer in one forward pass: <c>model</c>, <c>usage</c>, a moderation's <c>id</c>, and its list
    /// (<c>data</c>: each item an object whose <c>embedding</c> is a list of numbers or a base64 string; <c>results</c>: each
    /// an object with a boolean <c>flagged</c>), kept as its bytes — never a parsed document, whose index alone would be
    /// about the size of the vectors' text again. <paramref name="copy"/>: the list's bytes are copied out of
    /// <paramref name="json"/> (a pooled buffer); else the answer refers to them (an immutable stored answer, or an array
    /// of the answer's own).
    /// </summary>
    /// <param name="error">An <c>error</c> object the body carries (a 200 that is an error), for the caller to classify.</param>
    /// <exception cref="JsonException">The body is not JSON, or not an object.</exception>
    /// <exception cref="ProviderException">An item of the list is not what the API answers (retryable: the provider's failure).</exception>
    public static ChatCompletionResponse ReadAnswer(OperationRequest operation, ReadOnlyMemory<byte> json, bool copy, string provider, out JsonElement? error) =>
        operation.Kind is OperationKind.Transcription or OperationKind.Translation
            ? Transcriptions.ReadAnswer(operation.Kind, Transcriptions.Format(operation), json, copy, out error) // JSON or text, as asked
            : ReadAnswer(operation.Kind, json, copy, provider, out error, operation);

    /// <summary>
    /// The same, for an answer whose kind alone says how to read it (not a transcription's). An embeddings list is given
    /// as <paramref name="operation"/> asked it — in input order, each item's <c>index</c> its place, each embedding in
    /// the <c>encoding_format</c> asked — written again only when the upstream's is not (<see cref="Embeddings.Rewrite"/>).
    /// </summary>
    public static ChatCompletionResponse ReadAnswer(OperationKind kind, ReadOnlyMemory<byte> json, bool copy, string provider, out JsonElement? error, OperationRequest? operation = null)
    {
        if (kind == OperationKind.Speech)
        {
            return Speech.ReadAnswer(json, copy, out error); // audio, not JSON
        }

        error = null;
        var reader = new Utf8JsonReader(json.Span);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            throw new JsonException("The answer is not a JSON object.");
        }

        var listName = kind is OperationKind.Moderations or OperationKind.Rerank ? "results"u8 : "data"u8;
        var response = new ChatCompletionResponse { Object = kind == OperationKind.Embeddings ? "list" : string.Empty, Choices = [] };
        string? id = null;
        (ReadOnlyMemory<byte> Bytes, int Count)? list = null;
        List<(int Start, int End)>? members = null; // an image or rerank answer's other members, kept as they came
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (kind is OperationKind.Images or OperationKind.ImageEdit or OperationKind.Rerank && !reader.ValueTextEquals(listName) && !reader.ValueTextEquals("error"u8))
            {
                var start = (int)reader.TokenStartIndex;
                var created = reader.ValueTextEquals("created"u8);
                var usage = reader.ValueTextEquals("usage"u8);
                reader.Read();
                if (created && reader.TokenType == JsonTokenType.Number && reader.TryGetInt64(out var at))
                {
                    response.Created = at;
                    reader.Skip();
                    continue;
                }

                if (usage && reader.TokenType == JsonTokenType.StartObject)
                {
                    var counts = reader; // the usage read from a copy; the member kept whole below
                    response.Usage = Images.ReadUsage(ref counts);
                    if (kind == OperationKind.Rerank && response.Usage.PromptTokens == 0)
                    {
                        response.Usage.PromptTokens = response.Usage.TotalTokens; // a ranking's tokens are all input (vLLM counts only the total)
                    }
                }

                reader.Skip();
                (members ??= []).Add((start, (int)reader.BytesConsumed));
                continue;
            }

            if (reader.ValueTextEquals(listName))
            {
                reader.Read();
                if (reader.TokenType != JsonTokenType.StartArray)
                {
                    reader.Skip();
                    continue; // not a list: none (unusable unless a later one is)
                }

                var start = (int)reader.TokenStartIndex;
                var shape = default(ListShape);
                var count = ReadItems(kind, ref reader, provider, ref shape);
                var bytes = json[start..(int)reader.BytesConsumed];
                var base64 = operation is not null && Embeddings.AsksBase64(operation.Body);
                list = kind == OperationKind.Embeddings && operation is not null && (shape.OutOfOrder || (base64 ? shape.Lists : shape.Strings))
                    ? (Rewrite(bytes.Span, count, base64, provider), count)
                    : (copy ? bytes.ToArray() : bytes, count);
            }
            else if (reader.ValueTextEquals("model"u8) || reader.ValueTextEquals("id"u8))
            {
                var isId = reader.ValueTextEquals("id"u8);
                reader.Read();
                if (reader.TokenType == JsonTokenType.String)
                {
                    _ = isId ? id = reader.GetString() : response.Model = reader.GetString()!;
                }

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

        response.Operation = list is { } l ? new OperationAnswer(kind, l.Bytes, l.Count, id) { Members = Join(json, members) } : null;
        return response;
    }

    /// <summary>Members' bytes joined by commas (<c>"a":1,"b":{…}</c>), copied out of <paramref name="json"/>.</summary>
    private static ReadOnlyMemory<byte> Join(ReadOnlyMemory<byte> json, List<(int Start, int End)>? members)
    {
        if (members is null)
        {
            return ReadOnlyMemory<byte>.Empty;
        }

        var joined = new ArrayBufferWriter<byte>();
        foreach (var (start, end) in members)
        {
            if (joined.WrittenCount > 0)
            {
                joined.Write(","u8);
            }

            joined.Write(json.Span[start..end]);
        }

        return joined.WrittenMemory.ToArray();
    }

    private static byte[] Rewrite(ReadOnlySpan<byte> list, int count, bool base64, string provider)
    {
        try
        {
            return Embeddings.Rewrite(list, count, base64);
        }
        catch (FormatException ex)
        {
            throw Unusable(provider, OperationKind.Embeddings, ex.Message.TrimEnd('.'));
        }
    }

    /// <summary>What an embeddings list is like: items not in index order (or without one), embeddings as base64 strings, as lists of numbers.</summary>
    private struct ListShape
    {
        public bool OutOfOrder;
        public bool Strings;
        public bool Lists;
    }

    /// <summary>
    /// Checks each item of the list (the reader on its start), leaving the reader on its end; how many there are, and for
    /// an embeddings list its <paramref name="shape"/>.
    /// </summary>
    private static int ReadItems(OperationKind kind, ref Utf8JsonReader reader, string provider, ref ListShape shape)
    {
        var count = 0;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            var usable = false;
            var ranked = 0; // a rerank result's score (1) and index (2) seen
            var place = -1; // an embedding's index
            if (reader.TokenType == JsonTokenType.StartObject)
            {
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var which = kind switch
                    {
                        OperationKind.Embeddings => reader.ValueTextEquals("embedding"u8) ? 1 : reader.ValueTextEquals("index"u8) ? 2 : 0,
                        OperationKind.Moderations => reader.ValueTextEquals("flagged"u8) ? 1 : 0,
                        OperationKind.Rerank => reader.ValueTextEquals("relevance_score"u8) ? 1 : reader.ValueTextEquals("index"u8) ? 2 : 0,
                        _ => reader.ValueTextEquals("b64_json"u8) || reader.ValueTextEquals("url"u8) ? 1 : 0,
                    };
                    var key = which != 0;
                    reader.Read();
                    if (kind == OperationKind.Embeddings && which == 2)
                    {
                        place = reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var at) ? at : -1;
                        reader.Skip();
                        continue;
                    }

                    if (kind == OperationKind.Rerank)
                    {
                        // Both a score (a number) and an index (a whole number, not negative).
                        if (which == 1 && reader.TokenType == JsonTokenType.Number)
                        {
                            ranked |= 1;
                        }
                        else if (which == 2 && reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var index) && index >= 0)
                        {
                            ranked |= 2;
                        }

                        usable = ranked == 3;
                        reader.Skip();
                        continue;
                    }

                    if (key && kind == OperationKind.Moderations)
                    {
                        usable = reader.TokenType is JsonTokenType.True or JsonTokenType.False;
                    }
                    else if (key && reader.TokenType == JsonTokenType.String)
                    {
                        usable = true; // base64 (an embedding's, an image's), or an image's address
                        shape.Strings = true;
                    }
                    else if (key && reader.TokenType == JsonTokenType.StartArray)
                    {
                        shape.Lists = true;
                        while (reader.Read() && reader.TokenType == JsonTokenType.Number)
                        {
                        }

                        usable = reader.TokenType == JsonTokenType.EndArray;
                        if (!usable)
                        {
                            throw Unusable(provider, kind, "an embedding holds something that is not a number");
                        }
                    }
                    else
                    {
                        reader.Skip();
                    }
                }
            }

            if (!usable)
            {
                throw Unusable(provider, kind, kind switch
                {
                    OperationKind.Embeddings => "an item of 'data' has no 'embedding' (a list of numbers or a base64 string)",
                    OperationKind.Moderations => "an item of 'results' has no boolean 'flagged'",
                    OperationKind.Rerank => "a result has no numeric 'relevance_score' and whole 'index'",
                    _ => "an item of 'data' has neither 'b64_json' nor 'url'",
                });
            }

            shape.OutOfOrder |= kind == OperationKind.Embeddings && place != count;
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
    /// An answer as the worker accepts it from any provider: the operation's list, one item per input. Anything else is
    /// the provider's retryable failure (a hostile or broken upstream's answer is never passed on).
    /// </summary>
    public static ChatCompletionResponse Accept(ChatCompletionResponse? response, ChatCompletionRequest request, string provider)
    {
        var operation = request.Operation!;
        if (response?.Operation is not { } answer || answer.Kind != operation.Kind)
        {
            throw Unusable(provider, operation.Kind, $"it has no {operation.Kind switch { OperationKind.Moderations or OperationKind.Rerank => "'results' list", OperationKind.Speech => "audio", OperationKind.Transcription or OperationKind.Translation => "transcript in the format asked", _ => "'data' list" }}");
        }

        if (answer.Count != operation.InputCount)
        {
            throw Unusable(provider, operation.Kind, $"it holds {answer.Count} items for {operation.InputCount} {operation.Kind switch { OperationKind.Images or OperationKind.ImageEdit => "images asked for", OperationKind.Rerank => "results asked for", _ => "inputs" }}");
        }

        if (operation.Kind == OperationKind.Rerank && Rerank.Mismatch(answer, operation) is { } mismatch)
        {
            throw Unusable(provider, operation.Kind, mismatch);
        }

        response.Choices ??= [];
        if (operation.Kind == OperationKind.Speech)
        {
            // The audio's media type, from the format asked; billed per character (no usage comes with audio).
            response.Operation = answer with { MediaType = Speech.MediaType(Speech.Format(operation.Body)) };
            response.Usage = Speech.Usage(operation);
        }

        if (operation.Kind is OperationKind.Transcription or OperationKind.Translation)
        {
            Transcriptions.BillUncounted(response, operation);
        }

        if (operation.Kind is OperationKind.Images or OperationKind.ImageEdit)
        {
            // Images are billed per image (PricingTable) as well as per token when the upstream counts them (gpt-image-1).
            Images.SetGenerated(response.Usage ??= Admission.TokenCounter.EstimateUsage(request, response, 0, request.Model, countedPrompt: null), answer.Count, operation.Body);
        }

        return response;
    }

    /// <summary>
    /// The parts of the answer around its list: embeddings <c>{"object":"list","data":</c> … <c>,"model":…,"usage":{…}}</c>;
    /// moderations <c>{"id":…,"model":…,"results":</c> … <c>}</c>; images <c>{"created":…,"data":</c> … <c>,</c> the
    /// upstream's other members <c>}</c>.
    /// </summary>
    public static (byte[] Head, byte[] Tail) Frame(ChatCompletionResponse response)
    {
        if (response.Operation!.Kind is OperationKind.Speech or OperationKind.Transcription or OperationKind.Translation)
        {
            return ([], []); // the audio, or the transcript as the upstream wrote it
        }

        var buffer = new ArrayBufferWriter<byte>(128);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            if (response.Operation.Kind is OperationKind.Images or OperationKind.ImageEdit or OperationKind.Rerank)
            {
                var members = response.Operation.Members.Span;
                byte[] rest = members.IsEmpty ? "}"u8.ToArray() : [.. ","u8, .. members, .. "}"u8];
                if (response.Operation.Kind == OperationKind.Rerank)
                {
                    return ("""{"results":"""u8.ToArray(), rest); // the upstream's id, model, usage, meta after the results
                }

                w.WriteNumber("created", response.Created);
                w.WriteEndObject();
                w.Flush();
                var head = buffer.WrittenSpan[..^1].ToArray(); // the object's members, open for the data
                return ([.. head, .. ",\"data\":"u8], rest);
            }

            if (response.Operation.Kind == OperationKind.Moderations)
            {
                w.WriteString("id", response.Operation.Id ?? response.Id);
                w.WriteString("model", response.Model);
                w.WriteEndObject();
                w.Flush();
                var head = buffer.WrittenSpan[..^1].ToArray(); // the object's members, open for the results
                return ([.. head, .. ",\"results\":"u8], "}"u8.ToArray());
            }

            w.WriteString("model", response.Model);
            w.WriteStartObject("usage");
            w.WriteNumber("prompt_tokens", response.Usage?.PromptTokens ?? 0);
            w.WriteNumber("total_tokens", response.Usage?.TotalTokens ?? 0);
            w.WriteEndObject();
            w.WriteEndObject();
        }

        var tail = buffer.WrittenSpan.ToArray();
        tail[0] = (byte)','; // the object's members, after data's
        return ("""{"object":"list","data":"""u8.ToArray(), tail);
    }

    /// <summary>The whole answer, as the route writes it (<see cref="Frame"/> around the list).</summary>
    public static byte[] ToJson(ChatCompletionResponse response)
    {
        var (head, tail) = Frame(response);
        var list = response.Operation!.List.Span;
        var json = new byte[head.Length + list.Length + tail.Length];
        head.CopyTo(json.AsSpan());
        list.CopyTo(json.AsSpan(head.Length));
        tail.CopyTo(json.AsSpan(head.Length + list.Length));
        return json;
    }

    /// <summary>The answer as a value of a JSON document being written (a batch result's <c>body</c>).</summary>
    public static void WriteAnswer(Utf8JsonWriter w, ChatCompletionResponse response) => w.WriteRawValue(ToJson(response), skipInputValidation: true);

    /// <summary>
    /// One event of a streamed operation parsed (the caller disposes it), with its <c>type</c> (null when it has none);
    /// null when it is an object with an <c>error</c> — the upstream's failure in the stream, then <paramref name="error"/>.
    /// </summary>
    /// <exception cref="JsonException">It is not JSON, or not an object (<paramref name="what"/> names it).</exception>
    public static JsonDocument? ParseEvent(ReadOnlySpan<byte> data, string what, out JsonElement? error, out string? type)
    {
        error = null;
        type = null;
        var doc = JsonDocument.Parse(data.ToArray());
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new JsonException($"{what} is not a JSON object.");
        }

        if (root.TryGetProperty("error", out var e) && e.ValueKind != JsonValueKind.Null)
        {
            error = e.Clone();
            doc.Dispose();
            return null;
        }

        type = root.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        return doc;
    }

    /// <summary>
    /// An operation for a deployment whose provider has no such API (Anthropic, a chat client): not sent, so the group's
    /// other deployments and its fallbacks are tried and the deployment's health is untouched; when none can, the
    /// caller's 400 naming <c>model</c>.
    /// </summary>
    public static ProviderException NotServed(string provider, OperationRequest operation, string model) =>
        ProviderException.Unsupported("model", $"The model '{ProviderException.Quoted(model)}' is served by '{provider}', which has no {Name(operation.Kind)} API.");

    /// <summary>The same for a deployment whose upstream answered the route as one it does not serve (403, 404, 405, 501).</summary>
    public static ProviderException NotServedBy(string provider, OperationRequest operation, string model, ProviderException refusal) =>
        ProviderException.Unsupported("model", $"The model '{ProviderException.Quoted(model)}' is served by '{provider}', whose upstream serves no {Name(operation.Kind)} for it ({refusal.StatusCode}: {refusal.UpstreamMessage ?? refusal.Message}).");

    private static string Name(OperationKind kind) => kind switch
    {
        OperationKind.Embeddings => "embeddings",
        OperationKind.Moderations => "moderations",
        OperationKind.Images => "image generation",
        OperationKind.Speech => "speech",
        OperationKind.Transcription => "transcription",
        OperationKind.Translation => "translation",
        OperationKind.Rerank => "rerank",
        _ => "image edit",
    };

    /// <summary>
    /// The request's <c>gen_ai.operation.name</c> (OpenTelemetry's GenAI conventions) for its spans and instruments:
    /// <c>chat</c>, <c>text_completion</c>, <c>embeddings</c>, or <c>moderations</c> and <c>image_generation</c> (no
    /// well-known value: the API's own name).
    /// </summary>
    public static string OperationName(ChatCompletionRequest request) => request.Operation is { } operation
        ? operation.Kind switch { OperationKind.Images => "image_generation", OperationKind.Speech => "text_to_speech", OperationKind.Transcription => "speech_to_text", OperationKind.Translation => "speech_translation", OperationKind.ImageEdit => "image_edit", _ => Name(operation.Kind) }
        : request.TextCompletion is null ? "chat" : "text_completion";

    private static ProviderException Unusable(string provider, OperationKind kind, string why) =>
        new(AttemptOutcome.RetryableError, $"'{provider}' returned an answer that is not a usable {kind switch { OperationKind.Embeddings => "embeddings list", OperationKind.Moderations => "moderation", _ => Name(kind) }}: {why}.");
}
