using System.Text.Json;
using PipelineGateway.Server.Responses;

namespace PipelineGateway.Server;

/// <summary>
/// A tool call's extra members kept for the tool loop's next step, on every route. Gemini's OpenAI-compatible endpoint
/// puts a function call's thought signature on the call (<c>extra_content.google.thought_signature</c>, carried by
/// <see cref="ToolCall.AdditionalProperties"/>), and Gemini 3 refuses the next step with a 400 when a call of the
/// current turn comes back without it. Clients that give the call back as they got it are served by the call itself;
/// these are not: an OpenAI-format client that keeps only the members it models (LangChain's <c>ChatOpenAI</c>, say),
/// and every client of <c>/v1/messages</c> and <c>/v1/responses</c>, whose <c>tool_use</c> blocks and
/// <c>function_call</c> items have no place for them. So an answer whose calls carry extra members has them kept —
/// under the step's first call's id, with the model asked and each call's id and name, in the stored responses' store
/// (per gateway key, its TTL and bound; Redis for a fleet) — and a later request whose current turn (after its last
/// user message, as Gemini validates) has those calls without members gets them back before it is routed: only for
/// the same model asked (a conversation moved to another model sends nothing it did not send), only a call of the same
/// id and function name. Nothing kept (another instance without Redis, expired, a store down): sent as the client sent
/// it, as before. An answer without extra members writes nothing.
/// <para>
/// The same for a reasoning model's text on a step that called tools: Kimi K2.5+, GLM and DeepSeek's thinking mode
/// refuse a tool loop's next step whose assistant tool-call message comes back without its <c>reasoning_content</c>
/// ("thinking is enabled but reasoning_content is missing in assistant tool call message"), and OpenAI-format clients
/// drop it, as does every <c>/v1/messages</c> client (Claude Code: another model's reasoning has no signature, so it is
/// not written as a thinking block). Kept with the step's calls under the same key, given back to the step sent without
/// it. Claude's own thinking travels as its signed blocks (<see cref="ThinkingRecall"/>), not here.
/// </para>
/// </summary>
internal static class ToolCallRecall
{
    /// <summary>At most this many assistant steps of a request's current turn are looked up (a hostile request's bound).</summary>
    internal const int MaxSteps = 32;

    /// <summary>At most this many calls of one step are kept (a hostile upstream's bound; a step's calls are a few).</summary>
    private const int MaxCalls = 128;

    /// <summary>Gives the current turn's tool calls sent without members the members they were answered with.</summary>
    public static async ValueTask RecallAsync(ResponsesStore store, string scope, ChatCompletionRequest request, CancellationToken cancellationToken)
    {
        if (!store.Enabled)
        {
            return;
        }

        // The current turn's steps that lack something, each looked up at once (one round trip to a shared store).
        List<(ChatCompletionMessage Step, Task<JsonElement?> Kept)>? lookups = null;
        var messages = request.Messages;
        for (var i = messages.Count - 1; i >= 0 && (lookups?.Count ?? 0) < MaxSteps; i--)
        {
            var message = messages[i];
            if (message?.Role == ChatRoles.User)
            {
                break; // the turn starts after the user's last message: earlier steps are not checked (Gemini's, Kimi's rule)
            }

            if (message?.Role == ChatRoles.Assistant && message.ToolCalls is [{ Id: { Length: > 0 } first }, ..] calls && (calls.Exists(Bare) || ReasoningOf(message) is null))
            {
                (lookups ??= []).Add((message, store.RecallForToolCallAsync(ResponsesStore.ForToolCall.Extras, scope, first, cancellationToken).AsTask()));
            }
        }

        foreach (var (step, lookup) in lookups ?? [])
        {
            if (await lookup.ConfigureAwait(false) is not { ValueKind: JsonValueKind.Object } kept
                || !kept.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.String || !model.ValueEquals(request.Model))
            {
                continue;
            }

            if (kept.TryGetProperty("calls", out var entries) && entries.ValueKind == JsonValueKind.Array)
            {
                foreach (var call in step.ToolCalls!)
                {
                    if (Bare(call) && Find(entries, call) is { } extra)
                    {
                        call!.AdditionalProperties = extra.EnumerateObject().ToDictionary(static m => m.Name, static m => m.Value, StringComparer.Ordinal);
                    }
                }
            }

            if (ReasoningOf(step) is null && kept.TryGetProperty("reasoning", out var reasoning) && reasoning.ValueKind == JsonValueKind.Object
                && reasoning.TryGetProperty("member", out var member) && member.ValueKind == JsonValueKind.String && member.GetString() is ReasoningContent or Reasoning
                && reasoning.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String)
            {
                (step.AdditionalProperties ??= new Dictionary<string, JsonElement>(StringComparer.Ordinal))[member.GetString()!] = text;
            }
        }
    }

    /// <summary>Keeps a whole answer's calls' extra members and its reasoning text (nothing when it has neither).</summary>
    public static Task RememberAsync(ResponsesStore store, string scope, ChatCompletionRequest request, ChatCompletionResponse response)
    {
        if (!store.Enabled || response.Choices is not [{ Message: { ToolCalls: [{ Id: { Length: > 0 } first }, ..] calls } message }, ..])
        {
            return Task.CompletedTask;
        }

        var reasoning = ReasoningOf(message);
        return calls.Exists(HasExtras) || reasoning is not null
            ? store.RememberForToolCallAsync(ResponsesStore.ForToolCall.Extras, scope, first, Entry(request.Model, calls, reasoning))
            : Task.CompletedTask;
    }

    private const string ReasoningContent = "reasoning_content";
    private const string Reasoning = "reasoning";

    /// <summary>
    /// A message's reasoning text and the member it came in (<c>reasoning_content</c>; OpenRouter's <c>reasoning</c>);
    /// null without any, or when the message carries Claude's signed blocks (those travel on their own).
    /// </summary>
    private static (string Member, string Text)? ReasoningOf(ChatCompletionMessage message) =>
        message.AdditionalProperties is not { } extra || extra.ContainsKey(Providers.Anthropic.ThinkingBlocks.Member) ? null
        : extra.TryGetValue(ReasoningContent, out var rc) && rc.ValueKind == JsonValueKind.String && rc.GetString() is { Length: > 0 } a ? (ReasoningContent, a)
        : extra.TryGetValue(Reasoning, out var r) && r.ValueKind == JsonValueKind.String && r.GetString() is { Length: > 0 } b ? (Reasoning, b)
        : null;

    /// <summary>
    /// A gatherer for a stream's calls; null when nothing would be kept — the store is off, or the request offers no
    /// tools, so its answer calls none (every event of such a stream skips the gatherer: nothing per event).
    /// </summary>
    public static Gatherer? Gather(ResponsesStore store, string scope, ChatCompletionRequest request) =>
        store.Enabled && request.Tools is { Count: > 0 } ? new Gatherer(store, scope, request) : null;

    private static bool Bare(ToolCall? call) => call is { Id.Length: > 0 } && call.AdditionalProperties is not { Count: > 0 };

    private static bool HasExtras(ToolCall? call) => call is { Id.Length: > 0, AdditionalProperties.Count: > 0 };

    private static JsonElement? Find(JsonElement entries, ToolCall call)
    {
        foreach (var entry in entries.EnumerateArray())
        {
            if (entry.ValueKind == JsonValueKind.Object
                && entry.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String && id.ValueEquals(call.Id)
                && entry.TryGetProperty("name", out var name) && (name.ValueKind == JsonValueKind.Null ? call.Function?.Name is null : name.ValueKind == JsonValueKind.String && name.ValueEquals(call.Function?.Name))
                && entry.TryGetProperty("extra", out var extra) && extra.ValueKind == JsonValueKind.Object)
            {
                return extra;
            }
        }

        return null;
    }

    /// <summary><c>{"model":…,"calls":[{"id":…,"name":…,"extra":{…}}],"reasoning":{"member":…,"text":…}}</c>: the calls that carry extra members, the step's reasoning.</summary>
    private static byte[] Entry(string model, IEnumerable<ToolCall?> calls, (string Member, string Text)? reasoning)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            w.WriteStartArray("calls");
            foreach (var call in calls)
            {
                if (!HasExtras(call))
                {
                    continue;
                }

                w.WriteStartObject();
                w.WriteString("id", call!.Id);
                w.WriteString("name", call.Function?.Name);
                w.WriteStartObject("extra");
                foreach (var (member, value) in call.AdditionalProperties!)
                {
                    w.WritePropertyName(member);
                    value.WriteTo(w);
                }

                w.WriteEndObject();
                w.WriteEndObject();
            }

            w.WriteEndArray();
            if (reasoning is var (reasoningMember, reasoningText))
            {
                w.WriteStartObject("reasoning");
                w.WriteString("member", reasoningMember);
                w.WriteString("text", reasoningText);
                w.WriteEndObject();
            }

            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A stream's calls (its first choice's) as their deltas add up — id, name and extra members — kept at its end.</summary>
    public sealed class Gatherer(ResponsesStore store, string scope, ChatCompletionRequest request)
    {
        /// <summary>At most this much reasoning text is kept for a step (a longer one is not kept at all: a part would be another text).</summary>
        internal const int MaxReasoningChars = 1 << 20;

        private List<ToolCall?>? _calls;
        private bool _extras;
        private System.Text.StringBuilder? _reasoning;
        private string? _reasoningMember;
        private bool _claudeBlocks;

        public void Add(ChatCompletionChunk chunk)
        {
            if (chunk.ChoicesUnread && !chunk.ReasonsUnread)
            {
                return; // skimmed, no reasoning text: its deltas have no tool calls (a delta with one is read in full)
            }

            foreach (var choice in chunk.Choices) // a skimmed chunk with reasoning text is read here (a stream offered tools only)
            {
                if (choice is not { Index: 0, Delta: { } delta })
                {
                    continue;
                }

                if (delta.AdditionalProperties is { } reasoning)
                {
                    Reason(reasoning);
                }

                if (delta.ToolCalls is { Count: > 0 } deltas)
                {
                    AddCalls(deltas);
                }
            }
        }

        private void Reason(Dictionary<string, JsonElement> extra)
        {
            _claudeBlocks |= extra.ContainsKey(Providers.Anthropic.ThinkingBlocks.Member);
            foreach (var member in (ReadOnlySpan<string>)[ReasoningContent, Reasoning])
            {
                if (extra.TryGetValue(member, out var piece) && piece.ValueKind == JsonValueKind.String && piece.GetString() is { Length: > 0 } text
                    && (_reasoningMember ??= member) == member)
                {
                    if (_reasoning is { } held && held.Length + text.Length > MaxReasoningChars)
                    {
                        _reasoning = null;
                        _reasoningMember = string.Empty; // too long to keep whole: none kept, and no more gathered
                        return;
                    }

                    (_reasoning ??= new System.Text.StringBuilder()).Append(text);
                }
            }
        }

        private void AddCalls(List<ToolCall> deltas)
        {
            _calls ??= [];
            for (var k = 0; k < deltas.Count; k++)
            {
                var delta = deltas[k];
                var index = delta?.Index ?? k;
                if (delta is null || index is < 0 or >= MaxCalls)
                {
                    continue;
                }

                while (_calls.Count <= index)
                {
                    _calls.Add(null);
                }

                var held = _calls[index] ??= new ToolCall();
                held.Id ??= delta.Id;
                if (delta.Function?.Name is { } name && held.Function?.Name is null)
                {
                    (held.Function ??= new FunctionCall()).Name = name;
                }

                if (delta.AdditionalProperties is { Count: > 0 } extra)
                {
                    held.AdditionalProperties ??= new Dictionary<string, JsonElement>(StringComparer.Ordinal);
                    foreach (var (member, value) in extra)
                    {
                        held.AdditionalProperties[member] = value;
                    }

                    _extras = true;
                }
            }
        }

        /// <summary>Keeps what was gathered when the step called tools with extra members or reasoning (before the stream's end goes out: the next step may come at once).</summary>
        public Task RememberAsync()
        {
            (string, string)? reasoning = _reasoning is { Length: > 0 } text && !_claudeBlocks ? (_reasoningMember!, text.ToString()) : null;
            return (_extras || reasoning is not null) && _calls is [{ Id: { Length: > 0 } first }, ..]
                ? store.RememberForToolCallAsync(ResponsesStore.ForToolCall.Extras, scope, first, Entry(request.Model, _calls, reasoning))
                : Task.CompletedTask;
        }
    }
}
