using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// A legacy text-completion request (<c>POST /v1/completions</c>) as the pipeline carries it: its body as the caller sent
/// it (checked), which a deployment serving the API natively gets with its model (<see cref="ITextCompletionProvider"/>);
/// how many choices it asks for (<c>n</c> per prompt); and, when it uses what only that API has (a suffix, echo, log
/// probabilities, <c>best_of</c>, token ids or several prompts), the member that keeps a chat deployment from serving it.
/// </summary>
/// <param name="Generated">The completions the upstream writes and bills: <c>best_of</c> for each prompt (at least <see cref="Choices"/>).</param>
internal sealed record TextCompletionRequest(JsonElement Body, int Choices, string? ChatOnlyParam, string? ChatOnlyReason, int Generated)
{
    /// <summary>The upstream route under the provider's base URL.</summary>
    public const string Path = "completions";

    /// <summary>Log probabilities asked for (the completions form, which a cached stream does not rebuild).</summary>
    public bool AsksLogprobs => Body.TryGetProperty("logprobs", out var logprobs) && logprobs.ValueKind != JsonValueKind.Null;
}

/// <summary>
/// A provider that can send a text completion to its upstream's own <c>/completions</c> route for some models (the
/// OpenAI-format adapters: vLLM, Ollama, llama.cpp and other OpenAI-compatible servers, OpenAI's instruct models). Any
/// other provider — or these, for a model without the route — serves it as a chat request, the prompt its one user message.
/// </summary>
internal interface ITextCompletionProvider
{
    /// <summary>True when <paramref name="model"/> (the deployment's upstream model) is asked on the <c>/completions</c> route.</summary>
    bool ServesTextCompletions(string model);
}

/// <summary>
/// OpenAI's legacy Completions API through the pipeline. The request rides a <see cref="ChatCompletionRequest"/> so every
/// stage serves it as a chat request — admission, budgets, the cache and single flight, routing with failover and
/// health, cost, metrics, the request log: the prompt is its one user message, <c>max_tokens</c> (16 unless given, the
/// API's default) its completion budget, the body rides in <see cref="ChatCompletionRequest.TextCompletion"/>. A deployment
/// whose upstream has the route gets the caller's body (<see cref="UpstreamBody"/>) and answers in the API's own shape
/// (<see cref="ReadAnswer"/>, <see cref="ReadEvent"/>); any other deployment answers it as a chat completion, as LiteLLM
/// does. Either way the route writes the answer in the Completions shape (<see cref="WriteAnswer"/>, <see cref="WriteEvent"/>).
/// </summary>
internal static class TextCompletions
{
    /// <summary>The API's <c>max_tokens</c> when the request sets none.</summary>
    public const int DefaultMaxTokens = 16;

    /// <summary>The most choices one request may ask for (<c>n</c> for each prompt), as for chat.</summary>
    public const int MaxChoices = 128;

    /// <summary>Reads and checks a request body (see <see cref="ToRequest"/>).</summary>
    /// <exception cref="JsonException">The body is not one JSON value.</exception>
    /// <exception cref="InvalidRequestException">A member is missing or not what the schema allows; its name is the error's param.</exception>
    public static ChatCompletionRequest Read(ReadOnlySpan<byte> body, string? model = null) => ToRequest(Operations.Parse(body), model);

    /// <summary>
    /// Checks a Completions request (OpenAI's schema: <c>model</c>, <c>prompt</c> — a string, a list of strings, a list of
    /// token ids or a list of such lists —, <c>suffix</c>, <c>max_tokens</c>, <c>temperature</c>, <c>top_p</c>, <c>n</c>,
    /// <c>stream</c>, <c>stream_options</c>, <c>logprobs</c>, <c>echo</c>, <c>stop</c>, <c>presence_penalty</c>,
    /// <c>frequency_penalty</c>, <c>best_of</c>, <c>logit_bias</c>, <c>seed</c>, <c>user</c>; other members — vLLM's
    /// <c>top_k</c>, <c>min_p</c>… — go on as they came to a native upstream) and makes the pipeline's request of it.
    /// </summary>
    /// <param name="model">The model the route names (Azure's deployment path): then the body's may be left out.</param>
    public static ChatCompletionRequest ToRequest(JsonElement root, string? model = null)
    {
        var name = Operations.Model(root, model, "a model");

        if (!root.TryGetProperty("prompt", out var prompt) || prompt.ValueKind is JsonValueKind.Null)
        {
            throw new InvalidRequestException("prompt", "'prompt' is required: a string, a list of strings, a list of token ids or a list of lists of token ids.");
        }

        var (text, prompts, single) = DescribePrompt(prompt);
        string? chatParam = single ? null : "prompt";
        string? chatReason = single ? null : "token ids or several prompts";
        void ChatCannot(string param, string reason)
        {
            chatParam ??= param;
            chatReason ??= reason;
        }

        if (single && text.Length == 0)
        {
            ChatCannot("prompt", "empty prompt");
        }

        var maxTokens = Int(root, "max_tokens", 0);
        var n = Int(root, "n", 1) ?? 1;
        if ((long)n * prompts > MaxChoices)
        {
            throw new InvalidRequestException("n", $"'n' times the prompts must be at most {MaxChoices} choices ({n} × {prompts} = {(long)n * prompts}).");
        }

        var bestOf = Int(root, "best_of", 1);
        if (bestOf is { } b && b < n)
        {
            throw new InvalidRequestException("best_of", "'best_of' must be at least 'n'.");
        }

        if ((long)(bestOf ?? 1) * prompts > MaxChoices)
        {
            throw new InvalidRequestException("best_of", $"'best_of' times the prompts must be at most {MaxChoices} completions ({bestOf} × {prompts} = {(long)bestOf! * prompts}).");
        }

        if (bestOf > 1)
        {
            ChatCannot("best_of", "'best_of'");
        }

        if (Int(root, "logprobs", 0) is not null)
        {
            ChatCannot("logprobs", "log probabilities in the completions form");
        }

        if (Bool(root, "echo") == true)
        {
            ChatCannot("echo", "'echo'");
        }

        if (root.TryGetProperty("suffix", out var suffix) && suffix.ValueKind != JsonValueKind.Null)
        {
            if (suffix.ValueKind != JsonValueKind.String)
            {
                throw new InvalidRequestException("suffix", "'suffix' must be a string.");
            }

            if (suffix.GetString()!.Length > 0)
            {
                ChatCannot("suffix", "suffix (fill in the middle)");
            }
        }

        var temperature = Number(root, "temperature", 0, 2);
        var topP = Number(root, "top_p", 0, 1);
        var extra = new Dictionary<string, JsonElement>();
        foreach (var penalty in (ReadOnlySpan<string>)["presence_penalty", "frequency_penalty"])
        {
            if (Number(root, penalty, -2, 2) is not null)
            {
                extra[penalty] = root.GetProperty(penalty).Clone();
            }
        }

        if (root.TryGetProperty("logit_bias", out var bias) && bias.ValueKind != JsonValueKind.Null)
        {
            if (bias.ValueKind != JsonValueKind.Object || bias.EnumerateObject().Any(static p => p.Value.ValueKind != JsonValueKind.Number))
            {
                throw new InvalidRequestException("logit_bias", "'logit_bias' must be an object mapping token ids to numbers.");
            }

            extra["logit_bias"] = bias.Clone();
        }

        long? seed = null;
        if (root.TryGetProperty("seed", out var s) && s.ValueKind != JsonValueKind.Null)
        {
            seed = s.ValueKind == JsonValueKind.Number && s.TryGetInt64(out var v) ? v : throw new InvalidRequestException("seed", "'seed' must be a whole number.");
        }

        string? user = null;
        if (root.TryGetProperty("user", out var u) && u.ValueKind != JsonValueKind.Null)
        {
            user = u.ValueKind == JsonValueKind.String ? u.GetString() : throw new InvalidRequestException("user", "'user' must be a string.");
        }

        var stream = Bool(root, "stream") == true;
        StreamOptions? streamOptions = null;
        if (root.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (so.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidRequestException("stream_options", "'stream_options' must be an object.");
            }

            if (!stream)
            {
                throw new InvalidRequestException("stream_options", "'stream_options' is only allowed when 'stream' is true.");
            }

            streamOptions = new StreamOptions { IncludeUsage = Bool(so, "include_usage", "stream_options.include_usage") };
        }

        return new ChatCompletionRequest
        {
            Model = name,
            Messages = [ChatCompletionMessage.User(text)],
            Temperature = temperature,
            TopP = topP,
            MaxTokens = maxTokens ?? DefaultMaxTokens,
            N = n * prompts,
            Stop = Stop(root),
            Seed = seed,
            User = user,
            Stream = stream ? true : null,
            StreamOptions = streamOptions,
            AdditionalProperties = extra.Count == 0 ? null : extra,
            TextCompletion = new TextCompletionRequest(root, n * prompts, chatParam, chatReason, Math.Max(n, bestOf ?? 1) * prompts),
        };
    }

    /// <summary>
    /// Checks <c>prompt</c>: its text for the pipeline's one user message (several prompts one per paragraph, token ids as
    /// how many there are), how many prompts it holds, and whether it is one text (what a chat deployment can take).
    /// </summary>
    private static (string Text, int Prompts, bool Single) DescribePrompt(JsonElement prompt)
    {
        if (prompt.ValueKind == JsonValueKind.String)
        {
            return (prompt.GetString()!, 1, true);
        }

        if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() > 0 && prompt[0].ValueKind == JsonValueKind.Number)
        {
            Operations.CheckTokens(prompt, "prompt");
            return ($"[{prompt.GetArrayLength()} token ids]", 1, false);
        }

        var text = Operations.DescribeInput(
            prompt,
            "a string, a list of strings, a list of token ids or a list of lists of token ids",
            [JsonValueKind.String, JsonValueKind.Array],
            static (item, param) =>
            {
                if (item.ValueKind == JsonValueKind.String)
                {
                    return item.GetString()!;
                }

                if (item.GetArrayLength() == 0)
                {
                    throw new InvalidRequestException(param, $"'{param}' must not be empty.");
                }

                Operations.CheckTokens(item, param);
                return $"[{item.GetArrayLength()} token ids]";
            },
            param: "prompt");
        var count = prompt.ValueKind == JsonValueKind.Array ? prompt.GetArrayLength() : 1;
        return (text, count, count == 1 && prompt[0].ValueKind == JsonValueKind.String);
    }

    private static int? Int(JsonElement root, string name, int min)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out var n) && n >= min
            ? n
            : throw new InvalidRequestException(name, $"'{name}' must be a whole number of at least {min}.");
    }

    private static double? Number(JsonElement root, string name, double min, double max)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out var x) && x >= min && x <= max
            ? x
            : throw new InvalidRequestException(name, $"'{name}' must be a number from {min} to {max}.");
    }

    private static bool? Bool(JsonElement root, string name, string? param = null) =>
        !root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean()
        : throw new InvalidRequestException(param ?? name, $"'{param ?? name}' must be true or false.");

    private static StopSequences? Stop(JsonElement root)
    {
        if (!root.TryGetProperty("stop", out var stop) || stop.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (stop.ValueKind == JsonValueKind.String)
        {
            return new StopSequences([stop.GetString()!]) { WasSingle = true };
        }

        if (stop.ValueKind != JsonValueKind.Array || stop.GetArrayLength() > 4 || stop.EnumerateArray().Any(static x => x.ValueKind != JsonValueKind.String))
        {
            throw new InvalidRequestException("stop", "'stop' must be a string or a list of up to 4 strings.");
        }

        return new StopSequences(stop.EnumerateArray().Select(static x => x.GetString()!));
    }

    /// <summary>The prompts' token count: each text counted by <paramref name="count"/>, each token id one.</summary>
    public static int PromptTokens(TextCompletionRequest request, Func<string, int> count)
    {
        var prompt = request.Body.GetProperty("prompt");
        if (prompt.ValueKind == JsonValueKind.String)
        {
            return count(prompt.GetString()!);
        }

        var tokens = 0;
        foreach (var item in prompt.EnumerateArray())
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

    /// <summary>
    /// The body a native upstream gets: the caller's, its <c>model</c> the deployment's; a stream asks for usage in its
    /// last event (<c>stream_options.include_usage</c>, the caller's other stream options kept) so it can be billed, a
    /// whole request is not streamed.
    /// </summary>
    public static byte[] UpstreamBody(TextCompletionRequest request, string model, bool stream)
    {
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            foreach (var member in request.Body.EnumerateObject())
            {
                if (!(member.NameEquals("model") || member.NameEquals("stream") || member.NameEquals("stream_options")))
                {
                    member.WriteTo(w);
                }
            }

            if (stream)
            {
                w.WriteBoolean("stream", true);
                w.WriteStartObject("stream_options");
                if (request.Body.TryGetProperty("stream_options", out var options))
                {
                    Serialization.WireJson.WriteMembersExcept(w, options, "include_usage");
                }

                w.WriteBoolean("include_usage", true);
                w.WriteEndObject();
            }

            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// A native upstream's whole answer (<c>{"id":…,"object":"text_completion","choices":[{"text":…,"index":…,
    /// "logprobs":…,"finish_reason":…}],"usage":…}</c>) as the gateway's answer: each choice's text its message, its log
    /// probabilities kept as they came.
    /// </summary>
    /// <param name="error">An <c>error</c> object the body carries with no choices (a 200 that is an error).</param>
    /// <exception cref="JsonException">The body is not a Completions answer.</exception>
    public static ChatCompletionResponse ReadAnswer(ReadOnlySpan<byte> body, out JsonElement? error)
    {
        var wire = Wire(body, "The answer");
        error = wire.Choices is null or { Count: 0 } && wire.Error is { ValueKind: JsonValueKind.Object } e ? e : null;
        var response = new ChatCompletionResponse
        {
            Id = wire.Id ?? string.Empty,
            Created = wire.Created,
            Model = wire.Model ?? string.Empty,
            Usage = wire.Usage,
            SystemFingerprint = wire.SystemFingerprint,
            Choices = new List<ChatChoice>(wire.Choices?.Count ?? 0),
        };
        foreach (var choice in Choices(wire))
        {
            var message = ChatCompletionMessage.Assistant(choice.Text ?? string.Empty);
            message.AdditionalProperties = Keep(choice.Extra);
            response.Choices.Add(new ChatChoice
            {
                Index = choice.Index,
                Message = message,
                FinishReason = choice.FinishReason,
                Logprobs = choice.Logprobs,
            });
        }

        return response;
    }

    /// <summary>One event of a native upstream's stream as the gateway's chunk: each choice's text its delta's content.</summary>
    /// <exception cref="JsonException">The event is not a Completions event.</exception>
    public static ChatCompletionChunk ReadEvent(ReadOnlySpan<byte> data, out JsonElement? error)
    {
        var wire = Wire(data, "A stream event");
        error = wire.Error is { ValueKind: JsonValueKind.Object or JsonValueKind.String } e ? e : null;
        var chunk = new ChatCompletionChunk
        {
            Id = wire.Id ?? string.Empty,
            Created = wire.Created,
            Model = wire.Model ?? string.Empty,
            Usage = wire.Usage,
            SystemFingerprint = wire.SystemFingerprint,
            Choices = new List<ChunkChoice>(wire.Choices?.Count ?? 0),
        };
        foreach (var choice in Choices(wire))
        {
            chunk.Choices.Add(new ChunkChoice
            {
                Index = choice.Index,
                Delta = new ChatCompletionDelta { Content = choice.Text, AdditionalProperties = Keep(choice.Extra) },
                FinishReason = choice.FinishReason,
                Logprobs = choice.Logprobs,
            });
        }

        return chunk;
    }

    /// <summary>
    /// Where a native choice's own members (vLLM's <c>stop_reason</c>, <c>prompt_logprobs</c>…) ride on the gateway's
    /// message or delta, to be written back into the choice (a chat deployment's members are not written there).
    /// </summary>
    private const string ChoiceMembers = "pgw_completion_choice";

    private static Dictionary<string, JsonElement>? Keep(Dictionary<string, JsonElement>? extra) =>
        extra is { Count: > 0 } ? new() { [ChoiceMembers] = JsonSerializer.SerializeToElement(extra, TextCompletionJsonContext.Default.DictionaryStringJsonElement) } : null;

    private static JsonElement? Kept(Dictionary<string, JsonElement>? members) =>
        members?.TryGetValue(ChoiceMembers, out var kept) == true && kept.ValueKind == JsonValueKind.Object ? kept : null;

    private static TextCompletionWire Wire(ReadOnlySpan<byte> json, string what) =>
        JsonSerializer.Deserialize(json, TextCompletionJsonContext.Default.TextCompletionWire) ?? throw new JsonException($"{what} is the JSON null.");

    private static IEnumerable<TextCompletionChoiceWire> Choices(TextCompletionWire wire) =>
        (wire.Choices ?? []).Select(static c => c ?? throw new JsonException("A choice is the JSON null."));

    /// <summary>The answer's id in the API's own form, <c>cmpl-</c> (a chat deployment's <c>chatcmpl-</c> renamed, Claude's <c>msg_</c> prefixed).</summary>
    private static string Id(string id) =>
        id.StartsWith("cmpl-", StringComparison.Ordinal) ? id
        : id.StartsWith("chatcmpl-", StringComparison.Ordinal) ? "cmpl-" + id["chatcmpl-".Length..]
        : "cmpl-" + id;

    /// <summary>A whole answer in the Completions shape, whoever answered it.</summary>
    public static byte[] WriteAnswer(ChatCompletionResponse response)
    {
        return Write(response.Id, response.Created, response.Model, response.Usage, response.SystemFingerprint, response.Choices, static (w, choices) =>
        {
            foreach (var choice in choices)
            {
                WriteChoice(w, choice.Message?.Content?.GetText() ?? string.Empty, choice.Index, choice.Logprobs, choice.FinishReason, Kept(choice.Message?.AdditionalProperties));
            }
        });
    }

    /// <summary>
    /// A chunk as the Completions stream's event, or null when it says nothing in that shape (a chat deployment's opening
    /// role, a tool-call or reasoning delta): each choice with text, a finish reason or log probabilities, and the usage.
    /// </summary>
    public static byte[]? WriteEvent(ChatCompletionChunk chunk, TokenUsage? usage)
    {
        var choices = 0;
        foreach (var choice in chunk.Choices ?? [])
        {
            if (Says(choice))
            {
                choices++;
            }
        }

        if (choices == 0 && usage is null)
        {
            return null;
        }

        return Write(chunk.Id, chunk.Created, chunk.Model, usage, chunk.SystemFingerprint, chunk.Choices ?? [], static (w, choices) =>
        {
            foreach (var choice in choices)
            {
                if (Says(choice))
                {
                    WriteChoice(w, choice.Delta?.Content ?? string.Empty, choice.Index, choice.Logprobs, choice.FinishReason, Kept(choice.Delta?.AdditionalProperties));
                }
            }
        });

        static bool Says(ChunkChoice? choice) =>
            choice is not null && (!string.IsNullOrEmpty(choice.Delta?.Content) || choice.FinishReason is not null || choice.Logprobs is { ValueKind: not JsonValueKind.Null });
    }

    /// <summary>An answer or event in the Completions shape, its choices written by <paramref name="choices"/>.</summary>
    private static byte[] Write<T>(string id, long created, string model, TokenUsage? usage, string? fingerprint, T state, Action<Utf8JsonWriter, T> choices)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("id", Id(id));
            w.WriteString("object", "text_completion");
            w.WriteNumber("created", created);
            w.WriteString("model", model);
            w.WriteStartArray("choices");
            choices(w, state);
            w.WriteEndArray();
            if (usage is not null)
            {
                w.WritePropertyName("usage");
                JsonSerializer.Serialize(w, usage, GatewayJsonContext.Default.TokenUsage);
            }

            if (fingerprint is not null)
            {
                w.WriteString("system_fingerprint", fingerprint);
            }

            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    private static void WriteChoice(Utf8JsonWriter w, string text, int index, JsonElement? logprobs, string? finish, JsonElement? members)
    {
        w.WriteStartObject();
        w.WriteString("text", text);
        w.WriteNumber("index", index);
        w.WritePropertyName("logprobs");
        if (logprobs is { } l)
        {
            l.WriteTo(w);
        }
        else
        {
            w.WriteNullValue();
        }

        w.WriteString("finish_reason", finish); // null until the choice finishes, as the API writes it
        if (members is { } own)
        {
            foreach (var member in own.EnumerateObject())
            {
                if (!(member.NameEquals("text") || member.NameEquals("index") || member.NameEquals("logprobs") || member.NameEquals("finish_reason")))
                {
                    member.WriteTo(w); // the upstream's own, as it wrote them
                }
            }
        }

        w.WriteEndObject();
    }

    /// <summary>
    /// Why <paramref name="provider"/> cannot take the request for the deployment's <paramref name="model"/> (null when it
    /// can, or when the request is no text completion): it would serve it as a chat request, and it uses what chat has not.
    /// </summary>
    public static ProviderException? Refusal(ILlmProvider provider, ChatCompletionRequest request, string model) =>
        request.TextCompletion is { ChatOnlyParam: not null } completion && !(provider is ITextCompletionProvider native && native.ServesTextCompletions(model))
            ? NotServed(provider.Name, completion, request.Model)
            : null;

    /// <summary>
    /// A request a chat deployment cannot serve (<see cref="TextCompletionRequest.ChatOnlyParam"/>): not sent, so the
    /// group's other deployments and its fallbacks are tried; when none can, the caller's 400 naming the member.
    /// </summary>
    public static ProviderException NotServed(string provider, TextCompletionRequest request, string model) =>
        ProviderException.Unsupported(request.ChatOnlyParam!, $"The model '{ProviderException.Quoted(model)}' is served by '{provider}' as a chat model, which takes no {request.ChatOnlyReason}: only a deployment with a native completions route (an OpenAI-compatible server) does.");

    /// <summary>The same for a deployment whose upstream answered the route as one it does not serve (403, 404, 405, 501).</summary>
    public static ProviderException NotServedBy(string provider, string model, ProviderException refusal) =>
        ProviderException.Unsupported("model", $"The model '{ProviderException.Quoted(model)}' is served by '{provider}', whose upstream serves no completions for it ({refusal.StatusCode}: {refusal.UpstreamMessage ?? refusal.Message}).");
}

/// <summary>A Completions answer or stream event as an upstream writes it (read only).</summary>
internal sealed class TextCompletionWire
{
    public string? Id { get; set; }

    public long Created { get; set; }

    public string? Model { get; set; }

    public List<TextCompletionChoiceWire?>? Choices { get; set; }

    public TokenUsage? Usage { get; set; }

    public string? SystemFingerprint { get; set; }

    public JsonElement? Error { get; set; }
}

internal sealed class TextCompletionChoiceWire
{
    public string? Text { get; set; }

    public int Index { get; set; }

    public JsonElement? Logprobs { get; set; }

    public string? FinishReason { get; set; }

    [System.Text.Json.Serialization.JsonExtensionData]
    public Dictionary<string, JsonElement>? Extra { get; set; }
}

[System.Text.Json.Serialization.JsonSourceGenerationOptions(PropertyNamingPolicy = System.Text.Json.Serialization.JsonKnownNamingPolicy.SnakeCaseLower)]
[System.Text.Json.Serialization.JsonSerializable(typeof(TextCompletionWire))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, JsonElement>))]
internal sealed partial class TextCompletionJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
