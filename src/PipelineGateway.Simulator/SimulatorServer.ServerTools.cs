using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Simulator;

/// <summary>
/// Claude's web search server tool, simulated: a request offering <c>web_search_20250305</c> is answered, the first time
/// in a conversation, with a search — the text before it, the <c>server_tool_use</c> block, the
/// <c>web_search_tool_result</c> with an encrypted result, then text citing it — whole or streamed as Claude writes
/// them. Like Claude, the simulator refuses a tool it does not know and a search result given back altered (its
/// <c>encrypted_content</c> is signed), so a gateway that drops or rewrites these blocks on their way is seen.
/// </summary>
public sealed partial class SimulatorServer
{
    /// <summary>Anthropic's own tool types the simulator knows (Claude refuses any other with a 400).</summary>
    private static readonly HashSet<string> KnownAnthropicTools =
    [
        "web_search_20250305", "web_fetch_20250910", "code_execution_20250825", "bash_20250124",
        "text_editor_20250124", "text_editor_20250429", "text_editor_20250728", "computer_20250124",
    ];

    private const string WebSearchTool = "web_search_20250305";

    /// <summary>Tools Claude serves only with a beta asked for in the <c>anthropic-beta</c> header.</summary>
    private static readonly Dictionary<string, string> BetaTools = new(StringComparer.Ordinal)
    {
        ["web_fetch_20250910"] = "web-fetch-2025-09-10",
        ["code_execution_20250825"] = "code-execution-2025-08-25",
    };

    /// <summary>
    /// The answer up to the first of its words that is one of the request's stop sequences (matched word by word: the
    /// simulator's text is words), as a model stops there; <paramref name="matched"/> is that sequence, else null.
    /// </summary>
    private static string[] StopAt(string[] words, ChatCompletionRequest request, out string? matched)
    {
        matched = null;
        if (request.Stop is not { Count: > 0 } stops)
        {
            return words;
        }

        var at = Array.FindIndex(words, stops.Contains);
        if (at < 0)
        {
            return words;
        }

        matched = words[at];
        return words[..at];
    }

    /// <summary>What Claude would refuse in the request's server tools and their blocks, or null.</summary>
    private static string? ServerToolError(ChatCompletionRequest request, string? betas)
    {
        for (var i = 0; i < (request.Tools?.Count ?? 0); i++)
        {
            var tool = request.Tools![i];
            if (tool.Type == "function")
            {
                continue;
            }

            if (!KnownAnthropicTools.Contains(tool.Type))
            {
                return $"tools.{i}: Input tag '{tool.Type}' found using 'type' does not match any of the expected tags";
            }

            if (BetaTools.TryGetValue(tool.Type, out var beta) && !(betas ?? string.Empty).Split(',', StringSplitOptions.TrimEntries).Contains(beta))
            {
                return $"tools.{i}: the tool '{tool.Type}' requires the beta '{beta}' in the anthropic-beta header";
            }

            var name = tool.AdditionalProperties?.TryGetValue("name", out var n) == true && n.ValueKind == JsonValueKind.String ? n.GetString() : null;
            if (tool.Type == WebSearchTool && name != "web_search")
            {
                return $"tools.{i}.name: Input should be 'web_search'";
            }

            if (tool.AdditionalProperties?.TryGetValue("max_uses", out var uses) == true && !(uses.ValueKind == JsonValueKind.Number && uses.TryGetInt32(out var u) && u > 0))
            {
                return $"tools.{i}.max_uses: Input should be greater than 0";
            }
        }

        for (var i = 0; i < request.Messages.Count; i++)
        {
            if (ServerTools.Content(request.Messages[i]) is not { } blocks)
            {
                continue;
            }

            var calls = new HashSet<string>(StringComparer.Ordinal);
            var j = 0;
            foreach (var block in blocks.EnumerateArray())
            {
                var type = Member(block, "type");
                if (type == "server_tool_use" && Member(block, "id") is { } id)
                {
                    calls.Add(id);
                }
                else if (type == "web_search_tool_result")
                {
                    if (Member(block, "tool_use_id") is not { } callId || !calls.Contains(callId))
                    {
                        return $"messages.{i}.content.{j}: web_search_tool_result block(s) provided without a preceding server_tool_use block with the same id";
                    }

                    foreach (var result in block.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.Array ? content.EnumerateArray() : default)
                    {
                        if (Member(result, "encrypted_content") != Seal(Member(result, "url") ?? string.Empty))
                        {
                            return $"messages.{i}.content.{j}: Invalid `encrypted_content` in web_search_result";
                        }
                    }
                }

                j++;
            }
        }

        return null;
    }

    /// <summary>The query to search for: the request offers web search and no search was made in the conversation yet.</summary>
    private static string? WebSearchQuery(ChatCompletionRequest request, string[] words)
    {
        if (request.Tools?.Exists(static t => t.Type == WebSearchTool) != true || request.Messages[^1].Role != ChatRoles.User
            || request.Messages.Exists(static m => ServerTools.Content(m) is not null))
        {
            return null;
        }

        return string.Join(' ', words.Take(3));
    }

    /// <summary>The simulator's seal on a search result (Claude's are opaque; this one is checked as Claude checks its own).</summary>
    private static string Seal(string url) => "sim_enc_" + SimulatedText.StableHash(url).ToString("x8", System.Globalization.CultureInfo.InvariantCulture);

    private static string? Member(JsonElement o, string name) =>
        o.ValueKind == JsonValueKind.Object && o.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private const string SearchId = "srvtoolu_sim1";

    private static string SearchUrl(string query) => "https://example.com/search/" + Uri.EscapeDataString(query);

    /// <summary>The search answer's blocks, as Claude writes them whole.</summary>
    private static string SearchBlocks(string query, string[] words)
    {
        var url = SearchUrl(query);
        var said = string.Join(' ', words);
        return JsonSerializer.Serialize(new object[]
        {
            new Dictionary<string, object> { ["type"] = "text", ["text"] = "Let me search." },
            new Dictionary<string, object> { ["type"] = "server_tool_use", ["id"] = SearchId, ["name"] = "web_search", ["input"] = new Dictionary<string, string> { ["query"] = query } },
            SearchResult(query, url),
            new Dictionary<string, object> { ["type"] = "text", ["text"] = said, ["citations"] = new[] { Citation(query, url, said) } },
        });
    }

    private static Dictionary<string, object> SearchResult(string query, string url) => new()
    {
        ["type"] = "web_search_tool_result",
        ["tool_use_id"] = SearchId,
        ["content"] = new[]
        {
            new Dictionary<string, object?> { ["type"] = "web_search_result", ["url"] = url, ["title"] = "About " + query, ["encrypted_content"] = Seal(url), ["page_age"] = "December 1, 2026" },
        },
    };

    private static Dictionary<string, object> Citation(string query, string url, string said) => new()
    {
        ["type"] = "web_search_result_location",
        ["url"] = url,
        ["title"] = "About " + query,
        ["encrypted_index"] = "sim_idx_" + SimulatedText.StableHash(said).ToString("x8", System.Globalization.CultureInfo.InvariantCulture),
        ["cited_text"] = said,
    };

    /// <summary>The search answer whole.</summary>
    private static async Task WriteSearchAsync(HttpContext ctx, string id, string model, string query, string[] words, TokenUsage usage)
    {
        var message = AnthropicResponses.ToAnthropic(new ChatCompletionResponse { Id = id, Model = model, Choices = [new ChatChoice { Message = ChatCompletionMessage.Assistant(string.Empty), FinishReason = FinishReasons.Stop }], Usage = usage });
        message.Content = JsonSerializer.Deserialize(SearchBlocks(query, words), AnthropicJsonContext.Default.ListAnthropicContentBlock)!;
        ctx.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(ctx.Response.Body, message, AnthropicJsonContext.Default.AnthropicMessage, ctx.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>The search answer streamed as Claude streams it: each block's start, its deltas (the query's JSON, a citation, the text), its stop.</summary>
    private static async Task StreamSearchAsync(HttpContext ctx, string id, string model, string query, string[] words, TokenUsage usage)
    {
        StartSse(ctx);
        var url = SearchUrl(query);
        var said = string.Join(' ', words);
        var queryJson = JsonSerializer.Serialize(new Dictionary<string, string> { ["query"] = query });
        var half = queryJson.Length / 2;
        var content = new List<object>
        {
            Start(0, new Dictionary<string, object> { ["type"] = "text", ["text"] = string.Empty }),
            Delta(0, new Dictionary<string, object> { ["type"] = "text_delta", ["text"] = "Let me search." }),
            Stop(0),
            Start(1, new Dictionary<string, object> { ["type"] = "server_tool_use", ["id"] = SearchId, ["name"] = "web_search", ["input"] = new Dictionary<string, object>() }),
            Delta(1, new Dictionary<string, object> { ["type"] = "input_json_delta", ["partial_json"] = queryJson[..half] }),
            Delta(1, new Dictionary<string, object> { ["type"] = "input_json_delta", ["partial_json"] = queryJson[half..] }),
            Stop(1),
            Start(2, SearchResult(query, url)),
            Stop(2),
            Start(3, new Dictionary<string, object> { ["type"] = "text", ["text"] = string.Empty }),
            Delta(3, new Dictionary<string, object> { ["type"] = "citations_delta", ["citation"] = Citation(query, url, said) }),
        };
        for (var i = 0; i < words.Length; i++)
        {
            content.Add(Delta(3, new Dictionary<string, object> { ["type"] = "text_delta", ["text"] = i == 0 ? words[i] : " " + words[i] }));
        }

        content.Add(Stop(3));

        var writer = new AnthropicStreamWriter(usage);
        var chunks = new List<ChatCompletionChunk> { new() { Id = id, Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Role = ChatRoles.Assistant } }] } };
        foreach (var e in content)
        {
            var json = JsonSerializer.SerializeToUtf8Bytes(e);
            using var doc = JsonDocument.Parse(json);
            chunks.Add(new ChatCompletionChunk { Id = id, Model = model, Choices = [], AnthropicEvent = (doc.RootElement.GetProperty("type").GetString()!, json) });
        }

        chunks.Add(new ChatCompletionChunk { Id = id, Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta(), FinishReason = FinishReasons.Stop }] });
        chunks.Add(new ChatCompletionChunk { Id = id, Model = model, Choices = [], Usage = usage });
        foreach (var e in chunks.SelectMany(writer.OnChunk).Concat(writer.Finish()))
        {
            await WriteSseAsync(ctx, e.Name, e.Json).ConfigureAwait(false);
        }

        static Dictionary<string, object> Start(int index, object block) => new() { ["type"] = "content_block_start", ["index"] = index, ["content_block"] = block };
        static Dictionary<string, object> Delta(int index, object delta) => new() { ["type"] = "content_block_delta", ["index"] = index, ["delta"] = delta };
        static Dictionary<string, object> Stop(int index) => new() { ["type"] = "content_block_stop", ["index"] = index };
    }
}
