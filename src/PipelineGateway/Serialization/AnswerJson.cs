using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Unicode;

namespace PipelineGateway;

/// <summary>
/// Chat answers (<see cref="ChatCompletionResponse"/>, and <see cref="ChatCompletionChunk"/> for streams) read and written
/// by hand with <see cref="Utf8JsonReader"/> and <see cref="Utf8JsonWriter"/>. Every answer is parsed from the
/// upstream and written to the client, so this is the gateway's hottest JSON. Why not System.Text.Json's source
/// generator alone: these types keep the fields they do not know (<c>[JsonExtensionData]</c>), which rules out its fast
/// path, and its metadata path (a converter per property, a stack of frames allocated per nested parse) was measured
/// at ~12% of the gateway's CPU per request under load (docs/benchmarks.md, issue 21).
/// <para>
/// The contract is the serializer's for these types, exactly: snake_case names matched case-sensitively (escaped
/// names unescaped; the names of <c>[JsonIgnore]</c> members dropped), a JSON null sets a reference to null and fails a number, unknown fields kept in arrival order with
/// the last of two same-named ones winning (on types with <c>AdditionalProperties</c>; skipped on the others), nulls
/// left out on write except <c>finish_reason</c>/<c>logprobs</c>, unknown fields written back last.
/// AnswerJsonDifferentialTests hold it to a reference context that uses the serializer.
/// </para>
/// </summary>
internal static class AnswerJson
{
    // ---- reading: each reader starts on the value's first token and ends on its last ----

    public static ChatCompletionResponse ReadResponse(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject, "a chat completion", "an object");
        var value = new ChatCompletionResponse();
        var fresh = value.Choices; // the constructor's empty list: filled rather than replaced
        var seen = 0; // choices, id, model, created, object, usage: the writer writes each once (usage when there is one)
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("choices"u8)) { Seen(ref seen, 1); Value(ref r); value.Choices = ReadList(ref r, ReadChoice, "'choices'", Take(ref fresh))!; }
            else if (r.ValueTextEquals("id"u8)) { Seen(ref seen, 2); Value(ref r); value.Id = String(ref r, "'id'")!; }
            else if (r.ValueTextEquals("usage"u8)) { Seen(ref seen, 32); Value(ref r); value.Usage = ReadUsage(ref r); }
            else if (r.ValueTextEquals("model"u8)) { Seen(ref seen, 4); Value(ref r); value.Model = RepeatedStrings.Recently(ref r) ?? String(ref r, "'model'")!; }
            else if (r.ValueTextEquals("created"u8)) { Seen(ref seen, 8); Value(ref r); value.Created = Int64(ref r, "'created'"); }
            else if (r.ValueTextEquals("object"u8)) { Seen(ref seen, 16); Value(ref r); value.Object = RepeatedStrings.Object(ref r) ?? String(ref r, "'object'")!; }
            else if (r.ValueTextEquals("system_fingerprint"u8)) { Seen(ref seen, 64); Value(ref r); value.SystemFingerprint = RepeatedStrings.Recently(ref r) ?? String(ref r, "'system_fingerprint'"); }
            else if (r.ValueTextEquals("content"u8) || r.ValueTextEquals("finish_reason"u8) || r.ValueTextEquals("gateway"u8)) { t_offShape = true; Skip(ref r); } // [JsonIgnore] members: dropped, not kept
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        if ((seen & 63) != 63)
        {
            t_offShape = true;
        }

        return value;
    }

    /// <summary>
    /// Reads a whole answer as the OpenAI adapter receives it (with the serializer, which also refuses anything after the
    /// value). <paramref name="keepJson"/>: the response also keeps the body's bytes when writing them says what writing
    /// the response would (<see cref="ChatCompletionResponse.UpstreamJson"/>) — the answer is in the writer's shape:
    /// <c>id</c>, <c>object</c>, <c>created</c>, <c>model</c>, <c>choices</c> and <c>usage</c> once each and nothing
    /// left for the gateway to fill or fix; each choice with <c>index</c>, <c>message</c>, <c>finish_reason</c> (a
    /// string) and <c>logprobs</c> once each; each message with <c>role</c>, <c>content</c> (a string or null) and
    /// <c>refusal</c> once each, tool calls not an empty list; usage with its three counts once each; no member given
    /// twice anywhere the gateway reads it (a client might read the other one); no <c>gateway</c> member; valid UTF-8;
    /// at most <see cref="Serialization.KeptJson.MaxLength"/> bytes.
    /// Members the gateway does not model are in the object too (a choice's and a message's kept, written back), except
    /// inside a tool call, whose unknown members the bytes carry and the writer drops, as with stream events.
    /// Whitespace and member order are the upstream's.
    /// </summary>
    public static ChatCompletionResponse? ReadAnswer(ReadOnlySpan<byte> data, bool keepJson)
    {
        t_offShape = false;
        var response = JsonSerializer.Deserialize(data, GatewayJsonContext.Default.ChatCompletionResponse);
        if (keepJson && response is not null && !t_offShape && data.Length <= Serialization.KeptJson.MaxLength && WritesAsItself(response) && Utf8.IsValid(data))
        {
            response.KeepUpstreamJson(data);
        }

        return response;
    }

    /// <summary>Nothing in a whole answer is left for <see cref="Providers.ProviderAnswer"/> or the worker to fill.</summary>
    private static bool WritesAsItself(ChatCompletionResponse response)
    {
        if (response is not { Usage: not null, Id.Length: > 0, Object.Length: > 0, Created: > 0, Model.Length: > 0, Choices: { } choices })
        {
            return false;
        }

        foreach (var choice in choices)
        {
            if (choice is not { FinishReason: not null, Message: { Role.Length: > 0 } message } || message.ToolCalls is { Count: 0 })
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Set on this thread by the readers when the chunk or answer just read is not in the shape <see cref="WriteChunk"/>
    /// or <see cref="WriteResponse"/> writes — a member it always writes is missing (<c>id</c>, <c>object</c>,
    /// <c>created</c>, <c>model</c>, <c>choices</c>; a choice's <c>index</c>, <c>delta</c> or <c>message</c>,
    /// <c>finish_reason</c>, <c>logprobs</c>; …), a member it writes once came twice, or a member it drops was dropped
    /// (<c>gateway</c>) — so its bytes may not stand in for the object (<see cref="ChatCompletionChunk.EventJson"/>,
    /// <see cref="ChatCompletionResponse.UpstreamJson"/>). Reset and read by <see cref="ReadStreamChunk"/> and
    /// <see cref="ReadAnswer"/> around one read, which never awaits; other reads (requests) may set it, unread.
    /// </summary>
    [ThreadStatic]
    internal static bool t_offShape;

    /// <summary>
    /// Set around a chunk's read when its bytes may be kept (<see cref="ReadStreamChunk"/>): top-level members
    /// the gateway does not model are skipped instead of copied into <see cref="ChatCompletionChunk.AdditionalProperties"/>
    /// — a document per member per event; OpenAI sends two (<c>service_tier</c>, <c>obfuscation</c>) — since the kept
    /// bytes carry them. <see cref="t_chunkSkipped"/> says some were; an <c>error</c> member is always read.
    /// </summary>
    [ThreadStatic]
    internal static bool t_chunkSkipUnknown;

    [ThreadStatic]
    internal static bool t_chunkSkipped;

    /// <summary>
    /// Reads one stream chunk with the serializer (as the OpenAI adapter reads each SSE event), its id shared with the previous chunk of the same stream
    /// (<paramref name="previousId"/>, updated). <paramref name="keepEventJson"/>: the chunk also keeps the event's bytes
    /// when they may be written in its place (<see cref="ChatCompletionChunk.EventJson"/>). <paramref name="template"/>: the
    /// stream's (its events read in order), when its choices are skimmed — an event that is the last text-only event's
    /// bytes around other text is not skimmed again (<see cref="Serialization.StreamTemplate"/>).
    /// </summary>
    public static ChatCompletionChunk? ReadStreamChunk(ReadOnlySpan<byte> data, ref string? previousId, bool keepEventJson = false, bool skimChoices = false, Serialization.StreamTemplate? template = null)
    {
        if (keepEventJson && skimChoices && (template?.TryRead(data) ?? Skim(data, previousId, template)) is { } skimmed)
        {
            previousId = skimmed.Id;
            return skimmed;
        }

        RepeatedStrings.t_streamId = previousId;
        t_offShape = false;
        t_chunkSkipUnknown = keepEventJson;
        t_chunkSkipped = false;
        try
        {
            var chunk = JsonSerializer.Deserialize(data, GatewayJsonContext.Default.ChatCompletionChunk);
            if (keepEventJson && chunk is not null)
            {
                if (WritesAsItself(chunk, data))
                {
                    chunk.KeepEventJson(data, membersUnread: t_chunkSkipped);
                }
                else if (t_chunkSkipped)
                {
                    // Not kept after all: read again, with the members it skipped (an event off the gateway's shape).
                    t_chunkSkipUnknown = false;
                    chunk = JsonSerializer.Deserialize(data, GatewayJsonContext.Default.ChatCompletionChunk);
                }
            }

            previousId = chunk?.Id ?? previousId;
            return chunk;
        }
        finally
        {
            RepeatedStrings.t_streamId = null;
            t_chunkSkipUnknown = false;
        }
    }

    /// <summary>
    /// The chunk of an event in the shape the gateway writes, read without its choices (<see cref="ChatCompletionChunk.ChoicesUnread"/>),
    /// keeping the event's bytes; null when the event is anything else — then it is read in full, which also reports
    /// what is wrong with it. What it accepts is what the full read keeps as its bytes (<see cref="WritesAsItself"/>):
    /// one line of valid UTF-8; <c>id</c>, <c>object</c>, <c>created</c>, <c>model</c> and <c>choices</c> once each and
    /// not empty; no usage (null is none), no <c>error</c>; each choice an object with <c>index</c>, <c>delta</c>,
    /// <c>finish_reason</c> and <c>logprobs</c> once each, its delta an object whose <c>content</c>, <c>role</c> and
    /// <c>refusal</c> are strings or null — a delta with tool calls is read in full. Members it does not model are left
    /// in the bytes, as the full read leaves them (<see cref="t_chunkSkipUnknown"/>). No allocation but the chunk, its
    /// copy of the bytes, and the id and model strings when they differ from the last chunk's.
    /// </summary>
    private static ChatCompletionChunk? Skim(ReadOnlySpan<byte> data, string? previousId, Serialization.StreamTemplate? template)
    {
        if (!OneLineOfUtf8(data))
        {
            return null;
        }

        var r = new Utf8JsonReader(data);
        var chunk = ChatCompletionChunk.Skimmed();
        var skipped = false;
        var seen = 0;
        int count = 0;
        var finishes = false;
        var contentBytes = 0;
        var reasons = false;
        var text = (Start: -1, End: -1, Reasoning: false); // where a choice's non-empty text or reasoning text is, as sent
        var padding = (Start: -1, End: -1); // where OpenAI's obfuscation text is
        try
        {
            if (!r.Read() || r.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }

            RepeatedStrings.t_streamId = previousId;
            while (NextProperty(ref r))
            {
                if (r.ValueTextEquals("choices"u8))
                {
                    if (!Once(ref seen, 1) || !r.Read() || r.TokenType != JsonTokenType.StartArray)
                    {
                        return null;
                    }

                    while (r.Read() && r.TokenType != JsonTokenType.EndArray)
                    {
                        if (!SkimChoice(ref r, ref finishes, ref contentBytes, ref reasons, ref text))
                        {
                            return null;
                        }

                        count++;
                    }
                }
                else if (r.ValueTextEquals("id"u8))
                {
                    if (!Once(ref seen, 2) || !r.Read() || r.TokenType != JsonTokenType.String)
                    {
                        return null;
                    }

                    chunk.Id = RepeatedStrings.StreamId(ref r) ?? r.GetString()!;
                }
                else if (r.ValueTextEquals("model"u8))
                {
                    if (!Once(ref seen, 4) || !r.Read() || r.TokenType != JsonTokenType.String)
                    {
                        return null;
                    }

                    chunk.Model = RepeatedStrings.Recently(ref r) ?? r.GetString()!;
                }
                else if (r.ValueTextEquals("created"u8))
                {
                    if (!Once(ref seen, 8) || !r.Read() || r.TokenType != JsonTokenType.Number || !r.TryGetInt64(out var created))
                    {
                        return null;
                    }

                    chunk.Created = created;
                }
                else if (r.ValueTextEquals("object"u8))
                {
                    if (!Once(ref seen, 16) || !r.Read() || r.TokenType != JsonTokenType.String)
                    {
                        return null;
                    }

                    chunk.Object = RepeatedStrings.Object(ref r) ?? r.GetString()!;
                }
                else if (r.ValueTextEquals("system_fingerprint"u8))
                {
                    if (!r.Read() || r.TokenType is not (JsonTokenType.String or JsonTokenType.Null))
                    {
                        return null;
                    }

                    chunk.SystemFingerprint = r.TokenType == JsonTokenType.Null ? null : RepeatedStrings.Recently(ref r) ?? r.GetString();
                }
                else if (r.ValueTextEquals("usage"u8))
                {
                    if (!r.Read() || r.TokenType != JsonTokenType.Null)
                    {
                        return null; // usage is written by the gateway, with its cost: read in full
                    }
                }
                else if (r.ValueTextEquals("error"u8) || r.ValueTextEquals("gateway"u8))
                {
                    return null;
                }
                else
                {
                    skipped = true;
                    var obfuscation = r.ValueTextEquals("obfuscation"u8);
                    r.Read();
                    if (obfuscation && r.TokenType == JsonTokenType.String)
                    {
                        // OpenAI's padding, other random text on every event: the template lets it vary, as the text does.
                        var start = (int)r.TokenStartIndex + 1;
                        padding = (start, start + r.ValueSpan.Length);
                    }

                    r.Skip();
                }
            }

            if (r.Read())
            {
                return null; // something after the object
            }
        }
        catch (JsonException)
        {
            return null; // not JSON: the full read says why
        }
        finally
        {
            RepeatedStrings.t_streamId = null;
        }

        if (seen != 31 || !NothingToFill(chunk))
        {
            return null;
        }

        chunk.SkipChoices(count, finishes, contentBytes, reasons);
        chunk.KeepEventJson(data, membersUnread: skipped);
        if (template is not null && count == 1 && !finishes && text.Start > 0 && text.End - text.Start == contentBytes)
        {
            // One choice whose only output is one string — its content's text or its reasoning text (another's bytes would
            // count too): the stream's next events are likely these bytes around other text.
            template.Remember(data, text, padding, chunk, skipped);
        }

        return chunk;
    }

    /// <summary>
    /// One choice, skimmed (<see cref="Skim"/>); false when it is not in the writer's shape. Adds the bytes of its text,
    /// refusal and reasoning text (as sent, escapes and all) to <paramref name="contentBytes"/>.
    /// </summary>
    private static bool SkimChoice(ref Utf8JsonReader r, ref bool finishes, ref int contentBytes, ref bool reasons, ref (int Start, int End, bool Reasoning) text)
    {
        if (r.TokenType != JsonTokenType.StartObject)
        {
            return false;
        }

        var seen = 0;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("delta"u8))
            {
                if (!Once(ref seen, 1) || !r.Read() || r.TokenType != JsonTokenType.StartObject)
                {
                    return false;
                }

                var deltaSeen = 0;
                while (NextProperty(ref r))
                {
                    var member = r.ValueTextEquals("content"u8) ? 1 : r.ValueTextEquals("role"u8) ? 2 : r.ValueTextEquals("refusal"u8) ? 4 : r.ValueTextEquals("tool_calls"u8) ? 8 : 0;
                    if (member == 8 || (member != 0 && !Once(ref deltaSeen, member)))
                    {
                        return false; // tool calls, or a member given twice: read in full
                    }

                    var reasoning = member == 0 && (r.ValueTextEquals("reasoning_content"u8) || r.ValueTextEquals("reasoning"u8));
                    r.Read();
                    if (member == 0)
                    {
                        // Not modelled: the bytes carry it (the full read keeps it as an unknown member). Reasoning text
                        // is output the caller sees, as text is.
                        if (reasoning && r.TokenType == JsonTokenType.String)
                        {
                            var length = (int)(r.HasValueSequence ? r.ValueSequence.Length : r.ValueSpan.Length);
                            contentBytes += length;
                            reasons |= length > 0;
                            if (length > 0)
                            {
                                var start = (int)r.TokenStartIndex + 1; // past the opening quote
                                text = (start, start + length, true);
                            }
                        }

                        r.Skip();
                    }
                    else if (r.TokenType == JsonTokenType.String)
                    {
                        if (member != 2)
                        {
                            var length = (int)(r.HasValueSequence ? r.ValueSequence.Length : r.ValueSpan.Length);
                            contentBytes += length;
                            if (member == 1 && length > 0)
                            {
                                var start = (int)r.TokenStartIndex + 1; // past the opening quote
                                text = (start, start + length, false);
                            }
                        }
                    }
                    else if (r.TokenType != JsonTokenType.Null)
                    {
                        return false;
                    }
                }
            }
            else if (r.ValueTextEquals("index"u8))
            {
                if (!Once(ref seen, 2) || !r.Read() || r.TokenType != JsonTokenType.Number || !r.TryGetInt32(out _))
                {
                    return false;
                }
            }
            else if (r.ValueTextEquals("finish_reason"u8))
            {
                if (!Once(ref seen, 4) || !r.Read() || r.TokenType is not (JsonTokenType.String or JsonTokenType.Null))
                {
                    return false;
                }

                finishes |= r.TokenType == JsonTokenType.String;
            }
            else if (r.ValueTextEquals("logprobs"u8))
            {
                if (!Once(ref seen, 8))
                {
                    return false;
                }

                Skip(ref r);
            }
            else
            {
                Skip(ref r);
            }
        }

        return seen == 15;
    }

    /// <summary>Notes a member that may come once; false when it came before.</summary>
    private static bool Once(ref int seen, int member)
    {
        if ((seen & member) != 0)
        {
            return false;
        }

        seen |= member;
        return true;
    }

    /// <summary>
    /// The event's bytes say what the gateway would write for <paramref name="chunk"/>: the reader found it in the
    /// writer's shape, nothing is left for the gateway to fill (id, object, created, model), it is one SSE line and
    /// valid UTF-8 (the reader does not decode every string it skips). A chunk with usage is not worth the copy: the
    /// endpoint changes its usage (the request's cost, or none when the caller did not ask) and writes it anew.
    /// </summary>
    private static bool WritesAsItself(ChatCompletionChunk chunk, ReadOnlySpan<byte> data) =>
        !t_offShape
        && chunk is { Usage: null, Choices: not null }
        && NothingToFill(chunk)
        && OneLineOfUtf8(data);

    /// <summary>The members the gateway fills when missing (<see cref="Providers.ProviderAnswer"/>) are all there.</summary>
    private static bool NothingToFill(ChatCompletionChunk chunk) =>
        chunk is { Id.Length: > 0, Object.Length: > 0, Created: > 0, Model.Length: > 0 };

    /// <summary>Bytes that can go out as one SSE data line: no line break, valid UTF-8 (the readers do not decode every string they skip).</summary>
    private static bool OneLineOfUtf8(ReadOnlySpan<byte> data) => data.IndexOfAny((byte)'\r', (byte)'\n') < 0 && Utf8.IsValid(data);

    public static ChatCompletionChunk ReadChunk(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject, "a chat completion chunk", "an object");
        var value = new ChatCompletionChunk();
        var fresh = value.Choices; // the constructor's empty list: filled rather than replaced
        var seen = 0; // the members the writer always writes, once each: choices, id, model, created, object
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("choices"u8)) { Seen(ref seen, 1); Value(ref r); value.Choices = ReadList(ref r, ReadChunkChoice, "'choices'", Take(ref fresh))!; }
            else if (r.ValueTextEquals("id"u8)) { Seen(ref seen, 2); Value(ref r); value.Id = RepeatedStrings.StreamId(ref r) ?? String(ref r, "'id'")!; }
            else if (r.ValueTextEquals("usage"u8)) { Value(ref r); value.Usage = ReadUsage(ref r); }
            else if (r.ValueTextEquals("model"u8)) { Seen(ref seen, 4); Value(ref r); value.Model = RepeatedStrings.Recently(ref r) ?? String(ref r, "'model'")!; }
            else if (r.ValueTextEquals("created"u8)) { Seen(ref seen, 8); Value(ref r); value.Created = Int64(ref r, "'created'"); }
            else if (r.ValueTextEquals("object"u8)) { Seen(ref seen, 16); Value(ref r); value.Object = RepeatedStrings.Object(ref r) ?? String(ref r, "'object'")!; }
            else if (r.ValueTextEquals("system_fingerprint"u8)) { Value(ref r); value.SystemFingerprint = RepeatedStrings.Recently(ref r) ?? String(ref r, "'system_fingerprint'"); }
            else if (r.ValueTextEquals("gateway"u8)) { t_offShape = true; Skip(ref r); } // a [JsonIgnore] member: dropped, not kept
            else if (t_chunkSkipUnknown && !r.ValueTextEquals("error"u8)) { t_chunkSkipped = true; Skip(ref r); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        if (seen != 31)
        {
            t_offShape = true;
        }

        return value;
    }

    /// <summary>Notes a member that the writers write once: a second one puts the chunk or answer off their shape.</summary>
    private static void Seen(ref int seen, int member)
    {
        if (!Once(ref seen, member))
        {
            t_offShape = true;
        }
    }

    private static ChatChoice? ReadChoice(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "a choice"))
        {
            return null;
        }

        var value = new ChatChoice();
        var seen = 0; // message, index, finish_reason, logprobs: the writer writes each once
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("message"u8)) { Seen(ref seen, 1); Value(ref r); value.Message = ReadMessage(ref r); }
            else if (r.ValueTextEquals("index"u8)) { Seen(ref seen, 2); Value(ref r); value.Index = Int32(ref r, "a choice's 'index'"); }
            else if (r.ValueTextEquals("finish_reason"u8)) { Seen(ref seen, 4); Value(ref r); value.FinishReason = RepeatedStrings.FinishReason(ref r) ?? String(ref r, "'finish_reason'"); }
            else if (r.ValueTextEquals("logprobs"u8)) { Seen(ref seen, 8); Value(ref r); value.Logprobs = OptionalElement(ref r); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        if (seen != 15)
        {
            t_offShape = true;
        }

        return value;
    }

    private static ChunkChoice? ReadChunkChoice(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "a choice"))
        {
            return null;
        }

        var value = new ChunkChoice();
        var fresh = value.Delta; // the constructor's empty delta: filled rather than replaced
        var seen = 0; // delta, index, finish_reason, logprobs: the writer writes each once
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("delta"u8)) { Seen(ref seen, 1); Value(ref r); value.Delta = ReadDelta(ref r, Take(ref fresh))!; }
            else if (r.ValueTextEquals("index"u8)) { Seen(ref seen, 2); Value(ref r); value.Index = Int32(ref r, "a choice's 'index'"); }
            else if (r.ValueTextEquals("finish_reason"u8)) { Seen(ref seen, 4); Value(ref r); value.FinishReason = RepeatedStrings.FinishReason(ref r) ?? String(ref r, "'finish_reason'"); }
            else if (r.ValueTextEquals("logprobs"u8)) { Seen(ref seen, 8); Value(ref r); value.Logprobs = OptionalElement(ref r); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        if (seen != 15)
        {
            t_offShape = true;
        }

        return value;
    }

    private static ChatCompletionDelta? ReadDelta(ref Utf8JsonReader r, ChatCompletionDelta? into)
    {
        if (!Object(ref r, "a delta"))
        {
            return null;
        }

        var value = into ?? new ChatCompletionDelta();
        var seen = 0; // a member given twice: the gateway reads the last, a client might not
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("content"u8)) { Seen(ref seen, 1); Value(ref r); value.Content = String(ref r, "a delta's 'content'"); }
            else if (r.ValueTextEquals("role"u8)) { Seen(ref seen, 2); Value(ref r); value.Role = RepeatedStrings.Role(ref r) ?? String(ref r, "'role'"); }
            else if (r.ValueTextEquals("tool_calls"u8)) { Seen(ref seen, 4); Value(ref r); value.ToolCalls = ReadList(ref r, ReadToolCall, "'tool_calls'"); }
            else if (r.ValueTextEquals("refusal"u8)) { Seen(ref seen, 8); Value(ref r); value.Refusal = String(ref r, "'refusal'"); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        return value;
    }

    /// <summary>A message as <see cref="ChatCompletionMessage"/>'s contract reads it (answers and requests alike).</summary>
    public static ChatCompletionMessage? ReadMessage(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "a message"))
        {
            return null;
        }

        var value = new ChatCompletionMessage();
        var seen = 0; // role, content and refusal the answer writer always writes; each member once
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("content"u8)) { Seen(ref seen, 1); Value(ref r); value.Content = ReadContent(ref r); t_offShape |= value.Content?.Parts is not null; }
            else if (r.ValueTextEquals("role"u8)) { Seen(ref seen, 2); Value(ref r); value.Role = RepeatedStrings.Role(ref r) ?? String(ref r, "'role'")!; }
            else if (r.ValueTextEquals("refusal"u8)) { Seen(ref seen, 4); Value(ref r); value.Refusal = String(ref r, "'refusal'"); }
            else if (r.ValueTextEquals("tool_calls"u8)) { Seen(ref seen, 8); Value(ref r); value.ToolCalls = ReadList(ref r, ReadToolCall, "'tool_calls'"); }
            else if (r.ValueTextEquals("name"u8)) { Seen(ref seen, 16); Value(ref r); value.Name = String(ref r, "'name'"); }
            else if (r.ValueTextEquals("tool_call_id"u8)) { Seen(ref seen, 32); Value(ref r); value.ToolCallId = String(ref r, "'tool_call_id'"); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        if ((seen & 7) != 7)
        {
            t_offShape = true;
        }

        return value;
    }

    /// <summary><see cref="MessageContent"/>: a string or an array of parts (<see cref="MessageContentConverter"/>).</summary>
    public static MessageContent? ReadContent(ref Utf8JsonReader r) => r.TokenType switch
    {
        JsonTokenType.Null => null,
        JsonTokenType.String => new MessageContent(r.GetString()!),
        JsonTokenType.StartArray => new MessageContent(ReadList(ref r, ReadPart, "'content'")!),
        _ => throw new JsonException("'content' must be a string or an array of content parts."),
    };

    private static ContentPart? ReadPart(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "a content part"))
        {
            return null;
        }

        var value = new ContentPart();
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("type"u8)) { Value(ref r); value.Type = String(ref r, "a content part's 'type'")!; }
            else if (r.ValueTextEquals("text"u8)) { Value(ref r); value.Text = String(ref r, "a content part's 'text'"); }
            else if (r.ValueTextEquals("image_url"u8)) { Value(ref r); value.ImageUrl = ReadImageUrl(ref r); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        return value;
    }

    private static ImageUrl? ReadImageUrl(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "'image_url'"))
        {
            return null;
        }

        var value = new ImageUrl();
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("url"u8)) { Value(ref r); value.Url = String(ref r, "'url'")!; }
            else if (r.ValueTextEquals("detail"u8)) { Value(ref r); value.Detail = String(ref r, "'detail'"); }
            else { Skip(ref r); }
        }

        return value;
    }

    private static ToolCall? ReadToolCall(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "a tool call"))
        {
            return null;
        }

        var value = new ToolCall();
        var seen = 0;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("function"u8)) { Seen(ref seen, 1); Value(ref r); value.Function = ReadFunctionCall(ref r); }
            else if (r.ValueTextEquals("id"u8)) { Seen(ref seen, 2); Value(ref r); value.Id = String(ref r, "a tool call's 'id'"); }
            else if (r.ValueTextEquals("type"u8)) { Seen(ref seen, 4); Value(ref r); value.Type = String(ref r, "a tool call's 'type'"); }
            else if (r.ValueTextEquals("index"u8)) { Seen(ref seen, 8); Value(ref r); value.Index = r.TokenType == JsonTokenType.Null ? null : Int32(ref r, "a tool call's 'index'"); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); } // Gemini's extra_content
        }

        return value;
    }

    private static FunctionCall? ReadFunctionCall(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "a tool call's 'function'"))
        {
            return null;
        }

        var value = new FunctionCall();
        var seen = 0;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("arguments"u8)) { Seen(ref seen, 1); Value(ref r); value.Arguments = String(ref r, "'arguments'"); }
            else if (r.ValueTextEquals("name"u8)) { Seen(ref seen, 2); Value(ref r); value.Name = String(ref r, "a function's 'name'"); }
            else { Skip(ref r); }
        }

        return value;
    }

    private static TokenUsage? ReadUsage(ref Utf8JsonReader r)
    {
        if (!Object(ref r, "'usage'"))
        {
            return null;
        }

        var value = new TokenUsage();
        var seen = 0; // the writer writes the three counts, once each
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("prompt_tokens"u8)) { Seen(ref seen, 1); Value(ref r); value.PromptTokens = Int32(ref r, "'prompt_tokens'"); }
            else if (r.ValueTextEquals("completion_tokens"u8)) { Seen(ref seen, 2); Value(ref r); value.CompletionTokens = Int32(ref r, "'completion_tokens'"); }
            else if (r.ValueTextEquals("total_tokens"u8)) { Seen(ref seen, 4); Value(ref r); value.TotalTokens = Int32(ref r, "'total_tokens'"); }
            else { value.AdditionalProperties = Extension(ref r, value.AdditionalProperties); }
        }

        if (seen != 7)
        {
            t_offShape = true;
        }

        return value;
    }

    private delegate T? ItemReader<T>(ref Utf8JsonReader r);

    /// <summary>
    /// The object a constructor made for a member (an empty choices list, an empty delta), handed out once: the first
    /// occurrence of the member fills it, a repeated one (last wins, as with the serializer) gets a new object.
    /// </summary>
    private static T? Take<T>(ref T? fresh) where T : class
    {
        var taken = fresh;
        fresh = null;
        return taken;
    }

    /// <summary>
    /// A list, or null; a null element is kept (the serializer keeps it too). <paramref name="into"/>: an empty list to
    /// fill instead of a new one (an answer's or chunk's own, made by its constructor), sized for the usual one item.
    /// </summary>
    private static List<T>? ReadList<T>(ref Utf8JsonReader r, ItemReader<T> item, string what, List<T>? into = null)
    {
        if (r.TokenType == JsonTokenType.Null)
        {
            return null;
        }

        Expect(ref r, JsonTokenType.StartArray, what, "an array");
        var list = into ?? new List<T>();
        if (into is not null && r.Read())
        {
            if (r.TokenType == JsonTokenType.EndArray)
            {
                return list;
            }

            list.Capacity = 1; // one choice is the rule; n > 1 grows it as List<T> does
            list.Add(item(ref r)!);
        }

        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
        {
            list.Add(item(ref r)!);
        }

        return list;
    }

    /// <summary>True on an object's start, false on null (a null object); anything else is refused.</summary>
    private static bool Object(ref Utf8JsonReader r, string what)
    {
        if (r.TokenType == JsonTokenType.Null)
        {
            return false;
        }

        Expect(ref r, JsonTokenType.StartObject, what, "an object");
        return true;
    }

    /// <summary>Moves to the next property name; false at the object's end.</summary>
    private static bool NextProperty(ref Utf8JsonReader r) => r.Read() && r.TokenType == JsonTokenType.PropertyName;

    /// <summary>Moves from a property name to its value.</summary>
    private static void Value(ref Utf8JsonReader r) => r.Read();

    private static void Skip(ref Utf8JsonReader r)
    {
        r.Read();
        r.Skip();
    }

    /// <summary>
    /// An unknown field, kept: the last of two same-named ones wins (the read is then off the writer's shape), and a name that is not valid UTF-8 is decoded with
    /// replacement characters rather than refused, both as the serializer's extension data does.
    /// </summary>
    private static Dictionary<string, JsonElement> Extension(ref Utf8JsonReader r, Dictionary<string, JsonElement>? extra)
    {
        var name = r.ValueIsEscaped || r.HasValueSequence ? UnescapedName(ref r) : Encoding.UTF8.GetString(r.ValueSpan);
        r.Read();
        extra ??= [];
        ref var slot = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(extra, name, out var twice);
        slot = JsonElement.ParseValue(ref r);
        t_offShape |= twice; // a client reading the bytes might take the first
        return extra;
    }

    /// <summary>
    /// An escaped (or split) name, unescaped; bytes that are not UTF-8 become replacement characters, as the serializer
    /// reads extension names. <see cref="Utf8JsonReader.GetString"/> refuses those, so the rare escaped name with bad bytes
    /// is unescaped here (the reader has already checked the escapes' syntax; an unpaired surrogate is refused).
    /// </summary>
    private static string UnescapedName(ref Utf8JsonReader r)
    {
        try
        {
            return r.GetString()!;
        }
        catch (InvalidOperationException)
        {
            var raw = r.HasValueSequence ? r.ValueSequence.ToArray() : r.ValueSpan.ToArray();
            var text = new StringBuilder(raw.Length);
            var run = 0;
            for (var i = 0; i < raw.Length; i++)
            {
                if (raw[i] != (byte)'\\')
                {
                    continue;
                }

                text.Append(Encoding.UTF8.GetString(raw, run, i - run));
                var escape = raw[++i];
                if (escape != (byte)'u')
                {
                    text.Append(escape switch { (byte)'b' => '\b', (byte)'f' => '\f', (byte)'n' => '\n', (byte)'r' => '\r', (byte)'t' => '\t', _ => (char)escape });
                }
                else
                {
                    var unit = (char)Convert.ToUInt16(Encoding.ASCII.GetString(raw, i + 1, 4), 16);
                    i += 4;
                    if (char.IsHighSurrogate(unit) && i + 6 < raw.Length && raw[i + 1] == '\\' && raw[i + 2] == 'u'
                        && char.IsLowSurrogate((char)Convert.ToUInt16(Encoding.ASCII.GetString(raw, i + 3, 4), 16)))
                    {
                        text.Append(unit).Append((char)Convert.ToUInt16(Encoding.ASCII.GetString(raw, i + 3, 4), 16));
                        i += 6;
                    }
                    else if (char.IsSurrogate(unit))
                    {
                        throw new JsonException("A field name holds an unpaired surrogate escape.");
                    }
                    else
                    {
                        text.Append(unit);
                    }
                }

                run = i + 1;
            }

            return text.Append(Encoding.UTF8.GetString(raw, run, raw.Length - run)).ToString();
        }
    }

    private static JsonElement? OptionalElement(ref Utf8JsonReader r) =>
        r.TokenType == JsonTokenType.Null ? null : JsonElement.ParseValue(ref r);

    private static string? String(ref Utf8JsonReader r, string what) => r.TokenType switch
    {
        JsonTokenType.String => r.GetString(),
        JsonTokenType.Null => null,
        _ => throw Mismatch(ref r, what, "a string"),
    };

    private static int Int32(ref Utf8JsonReader r, string what) =>
        r.TokenType == JsonTokenType.Number && r.TryGetInt32(out var value) ? value : throw Mismatch(ref r, what, "an integer");

    private static long Int64(ref Utf8JsonReader r, string what) =>
        r.TokenType == JsonTokenType.Number && r.TryGetInt64(out var value) ? value : throw Mismatch(ref r, what, "an integer");

    private static void Expect(ref Utf8JsonReader r, JsonTokenType token, string what, string kind)
    {
        if (r.TokenType != token)
        {
            throw Mismatch(ref r, what, kind);
        }
    }

    private static JsonException Mismatch(ref Utf8JsonReader r, string what, string kind) =>
        new($"{what} must be {kind}, not {Describe(r.TokenType, kind)} (at byte {r.TokenStartIndex}).");

    /// <param name="expected">What was expected: a number where a number was expected did not fit it.</param>
    private static string Describe(JsonTokenType token, string expected) => token switch
    {
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        JsonTokenType.String => "a string",
        JsonTokenType.Number => expected.Contains("integer", StringComparison.Ordinal) || expected.Contains("number", StringComparison.Ordinal) ? "a number out of range or with a fraction" : "a number",
        JsonTokenType.True or JsonTokenType.False => "a boolean",
        JsonTokenType.Null => "null",
        _ => token.ToString(),
    };

    // ---- writing: nulls left out (WhenWritingNull) unless the schema keeps them; unknown fields last ----

    public static void WriteResponse(Utf8JsonWriter w, ChatCompletionResponse value)
    {
        w.WriteStartObject();
        WriteHeader(w, value.Id, value.Object, value.Created, value.Model);
        WriteChoices(w, value.Choices, static (w, choice) =>
        {
            w.WriteNumber("index"u8, choice.Index);
            if (choice.Message is { } message)
            {
                w.WritePropertyName("message"u8);
                WriteAnswerMessage(w, message);
            }

            if (choice.FinishReason is { } finish)
            {
                w.WriteString("finish_reason"u8, finish);
            }

            WriteAlways(w, "logprobs"u8, choice.Logprobs);
            WriteExtra(w, choice.AdditionalProperties);
        });
        WriteTrailer(w, value.Usage, value.SystemFingerprint, value.AdditionalProperties);
    }

    public static void WriteChunk(Utf8JsonWriter w, ChatCompletionChunk value)
    {
        w.WriteStartObject();
        WriteHeader(w, value.Id, value.Object, value.Created, value.Model);
        WriteChoices(w, value.Choices, static (w, choice) =>
        {
            w.WriteNumber("index"u8, choice.Index);
            if (choice.Delta is { } delta)
            {
                w.WriteStartObject("delta"u8);
                WriteIfNotNull(w, "role"u8, delta.Role);
                WriteIfNotNull(w, "content"u8, delta.Content);
                WriteToolCalls(w, delta.ToolCalls);
                WriteIfNotNull(w, "refusal"u8, delta.Refusal);
                WriteExtraExcept(w, delta.AdditionalProperties);
                w.WriteEndObject();
            }

            w.WritePropertyName("finish_reason"u8);
            if (choice.FinishReason is { } finish)
            {
                w.WriteStringValue(finish);
            }
            else
            {
                w.WriteNullValue();
            }

            WriteAlways(w, "logprobs"u8, choice.Logprobs);
            WriteExtra(w, choice.AdditionalProperties);
        });
        WriteTrailer(w, value.Usage, value.SystemFingerprint, value.AdditionalProperties);
    }

    /// <summary>The <c>choices</c> array (left out when null): each choice an object written by <paramref name="body"/>, a null one as null.</summary>
    private static void WriteChoices<T>(Utf8JsonWriter w, List<T>? choices, Action<Utf8JsonWriter, T> body)
        where T : class
    {
        if (choices is null)
        {
            return;
        }

        w.WriteStartArray("choices"u8);
        foreach (var choice in choices)
        {
            if (choice is null)
            {
                w.WriteNullValue();
                continue;
            }

            w.WriteStartObject();
            body(w, choice);
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    /// <summary>
    /// An answer's message as the OpenAI schema has it: <c>content</c> and <c>refusal</c> always present, null when
    /// absent (a tool-call-only answer has <c>"content": null</c>); unknown fields of those names are not written twice.
    /// </summary>
    public static void WriteAnswerMessage(Utf8JsonWriter w, ChatCompletionMessage value)
    {
        w.WriteStartObject();
        w.WriteString("role"u8, value.Role);
        w.WritePropertyName("content"u8);
        if (value.Content is { } content)
        {
            WriteContent(w, content);
        }
        else
        {
            w.WriteNullValue();
        }

        WriteIfNotNull(w, "name"u8, value.Name);
        w.WritePropertyName("refusal"u8);
        if (value.Refusal is not null)
        {
            w.WriteStringValue(value.Refusal);
        }
        else
        {
            w.WriteNullValue();
        }

        if (value.ToolCalls is { Count: > 0 } calls)
        {
            WriteToolCalls(w, calls);
        }

        WriteIfNotNull(w, "tool_call_id"u8, value.ToolCallId);
        WriteExtraExcept(w, value.AdditionalProperties);
        w.WriteEndObject();
    }

    /// <summary>Unknown members, written last, except those named like the members always written before them.</summary>
    private static void WriteExtraExcept(Utf8JsonWriter w, Dictionary<string, JsonElement>? extra)
    {
        if (extra is null) // (not `?? []`: that allocated an empty dictionary per answer)
        {
            return;
        }

        foreach (var (name, element) in extra)
        {
            if (name is not ("content" or "refusal" or "role" or "tool_calls"))
            {
                w.WritePropertyName(name);
                element.WriteTo(w);
            }
        }
    }

    /// <summary><see cref="MessageContent"/>: its text as a string, else its parts as an array.</summary>
    public static void WriteContent(Utf8JsonWriter w, MessageContent value)
    {
        if (value.TextJson is { Length: > 0 } json)
        {
            w.WriteRawValue(json, skipInputValidation: true); // the request's own JSON string, checked when it was read
            return;
        }

        if (value.Text is not null)
        {
            w.WriteStringValue(value.Text);
            return;
        }

        w.WriteStartArray();
        foreach (var part in value.Parts ?? [])
        {
            if (part is null)
            {
                w.WriteNullValue();
                continue;
            }

            w.WriteStartObject();
            WriteIfNotNull(w, "type"u8, part.Type);
            WriteIfNotNull(w, "text"u8, part.Text);
            if (part.ImageUrl is { } image)
            {
                w.WriteStartObject("image_url"u8);
                WriteIfNotNull(w, "url"u8, image.Url);
                WriteIfNotNull(w, "detail"u8, image.Detail);
                w.WriteEndObject();
            }

            WriteExtra(w, part.AdditionalProperties);
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    internal static void WriteToolCalls(Utf8JsonWriter w, List<ToolCall>? calls)
    {
        if (calls is null)
        {
            return;
        }

        w.WriteStartArray("tool_calls"u8);
        foreach (var call in calls)
        {
            if (call is null)
            {
                w.WriteNullValue();
                continue;
            }

            w.WriteStartObject();
            if (call.Index is { } index)
            {
                w.WriteNumber("index"u8, index);
            }

            WriteIfNotNull(w, "id"u8, RequestJson.UpstreamToolId(call.Id)); // as it came, but in a request to OpenAI itself
            WriteIfNotNull(w, "type"u8, call.Type);
            if (call.Function is { } function)
            {
                w.WriteStartObject("function"u8);
                WriteIfNotNull(w, "name"u8, function.Name);
                if (function.ArgumentsJson is { Length: > 0 } json)
                {
                    w.WritePropertyName("arguments"u8);
                    w.WriteRawValue(json, skipInputValidation: true); // the request's own JSON string, checked when it was read
                }
                else
                {
                    WriteIfNotNull(w, "arguments"u8, function.Arguments);
                }

                w.WriteEndObject();
            }

            WriteExtra(w, call.AdditionalProperties);
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    private static void WriteHeader(Utf8JsonWriter w, string? id, string? type, long created, string? model)
    {
        WriteIfNotNull(w, "id"u8, id);
        WriteIfNotNull(w, "object"u8, type);
        w.WriteNumber("created"u8, created);
        WriteIfNotNull(w, "model"u8, model);
    }

    private static void WriteTrailer(Utf8JsonWriter w, TokenUsage? usage, string? fingerprint, Dictionary<string, JsonElement>? extra)
    {
        if (usage is not null)
        {
            w.WriteStartObject("usage"u8);
            w.WriteNumber("prompt_tokens"u8, usage.PromptTokens);
            w.WriteNumber("completion_tokens"u8, usage.CompletionTokens);
            w.WriteNumber("total_tokens"u8, usage.TotalTokens);
            WriteExtra(w, usage.AdditionalProperties);
            w.WriteEndObject();
        }

        WriteIfNotNull(w, "system_fingerprint"u8, fingerprint);
        WriteExtra(w, extra);
        w.WriteEndObject();
    }

    internal static void WriteIfNotNull(Utf8JsonWriter w, ReadOnlySpan<byte> name, string? value)
    {
        if (value is not null)
        {
            w.WriteString(name, value);
        }
    }

    private static void WriteAlways(Utf8JsonWriter w, ReadOnlySpan<byte> name, JsonElement? value)
    {
        w.WritePropertyName(name);
        if (value is { } element)
        {
            element.WriteTo(w);
        }
        else
        {
            w.WriteNullValue();
        }
    }

    internal static void WriteExtra(Utf8JsonWriter w, Dictionary<string, JsonElement>? extra)
    {
        if (extra is null)
        {
            return;
        }

        var dropAnthropicMembers = RequestJson.t_dropAnthropicMembers;
        foreach (var (name, element) in extra)
        {
            if (dropAnthropicMembers && Providers.Anthropic.AnthropicCodec.IsAnthropicOwn(name))
            {
                continue;
            }

            w.WritePropertyName(name);
            element.WriteTo(w);
        }
    }
}

/// <summary>Puts <see cref="AnswerJson"/> behind the serializer's API for <see cref="ChatCompletionResponse"/>.</summary>
internal sealed class ChatCompletionResponseConverter : JsonConverter<ChatCompletionResponse>
{
    public override ChatCompletionResponse Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        AnswerJson.ReadResponse(ref reader);

    public override void Write(Utf8JsonWriter writer, ChatCompletionResponse value, JsonSerializerOptions options) =>
        AnswerJson.WriteResponse(writer, value);
}

/// <summary>Puts <see cref="AnswerJson"/> behind the serializer's API for <see cref="ChatCompletionChunk"/>.</summary>
internal sealed class ChatCompletionChunkConverter : JsonConverter<ChatCompletionChunk>
{
    public override ChatCompletionChunk Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        AnswerJson.ReadChunk(ref reader);

    public override void Write(Utf8JsonWriter writer, ChatCompletionChunk value, JsonSerializerOptions options) =>
        AnswerJson.WriteChunk(writer, value);
}
