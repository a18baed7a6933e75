using System.Text.Json;

namespace PipelineGateway;

internal static partial class RequestJson
{
    /// <summary>
    /// The client's chat request read by hand: the common, well-formed request, as the serializer reads it with duplicate
    /// keys refused (the front door's contract). Null when the body is anything else — malformed, a duplicate key, an
    /// escaped or ignored name, an unknown field where the contract skips it, a value of the wrong kind — and then the
    /// caller reads it with the serializer, whose refusal (with the JSON path the front door reports) or reading is the
    /// contract. This reader only ever takes the fast path for what the serializer would read the same way
    /// (RequestJsonDifferentialTests hold it to that), so it refuses nothing itself.
    /// Why: the serializer's metadata path was ~3.8% of the gateway's CPU and allocated a frame stack per request.
    /// </summary>
    public static ChatCompletionRequest? TryRead(ReadOnlySpan<byte> body)
    {
        try
        {
            var r = new Utf8JsonReader(body, ReaderOptions);
            if (!r.Read() || r.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }

            var request = ReadRequest(ref r, body);
            return r.Read() ? null : request; // anything after the object: the serializer says what
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException or FormatException or ArgumentException or FallBack)
        {
            return null;
        }
    }

    /// <summary>Thrown where the serializer, not this reader, must decide.</summary>
    private sealed class FallBack : Exception;

    private static FallBack Back => new(); // one per throw: an exception object thrown on two threads at once races

    private static ChatCompletionRequest ReadRequest(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        var value = new ChatCompletionRequest();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("messages"u8)) { Once(ref seen, 0); r.Read(); value.Messages = ListOf(ref r, body, ReadMessage)!; }
            else if (r.ValueTextEquals("model"u8)) { Once(ref seen, 1); r.Read(); value.Model = RepeatedStrings.Recently(ref r) ?? String(ref r)!; }
            else if (r.ValueTextEquals("stream"u8)) { Once(ref seen, 2); r.Read(); value.Stream = Boolean(ref r); }
            else if (r.ValueTextEquals("temperature"u8)) { Once(ref seen, 3); r.Read(); value.Temperature = Double(ref r); }
            else if (r.ValueTextEquals("max_tokens"u8)) { Once(ref seen, 4); r.Read(); value.MaxTokens = Int32(ref r); }
            else if (r.ValueTextEquals("max_completion_tokens"u8)) { Once(ref seen, 5); r.Read(); value.MaxCompletionTokens = Int32(ref r); }
            else if (r.ValueTextEquals("top_p"u8)) { Once(ref seen, 6); r.Read(); value.TopP = Double(ref r); }
            else if (r.ValueTextEquals("user"u8)) { Once(ref seen, 7); r.Read(); value.User = String(ref r); }
            else if (r.ValueTextEquals("tools"u8)) { Once(ref seen, 8); r.Read(); value.Tools = Tools(ref r, ref body); }
            else if (r.ValueTextEquals("tool_choice"u8)) { Once(ref seen, 9); r.Read(); value.ToolChoice = Element(ref r, body); }
            else if (r.ValueTextEquals("response_format"u8)) { Once(ref seen, 10); r.Read(); value.ResponseFormat = Element(ref r, body); }
            else if (r.ValueTextEquals("stop"u8)) { Once(ref seen, 11); r.Read(); value.Stop = StopSequencesConverter.ReadValue(ref r); }
            else if (r.ValueTextEquals("n"u8)) { Once(ref seen, 12); r.Read(); value.N = Int32(ref r); }
            else if (r.ValueTextEquals("seed"u8)) { Once(ref seen, 13); r.Read(); value.Seed = r.TokenType == JsonTokenType.Null ? null : r.TokenType == JsonTokenType.Number && r.TryGetInt64(out var seed) ? seed : throw Back; }
            else if (r.ValueTextEquals("stream_options"u8)) { Once(ref seen, 14); r.Read(); value.StreamOptions = ReadStreamOptions(ref r, body); }
            else if (r.ValueTextEquals("gateway"u8) || r.ValueTextEquals("requested_completion_tokens"u8)) { throw Back; } // [JsonIgnore] members
            else { value.AdditionalProperties = Extension(ref r, body, value.AdditionalProperties); }
        }

        return value;
    }

    /// <summary>
    /// The <c>tools</c> array (a member of the request object): an array read before for the same bytes is not read again
    /// (<see cref="Serialization.KeptToolsCache"/>); the reader then goes on after it over the rest of the body, in the
    /// state reading the array would have left it in (<paramref name="body"/> becomes that rest, so positions stay the
    /// reader's).
    /// </summary>
    private static List<ToolDefinition>? Tools(ref Utf8JsonReader r, ref ReadOnlySpan<byte> body)
    {
        if (r.TokenType != JsonTokenType.StartArray)
        {
            return ListOf(ref r, body, ReadTool); // null, or the serializer's to refuse
        }

        var start = checked((int)r.TokenStartIndex);
        if (Serialization.KeptToolsCache.Shared.Find(body[start..]) is var (kept, length))
        {
            body = body[(start + length)..];
            r = new Utf8JsonReader(body, isFinalBlock: true, AfterMember);
            return kept;
        }

        var tools = ListOf(ref r, body, ReadTool)!;
        Serialization.KeptToolsCache.Shared.Keep(body[start..checked((int)r.BytesConsumed)], tools);
        return tools;
    }

    private static readonly JsonReaderOptions ReaderOptions = new() { MaxDepth = 64 };

    /// <summary>A reader's state after a member's value inside the body's object (what reading a kept array leaves).</summary>
    private static readonly JsonReaderState AfterMember = StateAfterMember();

    private static JsonReaderState StateAfterMember()
    {
        var r = new Utf8JsonReader("{\"tools\":[]"u8, isFinalBlock: false, new JsonReaderState(ReaderOptions));
        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
        {
        }

        return r.CurrentState;
    }

    private static ChatCompletionMessage? ReadMessage(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        if (!Object(ref r))
        {
            return null;
        }

        var value = new ChatCompletionMessage();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("role"u8)) { Once(ref seen, 0); r.Read(); value.Role = RepeatedStrings.Role(ref r) ?? String(ref r)!; }
            else if (r.ValueTextEquals("content"u8)) { Once(ref seen, 1); r.Read(); value.Content = Content(ref r, body); }
            else if (r.ValueTextEquals("name"u8)) { Once(ref seen, 2); r.Read(); value.Name = String(ref r); }
            else if (r.ValueTextEquals("tool_calls"u8)) { Once(ref seen, 3); r.Read(); value.ToolCalls = ListOf(ref r, body, ReadToolCall); }
            else if (r.ValueTextEquals("tool_call_id"u8)) { Once(ref seen, 4); r.Read(); value.ToolCallId = String(ref r); }
            else if (r.ValueTextEquals("refusal"u8)) { Once(ref seen, 5); r.Read(); value.Refusal = String(ref r); }
            else { value.AdditionalProperties = Extension(ref r, body, value.AdditionalProperties); }
        }

        return value;
    }

    private static MessageContent? Content(ref Utf8JsonReader r, ReadOnlySpan<byte> body) => r.TokenType switch
    {
        JsonTokenType.Null => null,
        JsonTokenType.String => Text(ref r, body),
        JsonTokenType.StartArray => new MessageContent(ListOf(ref r, body, ReadPart)!),
        _ => throw Back,
    };

    /// <summary>Texts this long and longer are kept as the request spelled them (shorter ones cost less as strings).</summary>
    internal const int KeptTextLength = 256;

    /// <summary>
    /// A message's text. A long one is kept as the client's JSON string — checked here as <c>GetString</c> would check it
    /// (valid UTF-8; escapes that make characters: a lone surrogate is the serializer's to refuse) — and sent upstream as
    /// those bytes; its string is made only if something reads it (a translation, a count not remembered, the cache
    /// key). Why: an agent's step carries ~26 KB of texts, and making them strings and writing them back to UTF-8 was
    /// ~8% of the gateway's CPU on it (docs/benchmarks.md, "Agent-sized requests and token limits").
    /// </summary>
    private static MessageContent Text(ref Utf8JsonReader r, ReadOnlySpan<byte> body) =>
        r.ValueSpan.Length < KeptTextLength || r.HasValueSequence ? new MessageContent(r.GetString()!) : new MessageContent(Kept(ref r, body, out var length), length);

    /// <summary>Tool calls' arguments this long and longer are kept as the request spelled them (an escape at every quote).</summary>
    internal const int KeptArgumentsLength = 64;

    /// <summary>A tool call's arguments: long ones kept as the client's JSON string, as texts are (<see cref="Text"/>).</summary>
    private static void Arguments(ref Utf8JsonReader r, ReadOnlySpan<byte> body, FunctionCall function)
    {
        if (r.TokenType == JsonTokenType.String && r.ValueSpan.Length >= KeptArgumentsLength && !r.HasValueSequence)
        {
            function.KeepArgumentsJson(Kept(ref r, body, out _));
        }
        else
        {
            function.Arguments = String(ref r);
        }
    }

    /// <summary>
    /// The string token at the reader as the body spells it (quotes included), checked as <c>GetString</c> checks it,
    /// and its length in UTF-16 code units.
    /// </summary>
    private static byte[] Kept(ref Utf8JsonReader r, ReadOnlySpan<byte> body, out int length)
    {
        var value = r.ValueSpan;
        if (r.ValueIsEscaped)
        {
            var text = System.Buffers.ArrayPool<byte>.Shared.Rent(value.Length);
            try
            {
                // Throws InvalidOperationException for bytes that are not UTF-8 and escapes that make no character.
                length = System.Text.Encoding.UTF8.GetCharCount(text, 0, r.CopyString(text));
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(text);
            }
        }
        else
        {
            // One pass that checks and counts (the strict encoding throws DecoderFallbackException, an ArgumentException:
            // the serializer decides) — not Utf8.IsValid and then a count, two passes over ~28 KB on an agent's step.
            length = StrictUtf8.GetCharCount(value);
        }

        // Not ToArray(): that zeroes the new array before copying into it (half the memset of an agent's step).
        var json = body.Slice(checked((int)r.TokenStartIndex), value.Length + 2);
        var kept = GC.AllocateUninitializedArray<byte>(json.Length);
        json.CopyTo(kept);
        return kept;
    }

    /// <summary>UTF-8 that throws on bytes that are not (<see cref="Kept"/>).</summary>
    private static readonly System.Text.UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private static ContentPart? ReadPart(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        if (!Object(ref r))
        {
            return null;
        }

        var value = new ContentPart();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("type"u8)) { Once(ref seen, 0); r.Read(); value.Type = String(ref r)!; }
            else if (r.ValueTextEquals("text"u8)) { Once(ref seen, 1); r.Read(); value.Text = String(ref r); }
            else if (r.ValueTextEquals("image_url"u8)) { Once(ref seen, 2); r.Read(); value.ImageUrl = ReadImageUrl(ref r); }
            else { value.AdditionalProperties = Extension(ref r, body, value.AdditionalProperties); }
        }

        return value;
    }

    private static ImageUrl? ReadImageUrl(ref Utf8JsonReader r)
    {
        if (!Object(ref r))
        {
            return null;
        }

        var value = new ImageUrl();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("url"u8)) { Once(ref seen, 0); r.Read(); value.Url = String(ref r)!; }
            else if (r.ValueTextEquals("detail"u8)) { Once(ref seen, 1); r.Read(); value.Detail = String(ref r); }
            else { throw Back; } // skipped by the contract, but checked for duplicates inside: the serializer's to do
        }

        return value;
    }

    private static ToolCall? ReadToolCall(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        if (!Object(ref r))
        {
            return null;
        }

        var value = new ToolCall();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("id"u8)) { Once(ref seen, 0); r.Read(); value.Id = String(ref r); }
            else if (r.ValueTextEquals("type"u8)) { Once(ref seen, 1); r.Read(); value.Type = String(ref r); }
            else if (r.ValueTextEquals("function"u8))
            {
                Once(ref seen, 2);
                r.Read();
                if (Object(ref r))
                {
                    var function = new FunctionCall();
                    var inner = 0;
                    while (Name(ref r))
                    {
                        if (r.ValueTextEquals("name"u8)) { Once(ref inner, 0); r.Read(); function.Name = String(ref r); }
                        else if (r.ValueTextEquals("arguments"u8)) { Once(ref inner, 1); r.Read(); Arguments(ref r, body, function); }
                        else { throw Back; }
                    }

                    value.Function = function;
                }
            }
            else if (r.ValueTextEquals("index"u8)) { Once(ref seen, 3); r.Read(); value.Index = Int32(ref r); }
            else { value.AdditionalProperties = Extension(ref r, body, value.AdditionalProperties); } // Gemini's extra_content
        }

        return value;
    }

    private static ToolDefinition? ReadTool(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        if (!Object(ref r))
        {
            return null;
        }

        var value = new ToolDefinition();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("type"u8)) { Once(ref seen, 0); r.Read(); value.Type = String(ref r)!; }
            else if (r.ValueTextEquals("function"u8))
            {
                Once(ref seen, 1);
                r.Read();
                if (Object(ref r))
                {
                    var function = new FunctionDefinition();
                    var inner = 0;
                    while (Name(ref r))
                    {
                        if (r.ValueTextEquals("name"u8)) { Once(ref inner, 0); r.Read(); function.Name = String(ref r)!; }
                        else if (r.ValueTextEquals("description"u8)) { Once(ref inner, 1); r.Read(); function.Description = String(ref r); }
                        else if (r.ValueTextEquals("parameters"u8)) { Once(ref inner, 2); r.Read(); function.Parameters = Element(ref r, body); }
                        else if (r.ValueTextEquals("strict"u8)) { Once(ref inner, 3); r.Read(); function.Strict = Boolean(ref r); }
                        else { throw Back; }
                    }

                    value.Function = function;
                }
            }
            else { value.AdditionalProperties = Extension(ref r, body, value.AdditionalProperties); }
        }

        return value;
    }

    private static StreamOptions? ReadStreamOptions(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        if (!Object(ref r))
        {
            return null;
        }

        var value = new StreamOptions();
        var seen = 0;
        while (Name(ref r))
        {
            if (r.ValueTextEquals("include_usage"u8)) { Once(ref seen, 0); r.Read(); value.IncludeUsage = Boolean(ref r); }
            else { value.AdditionalProperties = Extension(ref r, body, value.AdditionalProperties); }
        }

        return value;
    }

    private delegate T? ItemReader<T>(ref Utf8JsonReader r, ReadOnlySpan<byte> body);

    private static List<T>? ListOf<T>(ref Utf8JsonReader r, ReadOnlySpan<byte> body, ItemReader<T> item)
    {
        if (r.TokenType == JsonTokenType.Null)
        {
            return null;
        }

        if (r.TokenType != JsonTokenType.StartArray)
        {
            throw Back;
        }

        var list = new List<T>();
        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
        {
            list.Add(item(ref r, body)!); // a null element is kept, as the serializer keeps it
        }

        return list;
    }

    /// <summary>True on an object's start, false on null; anything else is the serializer's to refuse.</summary>
    private static bool Object(ref Utf8JsonReader r) =>
        r.TokenType == JsonTokenType.StartObject || (r.TokenType == JsonTokenType.Null ? false : throw Back);

    /// <summary>Moves to the next property name (unescaped names are the serializer's); false at the object's end.</summary>
    private static bool Name(ref Utf8JsonReader r)
    {
        if (!r.Read() || r.TokenType != JsonTokenType.PropertyName)
        {
            return false;
        }

        return r.ValueIsEscaped ? throw Back : true;
    }

    /// <summary>A property seen twice: the serializer refuses it, with the path.</summary>
    private static void Once(ref int seen, int bit)
    {
        if ((seen & (1 << bit)) != 0)
        {
            throw Back;
        }

        seen |= 1 << bit;
    }

    private static Dictionary<string, JsonElement> Extension(ref Utf8JsonReader r, ReadOnlySpan<byte> body, Dictionary<string, JsonElement>? extra)
    {
        var name = r.GetString()!;
        r.Read();
        extra ??= [];
        return extra.TryAdd(name, Element(ref r, body)!.Value) ? extra : throw Back;
    }

    /// <summary>
    /// A JSON value kept as is, parsed from its bytes with duplicate keys refused (the front door's contract reaches
    /// into kept values too); a JSON null is no value.
    /// </summary>
    private static JsonElement? Element(ref Utf8JsonReader r, ReadOnlySpan<byte> body)
    {
        if (r.TokenType == JsonTokenType.Null)
        {
            return null;
        }

        var start = (int)r.TokenStartIndex;
        r.Skip();
        return Serialization.KeptValueCache.Shared.Parse(body[start..(int)r.BytesConsumed]); // a schema sent again: parsed once
    }

    private static string? String(ref Utf8JsonReader r) => r.TokenType switch
    {
        JsonTokenType.String => r.GetString(),
        JsonTokenType.Null => null,
        _ => throw Back,
    };

    private static bool? Boolean(ref Utf8JsonReader r) => r.TokenType switch
    {
        JsonTokenType.True => true,
        JsonTokenType.False => false,
        JsonTokenType.Null => null,
        _ => throw Back,
    };

    private static int? Int32(ref Utf8JsonReader r) =>
        r.TokenType == JsonTokenType.Null ? null : r.TokenType == JsonTokenType.Number && r.TryGetInt32(out var value) ? value : throw Back;

    private static double? Double(ref Utf8JsonReader r) =>
        r.TokenType == JsonTokenType.Null ? null : r.TokenType == JsonTokenType.Number && r.TryGetDouble(out var value) ? value : throw Back;
}
