using System.Buffers.Text;
using System.Text;
using System.Text.Json;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// A model's thinking through the Responses API: a <c>reasoning</c> output item whose summary is the thinking text and
/// whose <c>encrypted_content</c> carries Claude's signed thinking blocks — the gateway's own encoding
/// (<see cref="Prefix"/> and the blocks' JSON in base64url), opaque to the caller as OpenAI's is. A stateless caller that
/// gives its output items back (the Agents SDK, Codex) so gives Claude its thinking back in a tool loop, which Claude
/// requires when thinking is on; without it the loop's second turn was refused.
/// </summary>
internal static class ResponsesReasoning
{
    /// <summary>What marks an <c>encrypted_content</c> the gateway wrote (OpenAI's own are left out on the way back).</summary>
    public const string Prefix = "pgw1.";

    /// <summary>The blocks as an <c>encrypted_content</c> (null when there are none).</summary>
    public static string? Encode(IReadOnlyList<ThinkingBlock> blocks)
    {
        if (blocks.Count == 0 || ThinkingBlocks.Write(null, blocks, null) is not { } extra)
        {
            return null;
        }

        return Prefix + Base64Url.EncodeToString(Encoding.UTF8.GetBytes(extra[ThinkingBlocks.Member].GetRawText()));
    }

    /// <summary>The blocks a reasoning input item the gateway wrote carries (null for any other reasoning item).</summary>
    /// <exception cref="InvalidRequestException">It says it is the gateway's, but cannot be read.</exception>
    public static IReadOnlyList<ThinkingBlock>? Read(JsonElement item, string at)
    {
        if (!item.TryGetProperty("encrypted_content", out var content) || content.ValueKind != JsonValueKind.String
            || content.GetString() is not { } text || !text.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return null;
        }

        try
        {
            using var doc = JsonDocument.Parse(Base64Url.DecodeFromChars(text.AsSpan(Prefix.Length)));
            if (doc.RootElement.ValueKind != JsonValueKind.Array)
            {
                throw new JsonException();
            }

            return ThinkingBlocks.Read(new Dictionary<string, JsonElement> { [ThinkingBlocks.Member] = doc.RootElement.Clone() });
        }
        catch (Exception ex) when (ex is FormatException or JsonException)
        {
            throw new InvalidRequestException($"{at}.encrypted_content", $"{at}.encrypted_content: not a reasoning item this gateway wrote (it cannot be read); give reasoning items back as they came.");
        }
    }

    /// <summary>The blocks waiting for an assistant turn, on that turn's members (and no longer waiting).</summary>
    public static Dictionary<string, JsonElement>? Attach(Dictionary<string, JsonElement>? extra, ref List<ThinkingBlock>? waiting)
    {
        if (waiting is not { Count: > 0 } blocks)
        {
            return extra;
        }

        waiting = null;
        return ThinkingBlocks.Write(extra, blocks, null);
    }

    /// <summary>The thinking text a message or a delta carries (<c>reasoning_content</c>), if any.</summary>
    public static string? Text(Dictionary<string, JsonElement>? extra) =>
        extra?.TryGetValue(ThinkingBlocks.ReasoningMember, out var text) == true && text.ValueKind == JsonValueKind.String ? text.GetString() : null;
}
