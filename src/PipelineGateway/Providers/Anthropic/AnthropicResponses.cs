using System.Buffers;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>Canonical answers in the Anthropic Messages format: a whole message (the stream's events: <see cref="AnthropicStreamWriter"/>).</summary>
internal static class AnthropicResponses
{
    /// <summary>A canonical answer as an Anthropic message.</summary>
    public static AnthropicMessage ToAnthropic(ChatCompletionResponse response)
    {
        var message = response.Choices.Count > 0 ? response.Choices[0].Message : null;
        if (message?.AdditionalProperties is not null && ServerTools.Content(message) is { } written
            && written.Deserialize(AnthropicJsonContext.Default.ListAnthropicContentBlock) is { } blocks)
        {
            // Claude used its server tools (or cited sources): its blocks as it wrote them, in their order.
            return Message(response, blocks);
        }

        var content = new List<AnthropicContentBlock>();
        if (message?.Content?.GetText() is { Length: > 0 } text)
        {
            content.Add(new AnthropicContentBlock { Type = "text", Text = text });
        }

        if (message?.Refusal is { Length: > 0 } refusal)
        {
            // The model declined (OpenAI's refusal): its words as text, and Claude's stop reason for a declined answer.
            content.Add(new AnthropicContentBlock { Type = "text", Text = refusal });
        }

        foreach (var call in message?.ToolCalls ?? [])
        {
            content.Add(new AnthropicContentBlock { Type = "tool_use", Id = call.Id, Name = call.Function?.Name, Input = ParseInput(call.Function?.Arguments) });
        }

        // Claude's thinking first, with its signatures (ThinkingBlocks); reasoning text without blocks (another
        // provider's reasoning model) has no signature, which Claude would refuse when it is given back: not written.
        content.InsertRange(0, ThinkingBlocks.Read(message?.AdditionalProperties).Select(static b => b.Type == ThinkingBlock.Redacted
            ? new AnthropicContentBlock { Type = b.Type, Data = b.Data }
            : new AnthropicContentBlock { Type = b.Type, Thinking = b.Thinking ?? string.Empty, Signature = b.Signature ?? string.Empty }));

        return Message(response, content);
    }

    private static AnthropicMessage Message(ChatCompletionResponse response, List<AnthropicContentBlock> content)
    {
        var kept = AnthropicStop.Of(response);
        var refused = response.Choices.Count > 0 && !string.IsNullOrEmpty(response.Choices[0].Message?.Refusal);
        return new()
        {
            Id = response.Id.StartsWith("msg_", StringComparison.Ordinal) ? response.Id : "msg_" + response.Id,
            Model = response.Model,
            Content = content,
            StopReason = kept?.Reason ?? (refused ? "refusal" : StopReason(response.FinishReason)),
            StopSequence = kept?.Sequence,
            Usage = Usage(response.Usage),
        };
    }

    /// <summary>
    /// A canonical usage in Anthropic's terms: <c>input_tokens</c> are the prompt's tokens neither read from nor written to
    /// the prompt cache, which Anthropic reports beside them (<see cref="Cost.PromptCacheTokens"/>).
    /// </summary>
    public static AnthropicUsage Usage(TokenUsage? usage)
    {
        if (usage is null)
        {
            return new AnthropicUsage();
        }

        var read = Cost.PromptCacheTokens.ReadOf(usage);
        var written = Cost.PromptCacheTokens.WrittenOf(usage);
        return new AnthropicUsage
        {
            InputTokens = Math.Max(0, usage.PromptTokens - read - written),
            OutputTokens = usage.CompletionTokens,
            CacheReadInputTokens = read > 0 ? read : null,
            CacheCreationInputTokens = written > 0 ? written : null,
            ServerToolUse = Cost.ServerToolUse.Of(usage),
        };
    }

    /// <summary>
    /// Claude's blocks as Claude streams them (each block's <c>content_block_start</c>, its deltas, its
    /// <c>content_block_stop</c>): a stored answer replayed to a <c>/v1/messages</c> stream, so blocks the canonical
    /// chunks have no form for (a server tool's call and results, citations) reach the caller as a live stream would
    /// have brought them. A block starts as Claude starts it — text and thinking empty, a call's input <c>{}</c> — and
    /// its content follows in one delta of each kind; a block streamed whole (a tool's result) starts as it is.
    /// </summary>
    public static IEnumerable<(string Name, byte[] Json)> BlockEvents(JsonElement blocks)
    {
        var index = 0;
        foreach (var block in blocks.EnumerateArray())
        {
            if (block.ValueKind != JsonValueKind.Object)
            {
                continue;
            }

            var type = block.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            string[] streamed = type switch
            {
                "text" => ["text", "citations"],
                ThinkingBlock.Plain => ["thinking", "signature"],
                "tool_use" or "server_tool_use" or "mcp_tool_use" => ["input"],
                _ => [],
            };
            yield return BlockEvent("content_block_start", index, w =>
            {
                w.WriteStartObject("content_block");
                foreach (var member in block.EnumerateObject())
                {
                    if (Array.IndexOf(streamed, member.Name) < 0)
                    {
                        member.WriteTo(w);
                    }
                }

                foreach (var name in streamed)
                {
                    if (name == "input")
                    {
                        w.WriteStartObject(name);
                        w.WriteEndObject();
                    }
                    else if (name != "citations")
                    {
                        w.WriteString(name, string.Empty);
                    }
                }

                w.WriteEndObject();
            });

            foreach (var (deltaType, member, value) in Deltas(block, type))
            {
                yield return BlockEvent("content_block_delta", index, w =>
                {
                    w.WriteStartObject("delta");
                    w.WriteString("type", deltaType);
                    w.WritePropertyName(member);
                    value.WriteTo(w);
                    w.WriteEndObject();
                });
            }

            yield return BlockEvent("content_block_stop", index, static _ => { });
            index++;
        }
    }

    /// <summary>A block's content as deltas: (delta type, its member, the value).</summary>
    private static IEnumerable<(string Type, string Member, JsonElement Value)> Deltas(JsonElement block, string? type)
    {
        switch (type)
        {
            case "text":
                if (block.TryGetProperty("citations", out var citations) && citations.ValueKind == JsonValueKind.Array)
                {
                    foreach (var citation in citations.EnumerateArray())
                    {
                        yield return ("citations_delta", "citation", citation);
                    }
                }

                if (block.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String && text.GetString()!.Length > 0)
                {
                    yield return ("text_delta", "text", text);
                }

                break;
            case ThinkingBlock.Plain:
                if (block.TryGetProperty("thinking", out var thinking) && thinking.ValueKind == JsonValueKind.String && thinking.GetString()!.Length > 0)
                {
                    yield return ("thinking_delta", "thinking", thinking);
                }

                if (block.TryGetProperty("signature", out var signature) && signature.ValueKind == JsonValueKind.String && signature.GetString()!.Length > 0)
                {
                    yield return ("signature_delta", "signature", signature);
                }

                break;
            case "tool_use" or "server_tool_use" or "mcp_tool_use":
                if (block.TryGetProperty("input", out var input) && input.ValueKind == JsonValueKind.Object && input.EnumerateObject().Any())
                {
                    // The input's JSON as a string, as Claude's input_json_delta carries it.
                    using var json = JsonDocument.Parse(JsonSerializer.SerializeToUtf8Bytes(input.GetRawText(), AnthropicJsonContext.Default.String));
                    yield return ("input_json_delta", "partial_json", json.RootElement.Clone());
                }

                break;
        }
    }

    private static (string Name, byte[] Json) BlockEvent(string name, int index, Action<Utf8JsonWriter> body)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            w.WriteString("type", name);
            w.WriteNumber("index", index);
            body(w);
            w.WriteEndObject();
        }

        return (name, buffer.WrittenSpan.ToArray());
    }

    /// <summary>OpenAI's finish reason in Anthropic's terms.</summary>
    public static string? StopReason(string? finish) => finish switch
    {
        null => null,
        FinishReasons.Length => "max_tokens",
        FinishReasons.ToolCalls => "tool_use",
        FinishReasons.ContentFilter => "refusal",
        _ => "end_turn",
    };

    /// <summary>A tool call's arguments as Anthropic's <c>input</c> object (an empty object when they are not one).</summary>
    public static JsonElement ParseInput(string? json)
    {
        try
        {
            using var doc = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "{}" : json);
            if (doc.RootElement.ValueKind == JsonValueKind.Object)
            {
                return doc.RootElement.Clone();
            }
        }
        catch (JsonException)
        {
            // Not JSON: an empty input rather than a failed answer.
        }

        using var empty = JsonDocument.Parse("{}");
        return empty.RootElement.Clone();
    }
}

/// <summary>
/// Canonical stream chunks as Anthropic stream events, in Anthropic's order: <c>message_start</c>, <c>ping</c>,
/// <c>content_block_start</c> / <c>content_block_delta</c> (text, then each tool call's input JSON) /
/// <c>content_block_stop</c>, <c>message_delta</c> (stop reason and usage), <c>message_stop</c>. One writer for the
/// gateway's <c>/v1/messages</c> route and the simulator.
/// </summary>
/// <param name="usage">The answer's usage when known before it streams (the simulator's).</param>
/// <param name="request">
/// The request, whose prompt is counted for <c>message_start</c> when the stream's opening does not say it: an
/// OpenAI-format upstream reports its usage only at the end, and clients (LangChain, the Vercel AI SDK) take the prompt's
/// tokens from <c>message_start</c> alone — they read 0.
/// </param>
internal sealed class AnthropicStreamWriter(TokenUsage? usage = null, ChatCompletionRequest? request = null)
{
    /// <summary>What <see cref="_open"/> says of a thinking block whose signature came: still open, but nothing more goes in it.</summary>
    private const string SignedThinking = "thinking (signed)";

    private static readonly byte[] Ping = """{"type":"ping"}"""u8.ToArray();
    private static readonly byte[] MessageStop = """{"type":"message_stop"}"""u8.ToArray();
    private readonly List<Held> _held = [];

    /// <summary>The OpenAI index of the call streaming in the open block (the first call), or null.</summary>
    private int? _liveTool;
    private bool _started;

    /// <summary>The type of the block open now (the last one started and not stopped), or null.</summary>
    private string? _open;
    private int _block = -1;
    private string? _finish;
    private bool _refused;
    private (string Reason, string? Sequence)? _stop;
    private AnthropicUsage _usage = AnthropicResponses.Usage(usage);

    /// <summary>The events for one chunk (the opening ones come with the first).</summary>
    public IEnumerable<(string Name, byte[] Json)> OnChunk(ChatCompletionChunk chunk)
    {
        if (!_started)
        {
            _started = true;
            var id = chunk.Id.StartsWith("msg_", StringComparison.Ordinal) ? chunk.Id : "msg_" + chunk.Id;
            // Anthropic reports the prompt's tokens at the start; a canonical stream knows them only at its end, so they
            // are given here as Claude's own message_start said them (an Anthropic deployment), else when known (the
            // simulator), else as the gateway counts the prompt — and always repeated, exact, in message_delta.
            yield return Event("message_start", new AnthropicStreamEvent { Type = "message_start", Message = new AnthropicMessage { Id = id, Model = chunk.Model, Usage = chunk.AnthropicOpening ?? Opening(_usage, request) } });
            yield return ("ping", Ping);
        }

        if (chunk.Usage is { } usage)
        {
            _usage = AnthropicResponses.Usage(usage);
        }

        _stop = chunk.AnthropicStop ?? _stop;
        if (chunk.AnthropicEvent is { } asCame)
        {
            // Claude's own event (an Anthropic deployment streaming to /v1/messages): written as it came, its index
            // Claude's — every content event of such a stream comes this way, so no block is opened here.
            foreach (var choice in chunk.Choices)
            {
                _finish = choice.FinishReason ?? _finish;
            }

            yield return asCame;
            yield break;
        }

        foreach (var choice in chunk.Choices)
        {
            if (choice.Delta.AdditionalProperties is { } extra)
            {
                foreach (var piece in ThinkingBlocks.Read(extra))
                {
                    foreach (var e in Thinking(piece))
                    {
                        yield return e;
                    }
                }
            }

            // The model's refusal (OpenAI's) is text to a Claude caller, and the answer stops as Claude's declined ones do.
            _refused |= !string.IsNullOrEmpty(choice.Delta.Refusal);
            if (choice.Delta.Content + choice.Delta.Refusal is { Length: > 0 } text)
            {
                if (_liveTool is not null)
                {
                    Hold(null).Text.Append(text); // after a call began: its block may not close before it is whole
                }
                else
                {
                    if (_open != "text")
                    {
                        foreach (var e in Open(new AnthropicContentBlock { Type = "text", Text = string.Empty }))
                        {
                            yield return e;
                        }
                    }

                    yield return Event("content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = _block, Delta = new AnthropicDelta { Type = "text_delta", Text = text } });
                }
            }

            foreach (var call in choice.Delta.ToolCalls ?? [])
            {
                // Claude's blocks come one after another, each stopped once; OpenAI's calls may interleave (each delta
                // names its call). So the first call streams as it comes, in a block that stays open to the end, and
                // every later one is held and written whole after it — a delta never reaches a stopped block.
                var toolIndex = call.Index ?? 0;
                if (_liveTool is null && _held.Count == 0)
                {
                    foreach (var e in Open(new AnthropicContentBlock { Type = "tool_use", Id = call.Id, Name = call.Function?.Name, Input = AnthropicResponses.ParseInput("{}") }))
                    {
                        yield return e;
                    }

                    _liveTool = toolIndex;
                }

                if (toolIndex != _liveTool)
                {
                    var held = Hold(toolIndex);
                    held.Id ??= call.Id;
                    held.Name ??= call.Function?.Name;
                    held.Text.Append(call.Function?.Arguments);
                }
                else if (call.Function?.Arguments is { Length: > 0 } args)
                {
                    yield return Event("content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = _block, Delta = new AnthropicDelta { Type = "input_json_delta", PartialJson = args } });
                }
            }

            _finish = choice.FinishReason ?? _finish;
        }
    }

    /// <summary>Closes the open block, if any, and starts <paramref name="block"/> as the next one.</summary>
    private IEnumerable<(string Name, byte[] Json)> Open(AnthropicContentBlock block)
    {
        if (_open is not null)
        {
            yield return Stop(_block);
        }

        _block++;
        _open = block.Type;
        yield return Event("content_block_start", new AnthropicStreamEvent { Type = "content_block_start", Index = _block, ContentBlock = block });
    }

    /// <summary>
    /// A piece of Claude's thinking (<see cref="ThinkingBlocks"/>) as Claude streams it: a thinking block opened at its
    /// first piece, <c>thinking_delta</c>s, its <c>signature_delta</c>; a redacted block whole.
    /// </summary>
    private IEnumerable<(string Name, byte[] Json)> Thinking(ThinkingBlock piece)
    {
        if (piece.Type == ThinkingBlock.Redacted)
        {
            foreach (var e in Open(new AnthropicContentBlock { Type = piece.Type, Data = piece.Data }))
            {
                yield return e;
            }

            yield return Stop(_block);
            _open = null;
            yield break;
        }

        if (_open != ThinkingBlock.Plain)
        {
            foreach (var e in Open(new AnthropicContentBlock { Type = ThinkingBlock.Plain, Thinking = string.Empty, Signature = string.Empty }))
            {
                yield return e;
            }
        }

        if (piece.Thinking is { Length: > 0 } text)
        {
            yield return Event("content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = _block, Delta = new AnthropicDelta { Type = "thinking_delta", Thinking = text } });
        }

        if (piece.Signature is { Length: > 0 } signature)
        {
            yield return Event("content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = _block, Delta = new AnthropicDelta { Type = "signature_delta", Signature = signature } });
            _open = SignedThinking; // the signature ends the block: thinking after it is another block (a replayed answer's next)
        }
    }

    /// <summary>
    /// message_start's usage: the prompt's (and the cache's) tokens when known — else the prompt at about four characters
    /// a token (no tokenizer loaded for it: 42 MB live, ~300 ms on the stream that first needed it) — one output token so
    /// far; message_delta carries the upstream's exact count.
    /// </summary>
    private static AnthropicUsage Opening(AnthropicUsage known, ChatCompletionRequest? request) => new()
    {
        InputTokens = known.InputTokens > 0 || request is null ? known.InputTokens : Admission.TokenCounter.ApproximatePrompt(request),
        OutputTokens = 1,
        CacheReadInputTokens = known.CacheReadInputTokens,
        CacheCreationInputTokens = known.CacheCreationInputTokens,
    };

    /// <summary>
    /// What came after the streamed call began, held in its order: the text (<paramref name="toolIndex"/> null: the
    /// last held piece when it is text) or the call of that index.
    /// </summary>
    private Held Hold(int? toolIndex)
    {
        var found = toolIndex is null
            ? (_held.Count > 0 && _held[^1].ToolIndex is null ? _held[^1] : null)
            : _held.Find(h => h.ToolIndex == toolIndex);
        if (found is null)
        {
            _held.Add(found = new Held(toolIndex));
        }

        return found;
    }

    /// <summary>A held piece: text, or a call (its id, name and arguments so far).</summary>
    private sealed class Held(int? toolIndex)
    {
        public int? ToolIndex { get; } = toolIndex;

        public string? Id { get; set; }

        public string? Name { get; set; }

        public StringBuilder Text { get; } = new();
    }

    /// <summary>The closing events, once the stream ended normally.</summary>
    public IEnumerable<(string Name, byte[] Json)> Finish()
    {
        foreach (var held in _held)
        {
            var block = held.ToolIndex is null
                ? new AnthropicContentBlock { Type = "text", Text = string.Empty }
                : new AnthropicContentBlock { Type = "tool_use", Id = held.Id, Name = held.Name, Input = AnthropicResponses.ParseInput("{}") };
            foreach (var e in Open(block))
            {
                yield return e;
            }

            if (held.Text.Length > 0)
            {
                var delta = held.ToolIndex is null
                    ? new AnthropicDelta { Type = "text_delta", Text = held.Text.ToString() }
                    : new AnthropicDelta { Type = "input_json_delta", PartialJson = held.Text.ToString() };
                yield return Event("content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = _block, Delta = delta });
            }
        }

        _held.Clear();
        if (_open is not null)
        {
            yield return Stop(_block);
            _open = null;
        }

        yield return Event("message_delta", new AnthropicStreamEvent { Type = "message_delta", Delta = new AnthropicDelta { StopReason = _stop?.Reason ?? (_refused ? "refusal" : AnthropicResponses.StopReason(_finish)), StopSequence = _stop?.Sequence }, Usage = _usage });
        yield return ("message_stop", MessageStop);
    }

    /// <summary>An error event (the stream failed after it started).</summary>
    public static (string Name, byte[] Json) Error(string type, string message) =>
        Event("error", new AnthropicStreamEvent { Type = "error", Error = new AnthropicError { Type = type, Message = message } });

    /// <summary>
    /// One event as SSE (<c>event: NAME</c>, <c>data: JSON</c>, a blank line) into a response pipe, not flushed (the
    /// gateway's <c>/v1/messages</c> flushes once per burst of the upstream's chunks, as the chat route does; each event
    /// used to be three stream writes, three arrays and four flushes), its parts next to each other (<see cref="Serialization.SseFrame"/>).
    /// </summary>
    public static void Write(IBufferWriter<byte> pipe, (string Name, byte[] Json) e)
    {
        // Event names are the protocol's own few words: encoded on the stack.
        Span<byte> buffer = stackalloc byte[64];
        ReadOnlySpan<byte> name = Encoding.UTF8.TryGetBytes(e.Name, buffer, out var length) ? buffer[..length] : Encoding.UTF8.GetBytes(e.Name);
        Serialization.SseFrame.Write(pipe, "event: "u8, name, "\ndata: "u8, e.Json, "\n\n"u8);
    }

    private static (string, byte[]) Stop(int index) =>
        ("content_block_stop", Encoding.UTF8.GetBytes($$"""{"type":"content_block_stop","index":{{index}}}"""));

    private static (string, byte[]) Event(string name, AnthropicStreamEvent e) =>
        (name, JsonSerializer.SerializeToUtf8Bytes(e, Wire.AnthropicStreamEvent));

    /// <summary>The events' JSON as the answers' is escaped on the wire (<see cref="Serialization.WireJson"/>).</summary>
    private static readonly AnthropicJsonContext Wire = new(new JsonSerializerOptions(AnthropicJsonContext.Default.Options) { Encoder = Serialization.WireJson.Encoder });
}
