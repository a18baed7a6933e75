using System.Text.Json;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>
/// Claude's own tools and the blocks they answer with, which the canonical (OpenAI-shaped) form has no fields for:
/// Anthropic-defined tools (<c>web_search_20250305</c>, <c>web_fetch_20250910</c>, <c>code_execution_20250825</c> — run by
/// Anthropic — and <c>bash_20250124</c>, <c>text_editor_20250728</c>, <c>computer_20250124</c> — run by the caller), and
/// the blocks a server tool writes into the answer (<c>server_tool_use</c>, <c>web_search_tool_result</c>…, text with
/// <c>citations</c>). They are carried, never dropped: a tool as a canonical tool of that <c>type</c> whose other members
/// are its unknown ones; an assistant turn holding such blocks keeps its whole content, as Claude wrote it, in the
/// unknown member <see cref="ContentMember"/> (its text and tool calls are in the canonical fields as well). Only an
/// Anthropic deployment (and an OpenAI-compatible one, as it is) is sent them; OpenAI, Azure and an <c>IChatClient</c>
/// refuse them without sending (<see cref="ProviderException.NotSent"/>), so the request goes to a deployment that can.
/// </summary>
internal static class ServerTools
{
    /// <summary>The unknown member of an assistant message holding its content blocks as Claude wrote them.</summary>
    public const string ContentMember = "anthropic_content";

    /// <summary>Claude's MCP connector: remote MCP servers whose tools Claude calls itself (with its beta).</summary>
    public const string McpServers = "mcp_servers";

    /// <summary>The code execution tool's container to reuse.</summary>
    public const string Container = "container";

    /// <summary>Claude's context editing (clearing old tool results as the context fills; with its beta).</summary>
    public const string ContextManagement = "context_management";

    /// <summary>Request members for Claude alone, carried from <c>/v1/messages</c> to an Anthropic deployment as they came.</summary>
    public static readonly string[] RequestMembers = [McpServers, Container, ContextManagement];

    /// <summary>
    /// A tool type Anthropic defines: a name and the date of its version (<c>web_search_20250305</c>). Custom tools are
    /// <c>custom</c> or have no type; OpenAI's are <c>function</c> (and <c>custom</c>).
    /// </summary>
    public static bool IsAnthropicToolType(string? type)
    {
        if (type is not { Length: > 9 } || type[^9] != '_' || !char.IsAsciiLetterLower(type[0]))
        {
            return false;
        }

        for (var i = type.Length - 8; i < type.Length; i++)
        {
            if (!char.IsAsciiDigit(type[i]))
            {
                return false;
            }
        }

        foreach (var c in type.AsSpan(0, type.Length - 9))
        {
            if (!(char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '_'))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// A block a server tool writes into Claude's answer: <c>server_tool_use</c>, <c>mcp_tool_use</c>, every
    /// <c>…_tool_result</c> but the caller's own <c>tool_result</c>, <c>container_upload</c>.
    /// </summary>
    public static bool IsServerBlock(string? type) =>
        type is "server_tool_use" or "mcp_tool_use" or "container_upload"
        || type is not null && type != "tool_result" && type.EndsWith("_tool_result", StringComparison.Ordinal);

    /// <summary>The assistant message's blocks as Claude wrote them (<see cref="ContentMember"/>), if it carries them.</summary>
    public static JsonElement? Content(ChatCompletionMessage m) =>
        m.AdditionalProperties?.TryGetValue(ContentMember, out var blocks) == true && blocks.ValueKind == JsonValueKind.Array ? blocks : null;

    /// <summary>
    /// For a deployment that has no form for them: a tool of another type than <c>function</c> (<paramref name="anyType"/>;
    /// else only Anthropic's own types), or a turn holding a server tool's blocks, is named and the request not sent.
    /// </summary>
    public static void Refuse(ChatCompletionRequest request, string deployment, bool anyType)
    {
        var tools = request.Tools;
        for (var i = 0; i < (tools?.Count ?? 0); i++)
        {
            var type = tools![i].Type;
            if (anyType && type == "function" && tools[i].Function is null)
            {
                throw ProviderException.Unsupported($"tools[{i}].function", $"tools[{i}] is a function tool without its function; the request was not sent to this deployment.");
            }

            if (type != "function" && (anyType || IsAnthropicToolType(type)))
            {
                throw ProviderException.Unsupported($"tools[{i}].type",
                    $"tools[{i}] is a tool of type '{ProviderException.Quoted(type)}', which {deployment} has no form for (only Claude runs Anthropic's own tools); the request was not sent to this deployment.");
            }
        }

        foreach (var member in (ReadOnlySpan<string>)[McpServers, Container])
        {
            if (request.AdditionalProperties?.ContainsKey(member) == true)
            {
                throw ProviderException.Unsupported(member,
                    $"{member} is Claude's own (its MCP connector, its code execution container), which {deployment} has no form for; the request was not sent to this deployment.");
            }
        }

        var messages = request.Messages;
        for (var i = 0; i < messages.Count; i++)
        {
            // (A caller's search results, in a user turn or a tool's result, have a text form: those go as text.)
            if (messages[i].Role == ChatRoles.Assistant && messages[i].AdditionalProperties is not null && Content(messages[i]) is not null)
            {
                throw ProviderException.Unsupported($"messages[{i}].{ContentMember}",
                    $"messages[{i}] holds the blocks of Claude's server tools (a web search's results, say), which {deployment} has no form for; the request was not sent to this deployment.");
            }
        }
    }
}
