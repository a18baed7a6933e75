using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// Canonical answers as OpenAI Responses API objects: a whole <c>response</c> (its <c>output</c> items — the answer's
/// message, each function call — and usage), and a stream's events in the API's order, each with its
/// <c>sequence_number</c>: <c>response.created</c>, <c>response.in_progress</c>, per item
/// <c>response.output_item.added</c> … <c>response.output_item.done</c> (text as <c>response.content_part.added</c>,
/// <c>response.output_text.delta</c>s, <c>….done</c>; a call's arguments as <c>response.function_call_arguments.delta</c>s),
/// then <c>response.completed</c> with the whole response.
/// </summary>
internal sealed class ResponsesWriter(ChatCompletionRequest request, string id, long createdAt, bool store = false, string? previousResponseId = null, bool background = false, string? conversationId = null) : INamedEventWriter
{
    private static readonly JsonWriterOptions Options = new() { Encoder = Serialization.WireJson.Encoder };

    private readonly List<Item> _items = [];
    private readonly Dictionary<int, Item> _calls = [];
    private Item? _text;
    private Item? _reasoning;
    private bool _summaryOpen;
    private int _sequence;
    private string? _finish;
    private TokenUsage? _usage;
    private string _model = request.Model;
    private (string Code, string Message)? _error;

    /// <summary>The sequence number of the last event made (-1: none yet).</summary>
    public int LastSequence => _sequence - 1;

    /// <summary>The response's id.</summary>
    public string Id => id;

    /// <summary>
    /// Called with the finished response (completed or incomplete) before its last event is written: what keeps it
    /// (<see cref="ResponsesStore"/>) has it before the caller can refer to it.
    /// </summary>
    /// <remarks>Its result: whether a response to be stored was kept (false: too large for the memory bound, or the
    /// shared store could not be written) — the response then says <c>store: false</c> from its last event or body on.</remarks>
    public Func<ResponsesWriter, byte[], Task<bool>>? Finished { get; init; }

    private Task<bool>? _finishing;

    /// <summary>A response to be stored that was not kept: it says so (<c>store: false</c>).</summary>
    private bool _notKept;

    /// <summary>The response was to be stored and was not kept (known once <see cref="FinishedAsync"/> is done).</summary>
    public bool NotKept => _notKept;

    /// <summary>What <see cref="Finished"/> does, done (before the response's last event or its body goes out).</summary>
    public async ValueTask FinishedAsync()
    {
        if (_finishing is { } task && !await task.ConfigureAwait(false))
        {
            _notKept = true;
        }
    }

    /// <summary>The finished response again, once <see cref="FinishedAsync"/> said whether it was kept (its <c>store</c>).</summary>
    public byte[] Final() => ResponseJson();

    /// <summary>The finished response object's JSON.</summary>
    private byte[] ResponseJson() => Json(w => WriteResponse(w, Status()));

    /// <summary>The finished output items, each with its id and JSON (as it can be given back as an input item).</summary>
    public List<(string Id, byte[] Json)> OutputItems() => [.. _items.Select(static item => (item.Id, Json(w => WriteItem(w, item, "completed"))))];

    /// <summary>One output item: the model's reasoning, the answer's message, or a function call.</summary>
    private sealed class Item(string id, bool call)
    {
        public string Id { get; } = id;

        public bool IsCall { get; } = call;

        /// <summary>A reasoning item's thinking blocks (its <see cref="Text"/> is the summary); null for the others.</summary>
        public ThinkingBlocks.Collector? Thinking { get; init; }

        public StringBuilder Text { get; } = new();

        /// <summary>A message's refusal (the model declined: the chat format's <c>refusal</c>), its own content part; null when none.</summary>
        public StringBuilder? Refusal { get; set; }

        /// <summary>A message's content parts' places, in the order they opened (-1: not open): its text's and its refusal's.</summary>
        public int TextPart { get; set; } = -1;

        public int RefusalPart { get; set; } = -1;

        public int Parts { get; set; }

        /// <summary>A message's tokens' log probabilities (the chat format's <c>logprobs.content</c> entries), when the answer has them.</summary>
        public List<JsonElement>? Logprobs { get; set; }

        public string? CallId { get; set; }

        public string? Name { get; set; }

        public bool Done { get; set; }
    }

    /// <summary>A whole answer as a response object.</summary>
    public byte[] Whole(ChatCompletionResponse response)
    {
        _model = response.Model is { Length: > 0 } m ? m : _model;
        var message = response.Choices.Count > 0 ? response.Choices[0].Message : null;
        var blocks = ThinkingBlocks.Read(message?.AdditionalProperties);
        var thought = ResponsesReasoning.Text(message?.AdditionalProperties);
        if (blocks.Count > 0 || !string.IsNullOrEmpty(thought))
        {
            // The model's thinking first, as the Responses API orders it (and as the next turn must give it back).
            var reasoning = new Item(ItemId("rs"), call: false) { Thinking = new ThinkingBlocks.Collector(), Done = true };
            reasoning.Thinking.Add(blocks);
            reasoning.Text.Append(thought ?? string.Concat(blocks.Select(static b => b.Thinking)));
            _items.Add(reasoning);
        }

        var answer = message?.Content?.GetText();
        if (!string.IsNullOrEmpty(answer) || !string.IsNullOrEmpty(message?.Refusal))
        {
            var item = new Item(ItemId("msg"), call: false) { Done = true, Logprobs = Entries(response.Choices[0].Logprobs) };
            if (!string.IsNullOrEmpty(answer))
            {
                item.TextPart = item.Parts++;
                item.Text.Append(answer);
            }

            if (!string.IsNullOrEmpty(message!.Refusal))
            {
                item.RefusalPart = item.Parts++;
                item.Refusal = new StringBuilder(message.Refusal);
            }

            _items.Add(item);
        }

        foreach (var call in message?.ToolCalls ?? [])
        {
            var item = new Item(ItemId("fc"), call: true) { CallId = call.Id, Name = call.Function?.Name, Done = true };
            item.Text.Append(call.Function?.Arguments);
            _items.Add(item);
        }

        _finish = response.FinishReason;
        _usage = response.Usage;
        var json = ResponseJson(); // incomplete when cut, as the stream's last event says
        _finishing = Finished?.Invoke(this, json);
        return json;
    }

    /// <summary>The opening events (the first chunk is here); a background response's <c>response.created</c> went out when it was queued (<see cref="Queued"/>).</summary>
    public IEnumerable<(string Name, byte[] Json)> Start()
    {
        if (!background)
        {
            yield return Event("response.created", w => WriteMember(w, "response", "in_progress"));
        }

        yield return Event("response.in_progress", w => WriteMember(w, "response", "in_progress"));
    }

    /// <summary>A background response's first events, as it is accepted: <c>response.created</c> and <c>response.queued</c>.</summary>
    public IEnumerable<(string Name, byte[] Json)> Queued()
    {
        yield return Event("response.created", w => WriteMember(w, "response", "queued"));
        yield return Event("response.queued", w => WriteMember(w, "response", "queued"));
    }

    /// <summary>
    /// The response object as it stands in <paramref name="status"/> — <c>queued</c>, <c>in_progress</c>,
    /// <c>cancelled</c> — for a background response's store (its output only once it is done).
    /// </summary>
    public byte[] Snapshot(string status) => Json(w => WriteResponse(w, status));

    /// <summary>
    /// A background response that failed: the response with its <c>error</c> (the gateway's error code and message, as
    /// its error answer would say them), and the <c>response.failed</c> event carrying it.
    /// </summary>
    public (byte[] Response, (string Name, byte[] Json) Event) Failed(Exception error)
    {
        var (_, body, _) = OpenAIErrors.Map(error);
        _error = (body.Code ?? body.Type, body.Message);
        return (Json(w => WriteResponse(w, "failed")), Event("response.failed", w => WriteMember(w, "response", "failed")));
    }

    /// <summary>The events for one chunk.</summary>
    public IEnumerable<(string Name, byte[] Json)> OnChunk(ChatCompletionChunk chunk)
    {
        _model = chunk.Model is { Length: > 0 } m ? m : _model;
        _usage = chunk.Usage ?? _usage;
        foreach (var choice in chunk.Choices)
        {
            if (choice.Index != 0)
            {
                continue;
            }

            _finish = choice.FinishReason ?? _finish;
            foreach (var e in OnThinking(choice.Delta.AdditionalProperties))
            {
                yield return e;
            }

            if (choice.Delta.Content is { Length: > 0 } text)
            {
                foreach (var e in OpenMessage())
                {
                    yield return e;
                }

                var open = _text!;
                if (open.TextPart < 0)
                {
                    open.TextPart = open.Parts++;
                    yield return Event("response.content_part.added", w => { WriteWhere(w, open, at: open.TextPart); w.WritePropertyName("part"); WritePart(w, string.Empty); });
                }

                open.Text.Append(text);
                var entries = Entries(choice.Logprobs);
                if (entries is not null)
                {
                    (open.Logprobs ??= []).AddRange(entries);
                }

                yield return Event("response.output_text.delta", w => { WriteWhere(w, open, at: open.TextPart); w.WriteString("delta", text); WriteLogprobs(w, entries); });
            }

            if (choice.Delta.Refusal is { Length: > 0 } refusal)
            {
                foreach (var e in OpenMessage())
                {
                    yield return e;
                }

                var open = _text!;
                if (open.Refusal is null)
                {
                    open.Refusal = new StringBuilder();
                    open.RefusalPart = open.Parts++;
                    yield return Event("response.content_part.added", w => { WriteWhere(w, open, at: open.RefusalPart); w.WritePropertyName("part"); WriteRefusal(w, string.Empty); });
                }

                open.Refusal.Append(refusal);
                yield return Event("response.refusal.delta", w => { WriteWhere(w, open, at: open.RefusalPart); w.WriteString("delta", refusal); });
            }

            foreach (var call in choice.Delta.ToolCalls ?? [])
            {
                var k = call.Index ?? 0;
                if (!_calls.TryGetValue(k, out var item))
                {
                    foreach (var e in CloseReasoning().Concat(CloseText()))
                    {
                        yield return e;
                    }

                    item = _calls[k] = new Item(ItemId("fc"), call: true) { CallId = call.Id, Name = call.Function?.Name };
                    _items.Add(item);
                    var index = _items.Count - 1;
                    yield return Event("response.output_item.added", w => { w.WriteNumber("output_index", index); w.WritePropertyName("item"); WriteItem(w, item, "in_progress"); });
                }

                if (call.Function?.Arguments is { Length: > 0 } args)
                {
                    item.Text.Append(args);
                    var index = _items.IndexOf(item);
                    yield return Event("response.function_call_arguments.delta", w => { w.WriteString("item_id", item.Id); w.WriteNumber("output_index", index); w.WriteString("delta", args); });
                }
            }
        }
    }

    /// <summary>
    /// The answer's message item opened (the reasoning before it closed), when none is open — also after one was done
    /// (text after a function call began: a second message, as no event may follow an item's <c>output_item.done</c>).
    /// </summary>
    private IEnumerable<(string Name, byte[] Json)> OpenMessage()
    {
        if (_text is { Done: false })
        {
            yield break;
        }

        foreach (var e in CloseReasoning())
        {
            yield return e;
        }

        var opened = _text = new Item(ItemId("msg"), call: false);
        _items.Add(opened);
        var index = _items.Count - 1;
        yield return Event("response.output_item.added", w => { w.WriteNumber("output_index", index); w.WritePropertyName("item"); WriteItem(w, opened, "in_progress"); });
    }

    /// <summary>The closing events: every open item done, then <c>response.completed</c> (or <c>response.incomplete</c>).</summary>
    public IEnumerable<(string Name, byte[] Json)> Finish()
    {
        foreach (var e in CloseReasoning().Concat(CloseText()))
        {
            yield return e;
        }

        foreach (var item in _items.Where(static i => i.IsCall && !i.Done))
        {
            item.Done = true;
            var index = _items.IndexOf(item);
            yield return Event("response.function_call_arguments.done", w => { w.WriteString("item_id", item.Id); w.WriteNumber("output_index", index); w.WriteString("arguments", item.Text.ToString()); });
            yield return Event("response.output_item.done", w => { w.WriteNumber("output_index", index); w.WritePropertyName("item"); WriteItem(w, item, "completed"); });
        }

        _finishing = Finished?.Invoke(this, ResponseJson());
    }

    /// <summary>
    /// The last event, <c>response.completed</c> (or <c>response.incomplete</c>), written once the response was kept
    /// (<see cref="FinishedAsync"/>): its <c>store</c> says whether it was.
    /// </summary>
    public IEnumerable<(string Name, byte[] Json)> Last()
    {
        var status = Status();
        yield return Event(status == "completed" ? "response.completed" : "response.incomplete", w => WriteMember(w, "response", status));
    }

    /// <summary>An <c>error</c> event (the stream failed after it started), with the OpenAI error's code.</summary>
    public (string Name, byte[] Json) Error(int status, Exception error, string message)
    {
        var (_, body, _) = OpenAIErrors.Map(error);
        return Event("error", w => { w.WriteString("code", body.Code ?? body.Type); w.WriteString("message", message); w.WriteNull("param"); });
    }

    /// <summary>
    /// A delta's thinking: the reasoning item opened at the first piece (its summary text streamed as
    /// <c>response.reasoning_summary_text.delta</c>s), its blocks collected for the item's <c>encrypted_content</c>.
    /// </summary>
    private IEnumerable<(string Name, byte[] Json)> OnThinking(Dictionary<string, JsonElement>? extra)
    {
        var pieces = ThinkingBlocks.Read(extra);
        var text = ResponsesReasoning.Text(extra);
        if (pieces.Count == 0 && string.IsNullOrEmpty(text))
        {
            yield break;
        }

        if (_reasoning is null)
        {
            var opened = _reasoning = new Item(ItemId("rs"), call: false) { Thinking = new ThinkingBlocks.Collector() };
            _items.Add(opened);
            var index = _items.Count - 1;
            yield return Event("response.output_item.added", w => { w.WriteNumber("output_index", index); w.WritePropertyName("item"); WriteItem(w, opened, "in_progress"); });
        }

        var item = _reasoning;
        if (item.Done)
        {
            yield break; // thinking after the answer began: Claude does not send it; nothing to put it in
        }

        item.Thinking!.Add(pieces);
        if (!string.IsNullOrEmpty(text))
        {
            if (!_summaryOpen)
            {
                _summaryOpen = true;
                yield return Event("response.reasoning_summary_part.added", w => { WriteWhere(w, item, "summary_index"); w.WritePropertyName("part"); WriteSummary(w, string.Empty); });
            }

            item.Text.Append(text);
            yield return Event("response.reasoning_summary_text.delta", w => { WriteWhere(w, item, "summary_index"); w.WriteString("delta", text); });
        }
    }

    private IEnumerable<(string Name, byte[] Json)> CloseReasoning()
    {
        if (_reasoning is not { Done: false } item)
        {
            yield break;
        }

        item.Done = true;
        var index = _items.IndexOf(item);
        if (_summaryOpen)
        {
            var all = item.Text.ToString();
            yield return Event("response.reasoning_summary_text.done", w => { WriteWhere(w, item, "summary_index"); w.WriteString("text", all); });
            yield return Event("response.reasoning_summary_part.done", w => { WriteWhere(w, item, "summary_index"); w.WritePropertyName("part"); WriteSummary(w, all); });
        }

        yield return Event("response.output_item.done", w => { w.WriteNumber("output_index", index); w.WritePropertyName("item"); WriteItem(w, item, "completed"); });
    }

    private static void WriteSummary(Utf8JsonWriter w, string text)
    {
        w.WriteStartObject();
        w.WriteString("type", "summary_text");
        w.WriteString("text", text);
        w.WriteEndObject();
    }

    private IEnumerable<(string Name, byte[] Json)> CloseText()
    {
        if (_text is not { Done: false } text)
        {
            yield break;
        }

        text.Done = true;
        var index = _items.IndexOf(text);
        for (var part = 0; part < text.Parts; part++)
        {
            var at = part;
            if (part == text.TextPart)
            {
                var all = text.Text.ToString();
                yield return Event("response.output_text.done", w => { WriteWhere(w, text, at: at); w.WriteString("text", all); WriteLogprobs(w, text.Logprobs); });
                yield return Event("response.content_part.done", w => { WriteWhere(w, text, at: at); w.WritePropertyName("part"); WritePart(w, all, text.Logprobs); });
            }
            else
            {
                var all = text.Refusal!.ToString();
                yield return Event("response.refusal.done", w => { WriteWhere(w, text, at: at); w.WriteString("refusal", all); });
                yield return Event("response.content_part.done", w => { WriteWhere(w, text, at: at); w.WritePropertyName("part"); WriteRefusal(w, all); });
            }
        }

        yield return Event("response.output_item.done", w => { w.WriteNumber("output_index", index); w.WritePropertyName("item"); WriteItem(w, text, "completed"); });
    }

    /// <summary>completed, or incomplete when the answer was cut (the token limit, a content filter).</summary>
    private string Status() => _finish is FinishReasons.Length or FinishReasons.ContentFilter ? "incomplete" : "completed";

    /// <summary>Where an event's part is: its item, the item's place in the output, the part's place in the item.</summary>
    private void WriteWhere(Utf8JsonWriter w, Item item, string partIndex = "content_index", int at = 0)
    {
        w.WriteString("item_id", item.Id);
        w.WriteNumber("output_index", _items.IndexOf(item));
        w.WriteNumber(partIndex, at);
    }

    private static void WriteRefusal(Utf8JsonWriter w, string refusal)
    {
        w.WriteStartObject();
        w.WriteString("type", "refusal");
        w.WriteString("refusal", refusal);
        w.WriteEndObject();
    }

    private static void WritePart(Utf8JsonWriter w, string text, List<JsonElement>? logprobs = null)
    {
        w.WriteStartObject();
        w.WriteString("type", "output_text");
        w.WriteString("text", text);
        w.WriteStartArray("annotations");
        w.WriteEndArray();
        if (logprobs is not null)
        {
            WriteLogprobs(w, logprobs);
        }

        w.WriteEndObject();
    }

    /// <summary>A part's or delta's <c>logprobs</c>: the tokens' entries, as the chat format has them (token, logprob, bytes, top_logprobs).</summary>
    private static void WriteLogprobs(Utf8JsonWriter w, List<JsonElement>? entries)
    {
        w.WriteStartArray("logprobs");
        foreach (var entry in entries ?? [])
        {
            entry.WriteTo(w);
        }

        w.WriteEndArray();
    }

    /// <summary>A choice's <c>logprobs.content</c> entries (null: none).</summary>
    private static List<JsonElement>? Entries(JsonElement? logprobs) =>
        logprobs is { ValueKind: JsonValueKind.Object } l && l.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.Array
            ? [.. content.EnumerateArray().Select(static e => e.Clone())]
            : null;

    private static void WriteItem(Utf8JsonWriter w, Item item, string status)
    {
        w.WriteStartObject();
        if (item.Thinking is { } thinking)
        {
            w.WriteString("type", "reasoning");
            w.WriteString("id", item.Id);
            w.WriteStartArray("summary");
            if (status == "completed" && item.Text.Length > 0)
            {
                WriteSummary(w, item.Text.ToString());
            }

            w.WriteEndArray();
            if (status == "completed" && ResponsesReasoning.Encode(thinking.Blocks()) is { } sealedBlocks)
            {
                w.WriteString("encrypted_content", sealedBlocks);
            }

            w.WriteString("status", status);
        }
        else if (item.IsCall)
        {
            w.WriteString("type", "function_call");
            w.WriteString("id", item.Id);
            w.WriteString("call_id", item.CallId);
            w.WriteString("name", item.Name);
            w.WriteString("arguments", status == "completed" ? item.Text.ToString() : string.Empty);
            w.WriteString("status", status);
        }
        else
        {
            w.WriteString("type", "message");
            w.WriteString("id", item.Id);
            w.WriteString("status", status);
            w.WriteString("role", "assistant");
            w.WriteStartArray("content");
            for (var part = 0; status == "completed" && part < item.Parts; part++)
            {
                if (part == item.TextPart)
                {
                    WritePart(w, item.Text.ToString(), item.Logprobs);
                }
                else
                {
                    WriteRefusal(w, item.Refusal!.ToString());
                }
            }

            w.WriteEndArray();
        }

        w.WriteEndObject();
    }

    private void WriteMember(Utf8JsonWriter w, string name, string status)
    {
        w.WritePropertyName(name);
        WriteResponse(w, status);
    }

    /// <summary>The response object, with what it was asked for (as OpenAI echoes it) and, once done, its output and usage.</summary>
    private void WriteResponse(Utf8JsonWriter w, string status)
    {
        var done = status is "completed" or "incomplete"; // the output and usage; a failed or cancelled response has none
        w.WriteStartObject();
        w.WriteString("id", id);
        w.WriteString("object", "response");
        w.WriteNumber("created_at", createdAt);
        w.WriteString("status", status);
        w.WriteBoolean("background", background);
        if (status == "failed" && _error is var (code, message))
        {
            w.WriteStartObject("error");
            w.WriteString("code", code);
            w.WriteString("message", message);
            w.WriteEndObject();
        }
        else
        {
            w.WriteNull("error");
        }

        if (status == "incomplete")
        {
            w.WriteStartObject("incomplete_details");
            w.WriteString("reason", _finish == FinishReasons.ContentFilter ? "content_filter" : "max_output_tokens");
            w.WriteEndObject();
        }
        else
        {
            w.WriteNull("incomplete_details");
        }

        var instructions = request.Messages.Count > 0 && request.Messages[0].Role == ChatRoles.System ? request.Messages[0].Content?.GetText() : null;
        WriteStringOrNull(w, "instructions", instructions);
        if (request.RequestedCompletionTokens is { } max)
        {
            w.WriteNumber("max_output_tokens", max);
        }
        else
        {
            w.WriteNull("max_output_tokens");
        }

        w.WriteString("model", _model);
        w.WriteStartArray("output");
        if (done)
        {
            foreach (var item in _items)
            {
                WriteItem(w, item, "completed");
            }
        }

        w.WriteEndArray();
        w.WriteBoolean("parallel_tool_calls", !(request.AdditionalProperties?.TryGetValue("parallel_tool_calls", out var p) == true && p.ValueKind == JsonValueKind.False));
        WriteStringOrNull(w, "previous_response_id", previousResponseId);
        if (conversationId is not null)
        {
            w.WriteStartObject("conversation");
            w.WriteString("id", conversationId);
            w.WriteEndObject();
        }
        else
        {
            w.WriteNull("conversation");
        }

        w.WriteStartObject("reasoning");
        if (request.AdditionalProperties?.TryGetValue("reasoning_effort", out var effort) == true)
        {
            w.WritePropertyName("effort");
            effort.WriteTo(w);
        }
        else
        {
            w.WriteNull("effort");
        }

        w.WriteNull("summary");
        w.WriteEndObject();
        w.WriteBoolean("store", store && !_notKept);
        WriteNumberOrNull(w, "temperature", request.Temperature);
        w.WriteStartObject("text");
        w.WriteStartObject("format");
        w.WriteString("type", request.ResponseFormat is { ValueKind: JsonValueKind.Object } f && f.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : "text");
        w.WriteEndObject();
        w.WriteEndObject();
        if (request.ToolChoice is { ValueKind: JsonValueKind.String } choice)
        {
            w.WritePropertyName("tool_choice");
            choice.WriteTo(w);
        }
        else if (request.ToolChoice is { ValueKind: JsonValueKind.Object } named && named.TryGetProperty("function", out var fn) && fn.TryGetProperty("name", out var fname))
        {
            w.WriteStartObject("tool_choice");
            w.WriteString("type", "function");
            w.WritePropertyName("name");
            fname.WriteTo(w);
            w.WriteEndObject();
        }
        else
        {
            w.WriteString("tool_choice", "auto");
        }

        w.WriteStartArray("tools");
        foreach (var tool in request.Tools ?? [])
        {
            w.WriteStartObject();
            w.WriteString("type", "function");
            w.WriteString("name", tool.Function?.Name);
            WriteStringOrNull(w, "description", tool.Function?.Description);
            if (tool.Function?.Parameters is { } parameters)
            {
                w.WritePropertyName("parameters");
                parameters.WriteTo(w);
            }
            else
            {
                w.WriteNull("parameters");
            }

            if (tool.Function?.Strict is { } strict)
            {
                w.WriteBoolean("strict", strict);
            }
            else
            {
                w.WriteNull("strict");
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
        WriteNumberOrNull(w, "top_p", request.TopP);
        w.WriteString("truncation", "disabled");
        if (done && _usage is { } usage)
        {
            w.WriteStartObject("usage");
            w.WriteNumber("input_tokens", usage.PromptTokens);
            w.WriteStartObject("input_tokens_details");
            w.WriteNumber("cached_tokens", Cost.PromptCacheTokens.ReadOf(usage));
            w.WriteEndObject();
            w.WriteNumber("output_tokens", usage.CompletionTokens);
            w.WriteStartObject("output_tokens_details");
            w.WriteNumber("reasoning_tokens", ReasoningTokens(usage));
            w.WriteEndObject();
            w.WriteNumber("total_tokens", usage.PromptTokens + usage.CompletionTokens);
            w.WriteEndObject();
        }
        else
        {
            w.WriteNull("usage");
        }

        WriteStringOrNull(w, "user", request.User);
        w.WriteStartObject("metadata");
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>The usage's reasoning tokens, as OpenAI reports them in a chat usage (<c>completion_tokens_details</c>).</summary>
    private static int ReasoningTokens(TokenUsage usage) =>
        usage.AdditionalProperties?.TryGetValue("completion_tokens_details", out var d) == true && d.ValueKind == JsonValueKind.Object
        && d.TryGetProperty("reasoning_tokens", out var r) && r.TryGetInt32(out var n) ? n : 0;

    private static void WriteStringOrNull(Utf8JsonWriter w, string name, string? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, value);
        }
    }

    private static void WriteNumberOrNull(Utf8JsonWriter w, string name, double? value)
    {
        if (value is { } v)
        {
            w.WriteNumber(name, v);
        }
        else
        {
            w.WriteNull(name);
        }
    }

    private string ItemId(string prefix) => $"{prefix}_{id["resp_".Length..]}{_items.Count.ToString(CultureInfo.InvariantCulture)}";

    private (string Name, byte[] Json) Event(string type, Action<Utf8JsonWriter> members)
    {
        var sequence = _sequence++;
        return (type, Json(w =>
        {
            w.WriteStartObject();
            w.WriteString("type", type);
            w.WriteNumber("sequence_number", sequence);
            members(w);
            w.WriteEndObject();
        }));
    }

    private static byte[] Json(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer, Options))
        {
            write(w);
        }

        return buffer.WrittenSpan.ToArray();
    }
}
