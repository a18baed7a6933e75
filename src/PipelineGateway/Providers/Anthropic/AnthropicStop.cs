using System.Text.Json;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>
/// Claude's stop reasons that the canonical <c>finish_reason</c> (<c>stop</c>) cannot tell apart from the end of a turn:
/// <c>stop_sequence</c> — with the sequence that matched, which Anthropic clients read — and <c>pause_turn</c> (a server
/// tool's long turn Claude paused; the caller continues it by sending the turn back). A whole answer keeps them as its
/// members <c>stop_reason</c> / <c>stop_sequence</c>, a stream's finishing chunk on <see cref="ChatCompletionChunk.AnthropicStop"/>,
/// so <c>/v1/messages</c> says what Claude said.
/// </summary>
internal static class AnthropicStop
{
    public const string Sequence = "stop_sequence";

    public const string Paused = "pause_turn";

    /// <summary>The context window ran out (the canonical <c>length</c>, which reads back as <c>max_tokens</c>).</summary>
    public const string ContextWindow = "model_context_window_exceeded";

    private const string ReasonMember = "stop_reason";

    private const string SequenceMember = "stop_sequence";

    /// <summary>A stop reason the canonical finish reason loses.</summary>
    public static bool IsKept(string? stopReason) => stopReason is Sequence or Paused or ContextWindow;

    public static void Set(ChatCompletionResponse response, string reason, string? sequence)
    {
        response.AdditionalProperties ??= [];
        response.AdditionalProperties[ReasonMember] = JsonSerializer.SerializeToElement(reason, AnthropicJsonContext.Default.String);
        if (sequence is not null)
        {
            response.AdditionalProperties[SequenceMember] = JsonSerializer.SerializeToElement(sequence, AnthropicJsonContext.Default.String);
        }
    }

    /// <summary>The stop reason a whole answer kept, and the sequence that matched.</summary>
    public static (string Reason, string? Sequence)? Of(ChatCompletionResponse response) =>
        response.AdditionalProperties is { } extra && extra.TryGetValue(ReasonMember, out var r) && r.ValueKind == JsonValueKind.String && IsKept(r.GetString())
            ? (r.GetString()!, extra.TryGetValue(SequenceMember, out var s) && s.ValueKind == JsonValueKind.String ? s.GetString() : null)
            : null;
}
