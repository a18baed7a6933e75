using System.Buffers;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>
/// Translates between the canonical (OpenAI) schema and Anthropic Messages: requests out, responses and
/// stream events back. System messages go to the top-level <c>system</c>; consecutive same-role messages are
/// merged; tool calls become <c>tool_use</c> blocks and tool messages <c>tool_result</c> blocks; images become
/// base64 or URL image blocks; <c>stop</c> becomes <c>stop_sequences</c>.
/// </summary>
internal static class AnthropicTranslator
{
    /// <summary>Writes the Anthropic request body for a canonical request.</summary>
    /// <summary>
    /// The tool that carries a JSON answer (<c>response_format</c> <c>json_object</c> or <c>json_schema</c>): Anthropic has
    /// no response format, so the schema becomes this tool's input schema, the model is made to call it, and its input
    /// comes back as the answer's content (<see cref="ToCanonical"/>, <see cref="StreamState"/>).
    /// </summary>
    internal const string JsonTool = "json_response";

    /// <summary>True when the request asks for a JSON answer, which travels as <see cref="JsonTool"/>'s input.</summary>
    public static bool AnswersInJson(ChatCompletionRequest request) =>
        request.ResponseFormat is { ValueKind: JsonValueKind.Object } f
        && f.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String
        && (type.ValueEquals("json_object"u8) || type.ValueEquals("json_schema"u8));

    /// <param name="counting">
    /// The body of <c>/v1/messages/count_tokens</c>: only what it takes (model, system, messages, tools, tool_choice,
    /// thinking) — Claude refuses any other member there.
    /// </param>
    public static void WriteRequest(IBufferWriter<byte> output, ChatCompletionRequest request, string model, bool stream, int defaultMaxTokens, bool counting = false)
    {
        OpenAIOnlyParameters.Check(request, "Anthropic");
        using var w = new Utf8JsonWriter(output, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder });
        w.WriteStartObject();
        w.WriteString("model", model);
        if (!counting)
        {
            w.WriteNumber("max_tokens", request.RequestedCompletionTokens ?? defaultMaxTokens);
        }

        WriteSystem(w, request.Messages);

        w.WriteStartArray("messages");
        string? openRole = null;
        for (var i = 0; i < request.Messages.Count; i++)
        {
            var m = request.Messages[i];
            if (m.Role is ChatRoles.System or ChatRoles.Developer)
            {
                continue;
            }

            var role = m.Role == ChatRoles.Assistant ? "assistant" : "user"; // tool results travel as user turns
            if (role != openRole)
            {
                if (openRole is not null)
                {
                    w.WriteEndArray();
                    w.WriteEndObject();
                }

                w.WriteStartObject();
                w.WriteString("role", role);
                w.WriteStartArray("content");
                openRole = role;
            }

            WriteBlocks(w, m, i);
        }

        if (openRole is not null)
        {
            w.WriteEndArray();
            w.WriteEndObject();
        }

        w.WriteEndArray();

        if (!counting)
        {
            WriteSampling(w, request);
        }

        // Claude's MCP connector, code execution container and context editing, as a /v1/messages caller sent them
        // (count_tokens takes the MCP servers, whose tools count).
        foreach (var member in ServerTools.RequestMembers)
        {
            if ((!counting || member == ServerTools.McpServers) && request.AdditionalProperties?.TryGetValue(member, out var value) == true)
            {
                w.WritePropertyName(member);
                value.WriteTo(w);
            }
        }

        if (!counting && request.AdditionalProperties?.TryGetValue(AnthropicCodec.OutputConfig, out var outputConfig) == true && outputConfig.ValueKind == JsonValueKind.Object)
        {
            // Claude's output settings as a /v1/messages caller sent them (effort; its format is the canonical response_format).
            w.WritePropertyName(AnthropicCodec.OutputConfig);
            outputConfig.WriteTo(w);
        }

        if (request.AdditionalProperties?.TryGetValue(ThinkingBlocks.Parameter, out var thinking) == true && thinking.ValueKind == JsonValueKind.Object)
        {
            w.WritePropertyName(ThinkingBlocks.Parameter);
            thinking.WriteTo(w);
        }
        else if (!counting && ThinkingBudget(request, request.RequestedCompletionTokens ?? defaultMaxTokens) is { } budget)
        {
            w.WriteStartObject(ThinkingBlocks.Parameter);
            w.WriteString("type", "enabled");
            w.WriteNumber("budget_tokens", budget);
            w.WriteEndObject();
        }


        var json = AnswersInJson(request);
        var tools = request.Tools ?? [];
        var allowed = AllowedTools(request.ToolChoice);
        if (allowed is not null && !tools.Exists(t => Allows(allowed, t)))
        {
            throw ProviderException.Unsupported("tool_choice", "tool_choice.allowed_tools names none of the request's tools; the request was not sent to this deployment.");
        }

        if (tools.Count > 0 || json)
        {
            w.WriteStartArray("tools");
            for (var i = 0; i < tools.Count; i++)
            {
                var tool = tools[i];
                if (allowed is not null && !Allows(allowed, tool))
                {
                    continue; // Claude has no allowed subset: the tools it may not call are not offered
                }

                if (tool.Type != "function")
                {
                    WriteAnthropicTool(w, tool, i);
                    continue;
                }

                if (tool.Function is not { } f)
                {
                    throw ProviderException.Unsupported($"tools[{i}].function", $"tools[{i}] is a function tool without its function; the request was not sent to this deployment.");
                }

                if (json && f.Name == JsonTool)
                {
                    throw ProviderException.Unsupported("tools", $"A tool is named '{JsonTool}', the name the gateway gives Anthropic for response_format's JSON answer; the request was not sent to this deployment.");
                }

                w.WriteStartObject();
                w.WriteString("name", f.Name);
                if (f.Description is not null)
                {
                    w.WriteString("description", f.Description);
                }

                w.WritePropertyName("input_schema");
                if (f.Parameters is { ValueKind: JsonValueKind.Object } schema)
                {
                    schema.WriteTo(w);
                }
                else
                {
                    w.WriteRawValue("""{"type":"object","properties":{}}""");
                }

                WriteCacheControl(w, tool.AdditionalProperties);
                w.WriteEndObject();
            }

            if (json)
            {
                WriteJsonTool(w, request.ResponseFormat!.Value);
            }

            w.WriteEndArray();
            WriteToolChoice(w, request.ToolChoice, ParallelToolCalls(request) == false, json, tools.Count > 0);
        }

        if (request.User is not null && !counting)
        {
            w.WriteStartObject("metadata");
            w.WriteString("user_id", request.User);
            w.WriteEndObject();
        }

        if (stream)
        {
            w.WriteBoolean("stream", true);
        }

        w.WriteEndObject();
    }

    /// <summary>
    /// One of Anthropic's own tools (<see cref="ServerTools"/>), as the caller wrote it: its type and every other member.
    /// Another type (OpenAI's <c>custom</c>, say) has no form here: refused, not dropped.
    /// </summary>
    private static void WriteAnthropicTool(Utf8JsonWriter w, ToolDefinition tool, int i)
    {
        if (!ServerTools.IsAnthropicToolType(tool.Type))
        {
            throw ProviderException.Unsupported($"tools[{i}].type", $"tools[{i}] is a tool of type '{ProviderException.Quoted(tool.Type)}', which Claude has no form for (its tools are functions and Anthropic's own, such as 'web_search_20250305'); the request was not sent to this deployment.");
        }

        w.WriteStartObject();
        w.WriteString("type", tool.Type);
        foreach (var (name, value) in tool.AdditionalProperties ?? [])
        {
            if (name != "type")
            {
                w.WritePropertyName(name);
                value.WriteTo(w);
            }
        }

        w.WriteEndObject();
    }

    /// <summary>What shapes the answer (not taken by count_tokens): stop sequences, temperature, top_p, top_k.</summary>
    private static void WriteSampling(Utf8JsonWriter w, ChatCompletionRequest request)
    {
        if (request.Stop is { Count: > 0 } stop)
        {
            w.WriteStartArray("stop_sequences");
            foreach (var s in stop)
            {
                w.WriteStringValue(s);
            }

            w.WriteEndArray();
        }

        if (request.Temperature is { } t)
        {
            // OpenAI's range is 0..2, Anthropic's 0..1.
            w.WriteNumber("temperature", Math.Min(t, 1.0));
        }

        if (request.TopP is { } p)
        {
            w.WriteNumber("top_p", p);
        }

        // Anthropic's own top_k and thinking (from /v1/messages, or an OpenAI-format caller that sets them, as LiteLLM
        // accepts them): carried, not dropped.
        if (request.AdditionalProperties?.TryGetValue("top_k", out var topK) == true && topK.ValueKind == JsonValueKind.Number)
        {
            w.WritePropertyName("top_k");
            topK.WriteTo(w);
        }

        // The capacity tier in Anthropic's words: "default" (standard capacity only) is "standard_only"; "auto" and
        // "priority" are "auto" (priority capacity when the organisation has it); OpenAI's "flex" and "scale" have no
        // Anthropic form and only tune how the answer is served: dropped, as before.
        if (request.AdditionalProperties?.TryGetValue(AnthropicCodec.ServiceTier, out var tier) == true && tier.ValueKind == JsonValueKind.String
            && (tier.ValueEquals("default"u8) ? "standard_only" : tier.ValueEquals("auto"u8) || tier.ValueEquals("priority"u8) ? "auto" : null) is { } anthropicTier)
        {
            w.WriteString(AnthropicCodec.ServiceTier, anthropicTier);
        }
    }

    /// <summary>
    /// OpenAI's <c>reasoning_effort</c> as Claude's extended thinking, as LiteLLM maps it: <c>low</c> 1,024 thinking tokens,
    /// <c>medium</c> 2,048, <c>high</c> 4,096 (<c>xhigh</c> 8,192) — within <c>max_tokens</c>, which counts them on both APIs (at least 1,024 and
    /// fewer than <c>max_tokens</c>, Claude's bounds). None (the effort only tunes the answer, so it is dropped, not
    /// refused) when Claude could not think here: <c>max_tokens</c> too small, a temperature other than 1 or <c>top_k</c>
    /// set, or a tool call forced (a named function, <c>required</c>, a JSON response format) — Claude's own limits on thinking
    /// — or a tool loop's next step whose last assistant turn called tools without its thinking blocks: Claude refuses a
    /// thinking request then ("a final assistant message must start with a thinking block"), and OpenAI-format clients
    /// (the OpenAI SDKs, the Vercel AI SDK's chat provider) never give <c>thinking_blocks</c> back — every tool loop's
    /// second step failed. The step is answered without thinking, as LiteLLM does; a caller that gives the blocks back
    /// (LiteLLM's clients, the Responses route's reasoning items) keeps thinking.
    /// </summary>
    private static int? ThinkingBudget(ChatCompletionRequest request, int maxTokens)
    {
        if (request.AdditionalProperties?.TryGetValue("reasoning_effort", out var effort) != true || effort.ValueKind != JsonValueKind.String)
        {
            return null;
        }

        var wanted = effort.GetString() switch
        {
            "low" => 1024,
            "medium" => 2048,
            "high" => 4096,
            "xhigh" => 8192, // GPT-5.1's step past high: the doubling on (it asked for the most and got no thinking)
            _ => 0, // minimal, none
        };
        var forced = AnswersInJson(request)
            || request.ToolChoice is { ValueKind: JsonValueKind.Object }
            || request.ToolChoice is { ValueKind: JsonValueKind.String } c && c.ValueEquals("required"u8);
        if (wanted == 0 || forced || request.Temperature is { } t && t != 1 || request.AdditionalProperties.ContainsKey("top_k") || ToolStepWithoutThinking(request))
        {
            return null;
        }

        var budget = Math.Min(wanted, maxTokens - 1);
        return budget >= 1024 ? budget : null;
    }

    /// <summary>The last assistant turn called tools and carries no thinking blocks (see <see cref="ThinkingBudget"/>).</summary>
    private static bool ToolStepWithoutThinking(ChatCompletionRequest request)
    {
        for (var i = request.Messages.Count - 1; i >= 0; i--)
        {
            if (request.Messages[i] is { Role: ChatRoles.Assistant } last)
            {
                return last.ToolCalls is { Count: > 0 } && ThinkingBlocks.Read(last.AdditionalProperties).Count == 0;
            }
        }

        return false;
    }

    /// <summary>
    /// The system and developer messages as Anthropic's top-level <c>system</c>: their text joined by blank lines, or —
    /// when a part carries <c>cache_control</c> (prompt caching) — as text blocks, each keeping its own.
    /// </summary>
    private static void WriteSystem(Utf8JsonWriter w, List<ChatCompletionMessage> messages)
    {
        var system = new StringBuilder();
        var cached = false;
        for (var i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            if (m.Role is ChatRoles.System or ChatRoles.Developer)
            {
                OnlyText(m.Content, i, "a system message's content");
                cached |= m.Content?.Parts?.Exists(static p => CacheControl(p.AdditionalProperties) is not null) == true;
                if (system.Length > 0)
                {
                    system.Append("\n\n");
                }

                system.Append(m.Content?.GetText());
            }
        }

        if (system.Length == 0)
        {
            return;
        }

        if (!cached)
        {
            w.WriteString("system", system.ToString());
            return;
        }

        w.WriteStartArray("system");
        foreach (var m in messages)
        {
            if (m.Role is ChatRoles.System or ChatRoles.Developer && m.Content is { } content)
            {
                if (content.Parts is { } parts)
                {
                    foreach (var part in parts)
                    {
                        WriteText(w, part.Text, part.AdditionalProperties);
                    }
                }
                else
                {
                    WriteText(w, content.Text);
                }
            }
        }

        w.WriteEndArray();
    }

    /// <summary>An Anthropic <c>cache_control</c> carried on a canonical part, message or tool, if any.</summary>
    private static JsonElement? CacheControl(Dictionary<string, JsonElement>? extra) =>
        extra?.TryGetValue(AnthropicCodec.CacheControlMember, out var c) == true && c.ValueKind == JsonValueKind.Object ? c : null;

    private static void WriteCacheControl(Utf8JsonWriter w, Dictionary<string, JsonElement>? extra)
    {
        if (CacheControl(extra) is { } c)
        {
            w.WritePropertyName(AnthropicCodec.CacheControlMember);
            c.WriteTo(w);
        }
    }

    /// <summary>
    /// One message's blocks. What Anthropic has no form for is not dropped: <see cref="ProviderException.Unsupported"/>
    /// names it, and the request may go to another deployment as it is (<see cref="ProviderException.NotSent"/>).
    /// </summary>
    private static void WriteBlocks(Utf8JsonWriter w, ChatCompletionMessage m, int index)
    {
        if (m.Role == ChatRoles.Tool)
        {
            w.WriteStartObject();
            w.WriteString("type", "tool_result");
            w.WriteString("tool_use_id", ToolIds.ForClaude(m.ToolCallId));
            if (m.AdditionalProperties is not null && ServerTools.Content(m) is { } resultAsWritten)
            {
                // Search results in the tool's result (an Anthropic-format caller's): as the caller wrote them.
                w.WritePropertyName("content");
                resultAsWritten.WriteTo(w);
            }
            else if (m.Content?.Parts is { } resultParts && resultParts.Exists(static p => p.Type != "text"))
            {
                // A tool's result with an image: Anthropic takes text and image blocks there.
                w.WriteStartArray("content");
                WriteParts(w, resultParts, index, toolResult: true);
                w.WriteEndArray();
            }
            else
            {
                w.WriteString("content", m.Content?.GetText() ?? string.Empty);
            }

            if (m.AdditionalProperties?.TryGetValue(AnthropicCodec.IsErrorMember, out var isError) == true && isError.ValueKind == JsonValueKind.True)
            {
                w.WriteBoolean(AnthropicCodec.IsErrorMember, true);
            }

            WriteCacheControl(w, m.AdditionalProperties);
            w.WriteEndObject();
            return;
        }

        if (m.Role is ChatRoles.Assistant or ChatRoles.User && m.AdditionalProperties is not null && ServerTools.Content(m) is { } written)
        {
            // A turn in which Claude used its server tools (or cited sources), or a caller's turn giving it search
            // results: its blocks as written, in their order — the canonical fields hold only what other providers can
            // read of it.
            foreach (var block in written.EnumerateArray())
            {
                block.WriteTo(w);
            }

            return;
        }

        // Claude's thinking in that turn goes first, as Claude wrote it (its signature is checked). A block without a
        // signature is not Claude's (a server that speaks Claude's format loosely wrote it): Claude refuses the request
        // it is in, and takes an earlier turn without its thinking — so it is left out, not sent to fail.
        foreach (var block in ThinkingBlocks.Read(m.AdditionalProperties))
        {
            if (block.Type != ThinkingBlock.Redacted && string.IsNullOrEmpty(block.Signature))
            {
                continue;
            }

            w.WriteStartObject();
            w.WriteString("type", block.Type);
            if (block.Type == ThinkingBlock.Redacted)
            {
                w.WriteString("data", block.Data);
            }
            else
            {
                w.WriteString("thinking", block.Thinking);
                w.WriteString("signature", block.Signature);
            }

            w.WriteEndObject();
        }

        if (m.Content is { } content)
        {
            if (content.Text is not null)
            {
                WriteText(w, content.Text);
            }
            else if (content.Parts is not null)
            {
                WriteParts(w, content.Parts, index, toolResult: false);
            }
        }

        if (m.ToolCalls is { } calls)
        {
            for (var j = 0; j < calls.Count; j++)
            {
                var call = calls[j];
                w.WriteStartObject();
                w.WriteString("type", "tool_use");
                w.WriteString("id", ToolIds.ForClaude(call.Id));
                w.WriteString("name", call.Function?.Name);
                w.WritePropertyName("input");
                WriteArguments(w, call.Function?.Arguments, index, j);
                w.WriteEndObject();
            }
        }
    }

    private static void WriteParts(Utf8JsonWriter w, List<ContentPart> parts, int index, bool toolResult)
    {
        for (var j = 0; j < parts.Count; j++)
        {
            var part = parts[j];
            switch (part.Type)
            {
                case "text":
                    WriteText(w, part.Text, part.AdditionalProperties);
                    break;
                case "image_url" when part.ImageUrl is { } image:
                    WriteImage(w, image.Url, part.AdditionalProperties);
                    break;
                case "file" when !toolResult && PdfData(part) is { } pdf:
                    WriteDocument(w, pdf, FileName(part), part.AdditionalProperties);
                    break;
                default:
                    throw ProviderException.Unsupported(
                        $"messages[{index}].content[{j}]",
                        $"messages[{index}].content[{j}] is a '{ProviderException.Quoted(part.Type)}' part, which Anthropic does not take in {(toolResult ? "a tool result (text and image_url parts)" : "a message (text, image_url, and file parts with a base64 PDF in file_data)")}; the request was not sent to this deployment.");
            }
        }
    }

    /// <summary>The base64 of a <c>file</c> part's <c>file_data</c> when it is a PDF data URL (OpenAI's inline file), else null.</summary>
    private static string? PdfData(ContentPart part)
    {
        const string Prefix = "data:application/pdf;base64,";
        return part.AdditionalProperties?.TryGetValue("file", out var file) == true
            && file.ValueKind == JsonValueKind.Object
            && file.TryGetProperty("file_data", out var data)
            && data.ValueKind == JsonValueKind.String
            && data.GetString() is { } url
            && url.StartsWith(Prefix, StringComparison.Ordinal)
            ? url[Prefix.Length..]
            : null;
    }

    /// <summary>A <c>file</c> part's <c>filename</c>, if it has one (a document's title).</summary>
    private static string? FileName(ContentPart part) =>
        part.AdditionalProperties?.TryGetValue("file", out var file) == true && file.ValueKind == JsonValueKind.Object
        && file.TryGetProperty("filename", out var name) && name.ValueKind == JsonValueKind.String ? name.GetString() : null;

    private static void WriteDocument(Utf8JsonWriter w, string base64, string? title, Dictionary<string, JsonElement>? extra)
    {
        w.WriteStartObject();
        w.WriteString("type", "document");
        w.WriteStartObject("source");
        w.WriteString("type", "base64");
        w.WriteString("media_type", "application/pdf");
        w.WriteString("data", base64);
        w.WriteEndObject();
        if (title is not null)
        {
            w.WriteString("title", title);
        }

        WriteCacheControl(w, extra);
        w.WriteEndObject();
    }

    /// <summary>A system message's content goes to Anthropic's <c>system</c> text: a part other than text has no place there.</summary>
    private static void OnlyText(MessageContent? content, int index, string where)
    {
        if (content?.Parts is not { } parts)
        {
            return;
        }

        for (var j = 0; j < parts.Count; j++)
        {
            if (parts[j].Type != "text")
            {
                throw ProviderException.Unsupported(
                    $"messages[{index}].content[{j}]",
                    $"messages[{index}].content[{j}] is a '{ProviderException.Quoted(parts[j].Type)}' part, which Anthropic does not take in {where} (text only); the request was not sent to this deployment.");
            }
        }
    }

    private static void WriteText(Utf8JsonWriter w, string? text, Dictionary<string, JsonElement>? extra = null)
    {
        // Anthropic rejects empty text blocks.
        if (string.IsNullOrEmpty(text))
        {
            return;
        }

        w.WriteStartObject();
        w.WriteString("type", "text");
        w.WriteString("text", text);
        WriteCacheControl(w, extra);
        w.WriteEndObject();
    }

    private static void WriteImage(Utf8JsonWriter w, string url, Dictionary<string, JsonElement>? extra)
    {
        w.WriteStartObject();
        w.WriteString("type", "image");
        w.WriteStartObject("source");
        if (url.StartsWith("data:", StringComparison.Ordinal) && url.IndexOf(";base64,", StringComparison.Ordinal) is var comma and > 5)
        {
            w.WriteString("type", "base64");
            w.WriteString("media_type", url[5..comma]);
            w.WriteString("data", url[(comma + 8)..]);
        }
        else
        {
            w.WriteString("type", "url");
            w.WriteString("url", url);
        }

        w.WriteEndObject();
        WriteCacheControl(w, extra);
        w.WriteEndObject();
    }

    /// <summary>A tool call's arguments as Anthropic's <c>input</c> object (<see cref="ToolArguments"/>).</summary>
    private static void WriteArguments(Utf8JsonWriter w, string? arguments, int index, int call)
    {
        if (string.IsNullOrWhiteSpace(arguments))
        {
            w.WriteStartObject();
            w.WriteEndObject();
            return;
        }

        using var doc = ToolArguments.ParseObject(arguments, out var problem) ?? throw ToolArguments.NotAnObject(index, call, problem, "Anthropic");
        doc.RootElement.WriteTo(w);
    }

    /// <summary>
    /// <see cref="JsonTool"/>: its input schema is <c>json_schema.schema</c> (an object at its root: a tool's input is
    /// one), or any object for <c>json_object</c>.
    /// </summary>
    private static void WriteJsonTool(Utf8JsonWriter w, JsonElement format)
    {
        JsonElement? schema = null;
        string? description = null;
        if (format.TryGetProperty("json_schema", out var js) && js.ValueKind == JsonValueKind.Object)
        {
            if (js.TryGetProperty("schema", out var s) && s.ValueKind == JsonValueKind.Object)
            {
                if (s.TryGetProperty("type", out var root) && !(root.ValueKind == JsonValueKind.String && root.ValueEquals("object"u8)))
                {
                    throw ProviderException.Unsupported("response_format.json_schema.schema",
                        "response_format.json_schema.schema must describe an object at its root for an Anthropic deployment (the answer travels as a tool's input, which is an object); the request was not sent to this deployment.");
                }

                schema = s;
            }

            if (js.TryGetProperty("description", out var d) && d.ValueKind == JsonValueKind.String)
            {
                description = d.GetString();
            }
        }

        w.WriteStartObject();
        w.WriteString("name", JsonTool);
        w.WriteString("description", description ?? "Give the answer as this tool's input.");
        w.WritePropertyName("input_schema");
        if (schema is { } given)
        {
            given.WriteTo(w);
        }
        else
        {
            w.WriteRawValue("""{"type":"object"}""");
        }

        w.WriteEndObject();
    }

    /// <summary>OpenAI's <c>parallel_tool_calls</c> (carried as an unknown field), if the caller set it.</summary>
    private static bool? ParallelToolCalls(ChatCompletionRequest request) =>
        request.AdditionalProperties?.TryGetValue("parallel_tool_calls", out var p) == true && p.ValueKind is JsonValueKind.True or JsonValueKind.False
            ? p.ValueKind == JsonValueKind.True
            : null;

    /// <summary>
    /// The tools an OpenAI <c>allowed_tools</c> choice lets the model call — <c>{"type":"allowed_tools","allowed_tools":{"mode":
    /// "auto"|"required","tools":[{"type":"function","function":{"name":…}}, …]}}</c> — as function names (another
    /// type of tool by <c>type:NAME</c>); null for any other choice. Claude has no such choice: the request offers it only
    /// those tools, with <c>auto</c> or <c>any</c> (it was sent as <c>auto</c> with every tool, so the model could call one
    /// the caller had ruled out). Malformed: named, not sent.
    /// </summary>
    private static HashSet<string>? AllowedTools(JsonElement? choice)
    {
        if (choice is not { ValueKind: JsonValueKind.Object } c || !c.TryGetProperty("type", out var type) || !type.ValueEquals("allowed_tools"u8))
        {
            return null;
        }

        if (!c.TryGetProperty("allowed_tools", out var allowed) || allowed.ValueKind != JsonValueKind.Object
            || !allowed.TryGetProperty("mode", out var mode) || !(mode.ValueEquals("auto"u8) || mode.ValueEquals("required"u8))
            || !allowed.TryGetProperty("tools", out var list) || list.ValueKind != JsonValueKind.Array)
        {
            throw ProviderException.Unsupported("tool_choice", "tool_choice.allowed_tools must have a mode ('auto' or 'required') and a list of tools; the request was not sent to this deployment.");
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in list.EnumerateArray())
        {
            if (entry.ValueKind != JsonValueKind.Object || !entry.TryGetProperty("type", out var kind) || kind.ValueKind != JsonValueKind.String)
            {
                throw ProviderException.Unsupported("tool_choice", "tool_choice.allowed_tools.tools: each entry must be an object with a type; the request was not sent to this deployment.");
            }

            if (kind.ValueEquals("function"u8))
            {
                if (!entry.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                {
                    throw ProviderException.Unsupported("tool_choice", "tool_choice.allowed_tools.tools: a function entry must name its function ({\"type\": \"function\", \"function\": {\"name\": …}}); the request was not sent to this deployment.");
                }

                names.Add(name.GetString()!);
            }
            else
            {
                names.Add("type:" + kind.GetString());
            }
        }

        return names;
    }

    private static bool Allows(HashSet<string> allowed, ToolDefinition tool) =>
        tool.Type == "function" ? tool.Function?.Name is { } name && allowed.Contains(name) : allowed.Contains("type:" + tool.Type);

    /// <summary>
    /// Anthropic's <c>tool_choice</c>; <c>parallel_tool_calls: false</c> becomes <c>disable_parallel_tool_use: true</c>
    /// (written with an <c>auto</c> choice when the caller named none, since Anthropic carries it only there).
    /// </summary>
    private static void WriteToolChoice(Utf8JsonWriter w, JsonElement? choice, bool disableParallel, bool json, bool callerTools)
    {
        if (json)
        {
            // The JSON answer must be the JSON tool's call: forced when the caller's tools may not be called (none, or
            // tool_choice "none"); otherwise some tool must be called — the caller's, or the JSON tool to answer.
            var named = choice is { ValueKind: JsonValueKind.Object } o && o.TryGetProperty("function", out var fn) && fn.TryGetProperty("name", out _);
            if (!named)
            {
                var none = choice is { ValueKind: JsonValueKind.String } s && s.ValueEquals("none"u8);
                w.WriteStartObject("tool_choice");
                if (!callerTools || none)
                {
                    w.WriteString("type", "tool");
                    w.WriteString("name", JsonTool);
                }
                else
                {
                    w.WriteString("type", "any");
                }

                if (disableParallel)
                {
                    w.WriteBoolean("disable_parallel_tool_use", true);
                }

                w.WriteEndObject();
                return;
            }
        }

        if (choice is not { } c)
        {
            if (disableParallel)
            {
                w.WriteStartObject("tool_choice");
                w.WriteString("type", "auto");
                w.WriteBoolean("disable_parallel_tool_use", true);
                w.WriteEndObject();
            }

            return;
        }

        w.WriteStartObject("tool_choice");
        if (c.ValueKind == JsonValueKind.String)
        {
            w.WriteString("type", c.GetString() switch
            {
                "required" => "any",
                "none" => "none",
                _ => "auto",
            });
        }
        else if (c.ValueKind == JsonValueKind.Object && c.TryGetProperty("function", out var f) && f.TryGetProperty("name", out var name))
        {
            w.WriteString("type", "tool");
            w.WriteString("name", name.GetString());
        }
        else if (c.ValueKind == JsonValueKind.Object && c.TryGetProperty("type", out var type) && type.ValueEquals("allowed_tools"u8))
        {
            // The tools offered are the allowed ones (AllowedTools): the mode is Claude's choice over them.
            w.WriteString("type", c.GetProperty("allowed_tools").GetProperty("mode").ValueEquals("required"u8) ? "any" : "auto");
        }
        else if (c.ValueKind == JsonValueKind.Object)
        {
            // A choice Claude has no form for (a custom tool's, say): named, not widened to any tool.
            throw ProviderException.Unsupported("tool_choice", "tool_choice: Anthropic takes 'auto', 'none', 'required', a named function or allowed_tools; the request was not sent to this deployment.");
        }
        else
        {
            w.WriteString("type", "auto");
        }

        if (disableParallel && !(c.ValueKind == JsonValueKind.String && c.GetString() == "none"))
        {
            w.WriteBoolean("disable_parallel_tool_use", true);
        }

        w.WriteEndObject();
    }

    /// <summary>An Anthropic message as a canonical chat completion.</summary>
    public static ChatCompletionResponse ToCanonical(AnthropicMessage message, bool answersInJson = false)
    {
        var text = new StringBuilder();
        List<ToolCall>? calls = null;
        string? json = null;
        List<ThinkingBlock>? thinking = null;
        StringBuilder? reasoning = null;
        var asWritten = false; // a block the canonical fields cannot hold: the blocks are kept as Claude wrote them
        foreach (var block in message.Content)
        {
            switch (block.Type)
            {
                case "text":
                    text.Append(block.Text);
                    asWritten |= block.Extra is { Count: > 0 }; // citations
                    break;
                case ThinkingBlock.Plain:
                    (thinking ??= []).Add(new ThinkingBlock(block.Type, block.Thinking, block.Signature, null));
                    (reasoning ??= new StringBuilder()).Append(block.Thinking);
                    break;
                case ThinkingBlock.Redacted:
                    (thinking ??= []).Add(new ThinkingBlock(block.Type, null, null, block.Data));
                    break;
                case "tool_use" when answersInJson && block.Name == JsonTool:
                    json = block.Input?.GetRawText() ?? "{}"; // the answer, in the format asked for: not a tool call
                    break;
                case "tool_use":
                    (calls ??= []).Add(new ToolCall
                    {
                        Id = block.Id,
                        Type = "function",
                        Function = new FunctionCall { Name = block.Name, Arguments = block.Input?.GetRawText() ?? "{}" },
                    });
                    break;
                default:
                    asWritten = true; // a server tool's call or result (web search, code execution…)
                    break;
            }
        }

        var extra = thinking is null ? null : ThinkingBlocks.Write(null, thinking, reasoning?.ToString());
        if (asWritten && json is null)
        {
            (extra ??= [])[ServerTools.ContentMember] = JsonSerializer.SerializeToElement(message.Content, AnthropicJsonContext.Default.ListAnthropicContentBlock);
        }

        // No usage in the message (an Anthropic-compatible server that leaves it out): none, so the gateway's estimate
        // is billed (TokenCounter.EstimateUsage) — not a zero that bills nothing.
        var usage = message.Usage;
        var response = new ChatCompletionResponse
        {
            Id = message.Id,
            Model = message.Model,
            Choices =
            [
                new ChatChoice
                {
                    Message = new ChatCompletionMessage
                    {
                        Role = ChatRoles.Assistant,
                        Content = json is not null ? new MessageContent(json) : calls is not null && text.Length == 0 ? null : new MessageContent(text.ToString()),
                        ToolCalls = calls,
                        AdditionalProperties = extra,
                    },
                    FinishReason = json is not null && calls is null && message.StopReason == "tool_use" ? FinishReasons.Stop : FinishReason(message.StopReason),
                },
            ],
            Usage = usage is null ? null : Cost.ServerToolUse.With(Cost.PromptCacheTokens.Usage(usage.InputTokens, usage.OutputTokens, usage.CacheReadInputTokens ?? 0, usage.CacheCreationInputTokens ?? 0), usage.ServerToolUse),
        };
        if (json is null && AnthropicStop.IsKept(message.StopReason))
        {
            AnthropicStop.Set(response, message.StopReason!, message.StopSequence);
        }

        return response;
    }

    public static string? FinishReason(string? stopReason) => stopReason switch
    {
        null => null,
        "end_turn" or "stop_sequence" or "pause_turn" => FinishReasons.Stop,
        "max_tokens" or AnthropicStop.ContextWindow => FinishReasons.Length,
        "tool_use" => FinishReasons.ToolCalls,
        "refusal" => FinishReasons.ContentFilter,
        _ => FinishReasons.Stop,
    };

    /// <summary>The failure class of an Anthropic error type (body or stream <c>error</c> event).</summary>
    public static AttemptOutcome Classify(string? errorType, int status) => errorType switch
    {
        "overloaded_error" or "api_error" => AttemptOutcome.RetryableError,
        "rate_limit_error" => AttemptOutcome.RateLimited,
        "timeout_error" => AttemptOutcome.Timeout,
        "invalid_request_error" or "request_too_large" => AttemptOutcome.NonRetryableError,
        "authentication_error" or "permission_error" or "not_found_error" => AttemptOutcome.DeploymentUnavailable,
        _ => ProviderException.Classify(status),
    };

    /// <summary>
    /// Folds Anthropic stream events into canonical chunks, keeping what later events need
    /// (message id, model, input tokens, which content block is which tool call).
    /// </summary>
    public sealed class StreamState
    {
        private readonly Dictionary<int, int> _toolIndexByBlock = [];
        private string _id = string.Empty;
        private string _model = string.Empty;
        private int _inputTokens;
        private bool _counted; // message_start carried a usage
        private int _cacheRead;
        private int _cacheWritten;
        private readonly long _created;
        private readonly bool _answersInJson;
        private int? _jsonBlock;

        /// <summary>A server tool's block or a citation went by: the stream's chunks do not hold all of it (not cached).</summary>
        private bool _native;

        /// <param name="created">The chunks' <c>created</c>.</param>
        /// <param name="answersInJson">The request asked for a JSON answer: <see cref="JsonTool"/>'s input streams as content.</param>
        public StreamState(long created, bool answersInJson = false)
        {
            _created = created;
            _answersInJson = answersInJson;
        }

        /// <summary>Returns the chunks for one event (none for ping and block stops).</summary>
        public IEnumerable<ChatCompletionChunk> OnEvent(AnthropicStreamEvent e)
        {
            switch (e.Type)
            {
                case "message_start" when e.Message is { } m:
                    _id = m.Id;
                    _model = m.Model;
                    _counted = m.Usage is not null;
                    _inputTokens = m.Usage?.InputTokens ?? 0;
                    _cacheRead = m.Usage?.CacheReadInputTokens ?? 0;
                    _cacheWritten = m.Usage?.CacheCreationInputTokens ?? 0;
                    var first = Chunk(new ChatCompletionDelta { Role = ChatRoles.Assistant, Content = string.Empty });
                    first.AnthropicOpening = m.Usage;
                    yield return first;
                    break;
                case "content_block_start" when e.ContentBlock is { Type: ThinkingBlock.Redacted } redacted:
                    yield return Thinking(new ThinkingBlock(ThinkingBlock.Redacted, null, null, redacted.Data), null);
                    break;
                case "content_block_start" when e.ContentBlock is { Type: ThinkingBlock.Plain, Thinking: { Length: > 0 } opening }:
                    yield return Thinking(new ThinkingBlock(ThinkingBlock.Plain, opening, null, null), opening);
                    break;
                case "content_block_delta" when e.Delta is { Type: "thinking_delta", Thinking: { Length: > 0 } piece }:
                    yield return Thinking(new ThinkingBlock(ThinkingBlock.Plain, piece, null, null), piece);
                    break;
                case "content_block_delta" when e.Delta is { Type: "signature_delta", Signature: { Length: > 0 } signature }:
                    yield return Thinking(new ThinkingBlock(ThinkingBlock.Plain, string.Empty, signature, null), null);
                    break;
                case "content_block_start" when _answersInJson && e.ContentBlock is { Type: "tool_use", Name: JsonTool }:
                    _jsonBlock = e.Index ?? 0;
                    break;
                case "content_block_delta" when _jsonBlock is { } jb && (e.Index ?? 0) == jb && e.Delta is { Type: "input_json_delta" } jd:
                    yield return Chunk(new ChatCompletionDelta { Content = jd.PartialJson });
                    break;
                case "content_block_start" when e.ContentBlock is { Type: "tool_use" } block:
                    var toolIndex = _toolIndexByBlock.Count;
                    _toolIndexByBlock[e.Index ?? 0] = toolIndex;
                    yield return Chunk(new ChatCompletionDelta
                    {
                        ToolCalls = [new ToolCall { Index = toolIndex, Id = block.Id, Type = "function", Function = new FunctionCall { Name = block.Name, Arguments = string.Empty } }],
                    });
                    break;
                case "content_block_start" when e.ContentBlock is { Type: "text" } textBlock:
                    _native |= textBlock.Extra?.ContainsKey("citations") == true;
                    if (textBlock.Text is { Length: > 0 } text)
                    {
                        yield return Chunk(new ChatCompletionDelta { Content = text });
                    }

                    break;
                case "content_block_start" when e.ContentBlock is { } other && ServerTools.IsServerBlock(other.Type):
                    _native = true; // a server tool's call or result: no canonical chunk (the /v1/messages route gets the event)
                    break;
                case "content_block_delta" when e.Delta is { Type: "citations_delta" }:
                    _native = true;
                    break;
                case "content_block_delta" when e.Delta is { Type: "text_delta" } d:
                    yield return Chunk(new ChatCompletionDelta { Content = d.Text });
                    break;
                case "content_block_delta" when e.Delta is { Type: "input_json_delta" } d && _toolIndexByBlock.TryGetValue(e.Index ?? 0, out var index):
                    // Only the caller's tools' input: a server tool's (its search query, say) is not a tool call of the caller's.
                    yield return Chunk(new ChatCompletionDelta
                    {
                        ToolCalls = [new ToolCall { Index = index, Function = new FunctionCall { Arguments = d.PartialJson } }],
                    });
                    break;
                case "message_delta":
                    var finish = Chunk(new ChatCompletionDelta());
                    finish.Choices[0].FinishReason = _jsonBlock is not null && _toolIndexByBlock.Count == 0 && e.Delta?.StopReason == "tool_use"
                        ? FinishReasons.Stop // the JSON answer is content, not a tool call
                        : FinishReason(e.Delta?.StopReason);
                    if (_jsonBlock is null && AnthropicStop.IsKept(e.Delta?.StopReason))
                    {
                        finish.AnthropicStop = (e.Delta!.StopReason!, e.Delta.StopSequence);
                    }

                    yield return finish;
                    if (e.Usage is null && !_counted)
                    {
                        break; // no usage anywhere in the stream: none, so the gateway's estimate is billed (not a zero)
                    }

                    yield return new ChatCompletionChunk
                    {
                        Id = _id,
                        Model = _model,
                        Created = _created,
                        Choices = [],
                        // message_delta repeats the prompt's tokens in newer API versions (and from the gateway's own writer),
                        // the cache's reads and writes with them: the last word on each wins. The same usage as a whole answer's.
                        Usage = Cost.ServerToolUse.With(
                            Cost.PromptCacheTokens.Usage(
                                e.Usage is { InputTokens: > 0 } u ? u.InputTokens : _inputTokens,
                                e.Usage?.OutputTokens ?? 0,
                                e.Usage?.CacheReadInputTokens ?? _cacheRead,
                                e.Usage?.CacheCreationInputTokens ?? _cacheWritten),
                            e.Usage?.ServerToolUse),
                    };
                    break;
                case "error":
                    var error = e.Error ?? new AnthropicError { Type = "api_error", Message = "unknown stream error" };
                    var said = SecretRedactor.RedactAndTrim(error.Message);
                    throw new ProviderException(Classify(error.Type, 500), $"Stream error {error.Type}: {said}", error.Type == "overloaded_error" ? 529 : null)
                    {
                        ErrorType = error.Type,
                        UpstreamMessage = said,
                    };
            }
        }

        /// <summary>A piece of Claude's thinking as a delta: its text as <c>reasoning_content</c>, the piece in <c>thinking_blocks</c>.</summary>
        private ChatCompletionChunk Thinking(ThinkingBlock piece, string? text) =>
            Chunk(new ChatCompletionDelta { AdditionalProperties = ThinkingBlocks.Write(null, [piece], text) });

        private ChatCompletionChunk Chunk(ChatCompletionDelta delta) => new()
        {
            Id = _id,
            Model = _model,
            Created = _created,
            Choices = [new ChunkChoice { Index = 0, Delta = delta }],
            Uncacheable = _native,
        };

        /// <summary>
        /// A chunk with no choices, only to carry a content event the canonical chunks have nothing of (a block's start or
        /// stop, a server tool's call or result, a citation) to the <c>/v1/messages</c> route; a server tool's block counts
        /// as content the caller has seen.
        /// </summary>
        public ChatCompletionChunk Bare(AnthropicStreamEvent e) => new()
        {
            Id = _id,
            Model = _model,
            Created = _created,
            Choices = [],
            Uncacheable = _native,
            CarriesNativeContent = e.Type == "content_block_start" && ServerTools.IsServerBlock(e.ContentBlock?.Type),
        };
    }
}
