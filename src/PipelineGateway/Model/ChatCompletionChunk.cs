using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway;

/// <summary>One streamed chunk in the OpenAI <c>chat.completion.chunk</c> schema.</summary>
public sealed class ChatCompletionChunk
{
    public string Id { get; set; } = string.Empty;

    /// <summary>The schema's object name of a streamed chunk.</summary>
    internal const string ObjectName = "chat.completion.chunk";

    public string Object { get; set; } = ObjectName;

    public long Created { get; set; }

    public string Model { get; set; } = string.Empty;

    /// <summary>
    /// The chunk's choices. A chunk the SSE endpoint forwards as its upstream bytes may have been read without them
    /// (<see cref="ChoicesUnread"/>): they are then read from those bytes the first time anything asks.
    /// </summary>
    public List<ChunkChoice> Choices
    {
        get => _choicesUnread ? ReadChoices() : _choices!;
        set
        {
            _choices = value;
            _choicesUnread = false;
        }
    }

    /// <summary>Present on the last chunk when usage was asked for (<c>stream_options.include_usage</c>).</summary>
    public TokenUsage? Usage { get; set; }

    public string? SystemFingerprint { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }

    /// <summary>Set by the gateway on the final chunk it hands to the caller.</summary>
    [JsonIgnore]
    public GatewayResponseInfo? Gateway { get; set; }

    /// <summary>
    /// The upstream event's JSON exactly as received, when writing those bytes says what writing this chunk would: the
    /// event was in the shape the gateway writes (every member it always writes present once, no line break, valid
    /// UTF-8, no usage) — the SSE endpoint then forwards them instead of re-serializing the chunk (issue 21: writing
    /// each chunk again is work a byte-copying proxy does not do; docs/benchmarks.md). Only for a request whose endpoint
    /// asked (<see cref="GatewayRequestOptions.KeepsUpstreamJson"/>); dropped by anything in the gateway that changes the
    /// chunk before it is written (<see cref="Providers.ProviderAnswer.Fill(ChatCompletionChunk, ref string?, ref long, Pipeline.WorkItem, string, TimeProvider)"/>,
    /// the endpoint when it changes a chunk's usage). Held in a pooled buffer the chunk owns until
    /// <see cref="TakeEventJson"/> hands it to the one writer (<see cref="Serialization.KeptJson"/>).
    /// </summary>
    internal ReadOnlySpan<byte> EventJson => _eventJson.Span;

    /// <summary>
    /// Claude's content event as it came (its name and JSON, on one line), for a <c>/v1/messages</c> caller streaming from
    /// an Anthropic deployment (<see cref="GatewayRequestOptions.KeepsAnthropicEvents"/>): the route writes it in place of
    /// what it would make of the chunk, so blocks the canonical form has no fields for (a server tool's call and
    /// results, citations) reach the caller as Claude wrote them, in their order and with their indexes.
    /// </summary>
    internal (string Name, byte[] Json)? AnthropicEvent
    {
        get => _claude?.Event;
        set
        {
            if (value is not null || _claude is not null)
            {
                Claude.Event = value;
            }
        }
    }

    /// <summary>
    /// On a stream's finishing chunk: Claude's stop reason when the finish reason loses it (<c>stop_sequence</c> and the
    /// sequence, <c>pause_turn</c>; <see cref="Providers.Anthropic.AnthropicStop"/>), for <c>/v1/messages</c>.
    /// </summary>
    internal (string Reason, string? Sequence)? AnthropicStop
    {
        get => _claude?.Stop;
        set
        {
            if (value is not null || _claude is not null)
            {
                Claude.Stop = value;
            }
        }
    }

    /// <summary>
    /// On a Claude stream's opening chunk: the usage Claude's <c>message_start</c> gave (the prompt's tokens, the cache's),
    /// for the <c>message_start</c> a <c>/v1/messages</c> caller gets — clients take the prompt's count from there.
    /// Not billed: the stream's usage is its last.
    /// </summary>
    internal Providers.Anthropic.AnthropicUsage? AnthropicOpening
    {
        get => _claude?.Opening;
        set
        {
            if (value is not null || _claude is not null)
            {
                Claude.Opening = value;
            }
        }
    }

    /// <summary>The chunk opens or continues a block a caller sees (a server tool's call or result) though it has no canonical content.</summary>
    internal bool CarriesNativeContent
    {
        get => _claude?.NativeContent == true;
        set
        {
            if (value || _claude is not null)
            {
                Claude.NativeContent = value;
            }
        }
    }

    /// <summary>The stream carried blocks its canonical chunks cannot hold (a server tool's, citations): not stored in the cache.</summary>
    internal bool Uncacheable
    {
        get => _claude?.Uncacheable == true;
        set
        {
            if (value || _claude is not null)
            {
                Claude.Uncacheable = value;
            }
        }
    }

    /// <summary>
    /// What only Claude's streams carry, apart: one reference on every chunk (streamed events are the gateway's most
    /// allocated object; these members were ~50 bytes on each) and an object only where Claude needs it.
    /// </summary>
    private sealed class ClaudeState
    {
        public (string Name, byte[] Json)? Event;
        public (string Reason, string? Sequence)? Stop;
        public Providers.Anthropic.AnthropicUsage? Opening;
        public bool NativeContent;
        public bool Uncacheable;
    }

    private ClaudeState? _claude;

    private ClaudeState Claude => _claude ??= new ClaudeState();

    /// <summary>True while the chunk holds its upstream bytes (<see cref="EventJson"/>).</summary>
    internal bool HasEventJson => _eventJson.IsHeld;

    private Serialization.KeptJson _eventJson;
    private bool _membersUnread;
    private List<ChunkChoice>? _choices;

    public ChatCompletionChunk() => _choices = [];

    /// <summary>No list for the choices: the skimming read leaves them in the bytes (<see cref="SkipChoices"/>) or drops the chunk.</summary>
    private ChatCompletionChunk(List<ChunkChoice>? choices) => _choices = choices;

    /// <summary>A chunk for the skimming read (<see cref="AnswerJson.ReadStreamChunk"/>), which gives it <see cref="SkipChoices"/>.</summary>
    internal static ChatCompletionChunk Skimmed() => new(choices: null);

    // What the skimming read (AnswerJson.ReadStreamChunk) learnt of the choices it did not read: how many, whether one
    // finishes, how many bytes of content they carry. Valid while _choicesUnread.
    private bool _choicesUnread;
    private int _unreadChoiceCount;
    private bool _unreadFinishes;
    private int _unreadContentBytes;
    private bool _unreadReasons;

    /// <summary>A choice's delta carries reasoning text (<c>reasoning_content</c> or <c>reasoning</c>), while the choices are unread.</summary>
    internal bool ReasonsUnread => _choicesUnread && _unreadReasons;

    /// <summary>
    /// True while the choices are only in <see cref="EventJson"/>: the read skimmed them (an event in the gateway's own
    /// shape, forwarded as its bytes, whose choices nothing in the gateway needs — building them was a third of a
    /// streamed event's allocation; docs/benchmarks.md). <see cref="HasNoChoices"/>, <see cref="Finishes"/> and
    /// <see cref="CarriesContent"/> answer without reading them.
    /// </summary>
    internal bool ChoicesUnread => _choicesUnread;

    /// <summary>Marks the choices as unread, with what the skim learnt of them (<see cref="ChoicesUnread"/>).</summary>
    internal void SkipChoices(int count, bool finishes, int contentBytes, bool reasons = false)
    {
        _unreadReasons = reasons;
        _choices = null;
        _choicesUnread = true;
        _unreadChoiceCount = count;
        _unreadFinishes = finishes;
        _unreadContentBytes = contentBytes;
    }

    /// <summary>No choices (a usage-only chunk, say).</summary>
    internal bool HasNoChoices => _choicesUnread ? _unreadChoiceCount == 0 : Choices.Count == 0;

    /// <summary>A choice says why it finished: the stream's finishing chunk.</summary>
    internal bool Finishes => _choicesUnread ? _unreadFinishes : Choices.Exists(static c => c.FinishReason is not null);

    /// <summary>Text, a tool call, a refusal or reasoning text: what a caller has seen once it is sent.</summary>
    internal bool CarriesContent
    {
        get
        {
            if (_choicesUnread)
            {
                return _unreadContentBytes > 0;
            }

            if (_claude?.NativeContent == true)
            {
                return true;
            }

            foreach (var choice in Choices)
            {
                var d = choice.Delta;
                if (!string.IsNullOrEmpty(d.Content) || d.ToolCalls is { Count: > 0 } || !string.IsNullOrEmpty(d.Refusal) || d.CarriesReasoning)
                {
                    return true;
                }
            }

            return false;
        }
    }

    /// <summary>
    /// The output tokens this chunk is estimated to carry, should the upstream count none: about four characters a token
    /// (UTF-8 bytes as sent when the choices were skimmed), at least one for a chunk that <see cref="CarriesContent"/> —
    /// OpenAI-compatible servers send a token an event, others a sentence. Nothing is tokenized per event (the stream's
    /// hot path); whole answers, and streams the cache keeps, are counted by the model's tokenizer instead.
    /// </summary>
    internal int EstimatedOutputTokens
    {
        get
        {
            if (!CarriesContent)
            {
                return 0;
            }

            var length = 0;
            if (_choicesUnread)
            {
                length = _unreadContentBytes;
            }
            else
            {
                foreach (var choice in Choices)
                {
                    var d = choice.Delta;
                    length += (d.Content?.Length ?? 0) + (d.Refusal?.Length ?? 0) + ChatCompletionDelta.ReasoningLength(d.AdditionalProperties);
                    if (d.ToolCalls is { } calls) // not `?? []`: a list made per event
                    {
                        foreach (var call in calls)
                        {
                            length += (call.Function?.Name?.Length ?? 0) + (call.Function?.Arguments?.Length ?? 0);
                        }
                    }
                }
            }

            return Math.Max(1, length / 4);
        }
    }

    /// <summary>The choices the read skimmed, read from the event's bytes.</summary>
    private List<ChunkChoice> ReadChoices()
    {
        if (!_eventJson.IsHeld)
        {
            // Only the writer takes the bytes, and it is the chunk's last reader: reaching here is a gateway bug.
            throw new InvalidOperationException("The chunk's choices were forwarded as its upstream bytes, which were released; they can no longer be read.");
        }

        Choices = JsonSerializer.Deserialize(EventJson, GatewayJsonContext.Default.ChatCompletionChunk)?.Choices ?? [];
        return _choices!;
    }

    /// <summary>
    /// Keeps a copy of the event's bytes in a rented buffer the chunk owns. <paramref name="membersUnread"/>: the
    /// reader skipped the top-level members the gateway does not model (the bytes carry them; see
    /// <see cref="AnswerJson.t_chunkSkipUnknown"/>), so <see cref="AdditionalProperties"/> lacks them until
    /// <see cref="DropEventJson"/> reads them back.
    /// </summary>
    internal void KeepEventJson(ReadOnlySpan<byte> json, bool membersUnread)
    {
        _eventJson.Keep(json);
        _membersUnread = membersUnread;
    }

    /// <summary>
    /// The chunk no longer writes as its upstream bytes (it was or is about to be changed): the members its read skipped
    /// are read back from them first, so writing the chunk keeps them; the buffer is left to the GC.
    /// </summary>
    internal void DropEventJson()
    {
        if (_eventJson.IsHeld && (_membersUnread || _choicesUnread))
        {
            var read = JsonSerializer.Deserialize(EventJson, GatewayJsonContext.Default.ChatCompletionChunk);
            if (_membersUnread)
            {
                AdditionalProperties = read?.AdditionalProperties;
            }

            if (_choicesUnread)
            {
                Choices = read?.Choices ?? [];
            }
        }

        _eventJson.Drop();
    }

    /// <summary>Hands the bytes' buffer to the one writer, which returns it to the pool (<see cref="Serialization.KeptJson.Take"/>).</summary>
    internal bool TakeEventJson([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out byte[]? buffer, out int length) =>
        _eventJson.Take(out buffer, out length);
}

public sealed class ChunkChoice
{
    public int Index { get; set; }

    public ChatCompletionDelta Delta { get; set; } = new();

    /// <summary>Always written (null until the last chunk), as the OpenAI schema has it.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)]
    public string? FinishReason { get; set; }

    /// <summary>Always written (null when the upstream sent none), as the OpenAI schema has it.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)]
    public JsonElement? Logprobs { get; set; }

    /// <summary>
    /// Members of the choice the gateway does not model, kept and written back (Azure OpenAI's
    /// <c>content_filter_results</c>): an event says the same forwarded as its bytes or written by the gateway.
    /// </summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }
}

public sealed class ChatCompletionDelta
{
    public string? Role { get; set; }

    public string? Content { get; set; }

    public List<ToolCall>? ToolCalls { get; set; }

    public string? Refusal { get; set; }

    /// <summary>
    /// Members the gateway does not model, kept and written back: a reasoning model's <c>reasoning_content</c>
    /// (DeepSeek, vLLM, LiteLLM) or <c>reasoning</c> (OpenRouter), say — output the caller sees like text.
    /// </summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }

    /// <summary>The delta carries reasoning text (<c>reasoning_content</c> or <c>reasoning</c>, not empty).</summary>
    internal bool CarriesReasoning =>
        AdditionalProperties is { } extra && (NotEmpty(extra, "reasoning_content") || NotEmpty(extra, "reasoning"));

    /// <summary>The bytes of reasoning text a delta's unmodelled members carry (read in place, as sent).</summary>
    internal static int ReasoningLength(Dictionary<string, JsonElement>? extra) =>
        extra is null ? 0 : RawStringLength(extra, "reasoning_content") + RawStringLength(extra, "reasoning");

    private static int RawStringLength(Dictionary<string, JsonElement> extra, string name) =>
        extra.TryGetValue(name, out var v) && v.ValueKind == JsonValueKind.String
            ? System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(v).Length - 2
            : 0;

    /// <summary>A string member that is not empty (compared in place: no string made to look at it).</summary>
    private static bool NotEmpty(Dictionary<string, JsonElement> extra, string name) =>
        extra.TryGetValue(name, out var v) && v.ValueKind == JsonValueKind.String && !v.ValueEquals(ReadOnlySpan<byte>.Empty);
}
