using System.Text.Json;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Server.Responses;

namespace PipelineGateway.Server;

/// <summary>
/// Claude's thinking kept across an OpenAI-format tool loop. Claude refuses a thinking request whose last assistant turn
/// called tools without the thinking blocks it answered with, and OpenAI-format clients (the OpenAI SDKs, the Vercel AI
/// SDK's chat provider, Microsoft.Extensions.AI) never give <c>thinking_blocks</c> back: the gateway answered such a
/// step without thinking. Now, on the chat route, an answer asked with thinking (<c>reasoning_effort</c> or
/// <c>thinking</c>) that thinks and calls tools has its blocks kept under its first tool call's id, in the stored
/// responses' store (per gateway key, its TTL and bound; Redis for a fleet); the next step, its assistant turn sent back
/// without them, gets them back before it is routed, so Claude thinks on. Nothing kept (another instance without Redis,
/// expired, a store down): answered without thinking, as before.
/// </summary>
internal static class ThinkingRecall
{
    /// <summary>Whether a chat request asks Claude to think (so its answers' blocks are worth keeping).</summary>
    public static bool Asked(ChatCompletionRequest request) =>
        request.AdditionalProperties is { } extra
        && (extra.TryGetValue("reasoning_effort", out var effort) && effort.ValueKind == JsonValueKind.String
            || extra.TryGetValue(ThinkingBlocks.Parameter, out var thinking) && thinking.ValueKind == JsonValueKind.Object);

    /// <summary>The last assistant turn, when it called tools and carries no thinking blocks: what needs its blocks back.</summary>
    private static ChatCompletionMessage? Bare(ChatCompletionRequest request)
    {
        for (var i = request.Messages.Count - 1; i >= 0; i--)
        {
            if (request.Messages[i] is { Role: ChatRoles.Assistant } last)
            {
                return last.ToolCalls is [{ Id: { Length: > 0 } }, ..] && ThinkingBlocks.Read(last.AdditionalProperties).Count == 0 ? last : null;
            }
        }

        return null;
    }

    /// <summary>Gives a tool loop's last assistant turn its kept thinking blocks back (the request is the endpoint's own, read from the body).</summary>
    public static async ValueTask RecallAsync(ResponsesStore store, string scope, ChatCompletionRequest request, CancellationToken cancellationToken)
    {
        if (!store.Enabled || !Asked(request) || Bare(request) is not { } last)
        {
            return;
        }

        if (await store.RecallForToolCallAsync(ResponsesStore.ForToolCall.Thinking, scope, last.ToolCalls![0].Id!, cancellationToken).ConfigureAwait(false) is { ValueKind: JsonValueKind.Array } blocks)
        {
            (last.AdditionalProperties ??= [])[ThinkingBlocks.Member] = blocks;
        }
    }

    /// <summary>Keeps a whole answer's thinking blocks when it thought and called tools.</summary>
    public static Task RememberAsync(ResponsesStore store, string scope, ChatCompletionRequest request, ChatCompletionResponse response)
    {
        if (!store.Enabled || !Asked(request) || response.Choices is not [{ Message: { ToolCalls: [{ Id: { Length: > 0 } id }, ..], AdditionalProperties: { } extra } }, ..]
            || !extra.TryGetValue(ThinkingBlocks.Member, out var blocks) || blocks.ValueKind != JsonValueKind.Array || blocks.GetArrayLength() == 0)
        {
            return Task.CompletedTask;
        }

        return store.RememberForToolCallAsync(ResponsesStore.ForToolCall.Thinking, scope, id, System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(blocks).ToArray());
    }

    /// <summary>A stream's thinking pieces and its first tool call's id, gathered as the chunks go out (only for a request that <see cref="Asked"/>).</summary>
    public sealed class Gatherer
    {
        private readonly ThinkingBlocks.Collector _thinking = new();
        private string? _toolCallId;

        public void Add(ChatCompletionChunk chunk)
        {
            if (chunk.ChoicesUnread || chunk.Choices is null)
            {
                return; // skimmed: an OpenAI-format upstream's event, which carries no Claude blocks
            }

            foreach (var choice in chunk.Choices)
            {
                if (choice?.Delta is not { } delta || choice.Index != 0)
                {
                    continue;
                }

                _thinking.Add(ThinkingBlocks.Read(delta.AdditionalProperties));
                _toolCallId ??= delta.ToolCalls?.FirstOrDefault(static c => !string.IsNullOrEmpty(c?.Id))?.Id;
            }
        }

        /// <summary>Keeps what was gathered when the stream thought and called tools.</summary>
        public Task RememberAsync(ResponsesStore store, string scope)
        {
            if (_toolCallId is null || _thinking.Blocks() is not { Count: > 0 } blocks)
            {
                return Task.CompletedTask;
            }

            var json = ThinkingBlocks.Write(null, blocks, null)![ThinkingBlocks.Member];
            return store.RememberForToolCallAsync(ResponsesStore.ForToolCall.Thinking, scope, _toolCallId, System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(json).ToArray());
        }
    }
}
