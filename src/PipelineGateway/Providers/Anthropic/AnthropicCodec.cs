using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>
/// The one reader of Anthropic Messages requests, for the gateway's <c>/v1/messages</c> route and the simulator:
/// source-generated DTOs with strict types (a <c>"16"</c> where a number belongs, a duplicate key, an unknown block
/// type are errors), then a translation to the canonical (OpenAI) request that refuses what it cannot carry rather
/// than dropping it. Every error is an <see cref="AnthropicRequestException"/> naming the field the way Anthropic
/// does (<c>messages.0.content.1.text: Field required</c>).
/// </summary>
internal static partial class AnthropicCodec
{
    /// <summary>Parses and validates a request body. Throws <see cref="AnthropicRequestException"/>.</summary>
    public static AnthropicRequest Parse(ReadOnlySpan<byte> body)
    {
        // System.Text.Json checks UTF-8 only where it decodes: bad bytes kept in extension data or a tool's input
        // schema would otherwise surface when the request is translated or forwarded.
        if (!System.Text.Unicode.Utf8.IsValid(body))
        {
            throw new AnthropicRequestException(null, "The request body is not valid UTF-8.");
        }

        AnthropicRequest? request;
        try
        {
            request = JsonSerializer.Deserialize(body, AnthropicRequestContext.Default.AnthropicRequest);
        }
        catch (JsonException ex)
        {
            throw new AnthropicRequestException(Field(Serialization.JsonProblems.PathOf(ex)), Reason(ex));
        }
        catch (Exception ex) when (ex is InvalidOperationException or ArgumentException or DecoderFallbackException or NotSupportedException)
        {
            // Invalid UTF-8 and the like: the body is not the JSON it claims to be.
            throw new AnthropicRequestException(null, $"The request body is not valid JSON: {ex.Message}");
        }

        if (request is null)
        {
            throw new AnthropicRequestException(null, "The request body must be a JSON object.");
        }

        Validate(request);
        return request;
    }

    /// <summary>
    /// The body of <c>/v1/messages/count_tokens</c>: a messages request without <c>max_tokens</c> (read by the same codec,
    /// with the same checks; a <c>max_tokens</c> it carries anyway is read and not used).
    /// </summary>
    public static AnthropicRequest ParseCount(ReadOnlySpan<byte> body)
    {
        if (!System.Text.Unicode.Utf8.IsValid(body) || HasTopLevelMember(body, "max_tokens"u8))
        {
            return Parse(body);
        }

        // Put "max_tokens":1 first in the object (the first '{' opens it: the body is an object, or Parse says what it is).
        var open = body.IndexOf((byte)'{');
        if (open < 0)
        {
            return Parse(body);
        }

        var rest = body[(open + 1)..];
        var empty = rest.TrimStart(" \t\r\n"u8).StartsWith("}"u8);
        byte[] with = [.. body[..(open + 1)], .. (empty ? "\"max_tokens\":1"u8 : "\"max_tokens\":1,"u8), .. rest];
        return Parse(with);
    }

    /// <summary>True when the object's top level has the member (false for anything that is not a JSON object: Parse reports it).</summary>
    private static bool HasTopLevelMember(ReadOnlySpan<byte> body, ReadOnlySpan<byte> name)
    {
        try
        {
            var r = new Utf8JsonReader(body);
            if (!r.Read() || r.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }

            while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
            {
                if (r.ValueTextEquals(name))
                {
                    return true;
                }

                r.Read();
                r.Skip();
            }
        }
        catch (JsonException)
        {
            // Not JSON: Parse says so.
        }

        return false;
    }

    /// <summary>The request in canonical form. Throws <see cref="AnthropicRequestException"/> for what the canonical form cannot carry.</summary>
    public static ChatCompletionRequest ToCanonical(AnthropicRequest a)
    {
        var request = new ChatCompletionRequest
        {
            Model = a.Model,
            MaxTokens = a.MaxTokens,
            Stream = a.Stream == true ? true : null,
            Temperature = a.Temperature,
            TopP = a.TopP,
            User = a.Metadata?.UserId,
            Stop = a.StopSequences is { Count: > 0 } stops ? new StopSequences(stops) : null,
            AdditionalProperties = a.Extra,
        };

        if (a.Extra?.TryGetValue(ServiceTier, out var tier) == true && tier.ValueKind == JsonValueKind.String && tier.ValueEquals("standard_only"u8))
        {
            // The canonical request speaks OpenAI's words: Anthropic's standard-only tier is OpenAI's "default" (the
            // Anthropic translator says "standard_only" again; an OpenAI upstream understands "default").
            a.Extra[ServiceTier] = Json("\"default\"");
        }

        if (a.TopK is { } topK)
        {
            (request.AdditionalProperties ??= [])["top_k"] = JsonSerializer.SerializeToElement(topK, AnthropicRequestContext.Default.Int32);
        }

        ReadOutputFormat(request);

        if (a.System is { Raw: not null })
        {
            throw new AnthropicRequestException("system", "system: search_result blocks belong in user turns or tool results, not the system prompt.");
        }

        if (a.System is { } system && system.Text.Length > 0)
        {
            request.Messages.Add(new ChatCompletionMessage { Role = ChatRoles.System, Content = system.ToContent() });
        }

        for (var i = 0; i < a.Messages.Count; i++)
        {
            AddMessage(request, a.Messages[i], $"messages.{i}");
        }

        if (a.Tools is { Count: > 0 } tools)
        {
            request.Tools = [.. tools.Select(static t => t.Type is null or "custom"
                ? new ToolDefinition
                {
                    Function = new FunctionDefinition { Name = t.Name, Description = t.Description, Parameters = t.InputSchema },
                    AdditionalProperties = CacheControl(t.CacheControl),
                }
                : AnthropicTool(t))];
        }

        if (a.ToolChoice is { } choice)
        {
            request.ToolChoice = choice.Type switch
            {
                "any" => Json("\"required\""),
                "none" => Json("\"none\""),
                "tool" => JsonSerializer.SerializeToElement(new ToolChoiceFunction { Function = new FunctionName { Name = choice.Name! } }, AnthropicRequestContext.Default.ToolChoiceFunction),
                _ => Json("\"auto\""),
            };
            if (choice.DisableParallelToolUse == true)
            {
                (request.AdditionalProperties ??= [])["parallel_tool_calls"] = Json("false");
            }
        }

        return request;
    }

    /// <summary>One of Anthropic's own tools as a canonical tool of its type, every member but the type kept as it came.</summary>
    private static ToolDefinition AnthropicTool(AnthropicTool t)
    {
        var members = new Dictionary<string, JsonElement>(StringComparer.Ordinal)
        {
            ["name"] = JsonSerializer.SerializeToElement(t.Name, AnthropicRequestContext.Default.String),
        };
        if (t.Description is not null)
        {
            members["description"] = JsonSerializer.SerializeToElement(t.Description, AnthropicRequestContext.Default.String);
        }

        if (t.InputSchema is { } schema)
        {
            members["input_schema"] = schema;
        }

        if (t.CacheControl is { ValueKind: not JsonValueKind.Null } cache)
        {
            members[CacheControlMember] = cache;
        }

        foreach (var (name, value) in t.Extra ?? [])
        {
            members[name] = value;
        }

        return new ToolDefinition { Type = t.Type!, AdditionalProperties = members };
    }

    private static void AddMessage(ChatCompletionRequest request, AnthropicInputMessage m, string path)
    {
        if (m.Content.Text is { } text)
        {
            request.Messages.Add(new ChatCompletionMessage { Role = m.Role, Content = text });
            return;
        }

        var parts = new List<ContentPart>();
        var calls = new List<ToolCall>();
        var thinking = new List<ThinkingBlock>();
        var blocks = m.Content.Blocks!;
        var searchResults = false;
        for (var i = 0; i < blocks.Count; i++)
        {
            var b = blocks[i];
            var at = $"{path}.content.{i}";
            switch (b.Type)
            {
                case "text":
                    parts.Add(TextPart(b));
                    break;
                case "image":
                    var source = b.Source!;
                    parts.Add(new ContentPart
                    {
                        Type = "image_url",
                        ImageUrl = new ImageUrl { Url = source.Type == "base64" ? $"data:{source.MediaType};base64,{source.Data}" : source.Url! },
                        AdditionalProperties = CacheControl(b.CacheControl),
                    });
                    break;
                case "tool_use":
                    if (m.Role != "assistant")
                    {
                        throw new AnthropicRequestException($"{at}.type", "tool_use blocks belong to assistant turns.");
                    }

                    calls.Add(new ToolCall { Id = b.Id, Type = "function", Function = new FunctionCall { Name = b.Name, Arguments = b.Input!.Value.GetRawText() } });
                    break;
                case "tool_result":
                    if (m.Role != "user")
                    {
                        throw new AnthropicRequestException($"{at}.type", "tool_result blocks belong to user turns.");
                    }

                    var result = ChatCompletionMessage.Tool(b.ToolUseId!, b.Content?.Text ?? string.Empty);
                    result.AdditionalProperties = CacheControl(b.CacheControl);
                    if (b.Content?.Raw is { } resultAsWritten)
                    {
                        // Search results in a tool's result: Claude gets the content as written (it can cite them), other
                        // providers the text above (each result's title, source and text).
                        (result.AdditionalProperties ??= [])[ServerTools.ContentMember] = resultAsWritten;
                    }

                    if (b.IsError == true)
                    {
                        (result.AdditionalProperties ??= [])[IsErrorMember] = JsonSerializer.SerializeToElement(true, AnthropicRequestContext.Default.Boolean);
                    }

                    request.Messages.Add(result);
                    break;
                case ThinkingBlock.Plain or ThinkingBlock.Redacted:
                    // Claude's thinking in an earlier turn: given back unchanged (signature and all) to an Anthropic
                    // upstream, which requires it in a tool loop; OpenAI and Azure do not get it (ThinkingBlocks).
                    if (m.Role != "assistant")
                    {
                        throw new AnthropicRequestException($"{at}.type", $"{b.Type} blocks belong to assistant turns.");
                    }

                    thinking.Add(new ThinkingBlock(b.Type, b.Thinking, b.Signature, b.Data));
                    break;
                case "document":
                    // A base64 PDF (what the canonical form can carry): OpenAI's inline file part, the Anthropic
                    // translator's document block again. Validated above.
                    var file = new Dictionary<string, string> { ["file_data"] = "data:application/pdf;base64," + b.Source!.Data };
                    if (b.Title is { } title)
                    {
                        file["filename"] = title;
                    }

                    var document = new ContentPart { Type = "file", AdditionalProperties = CacheControl(b.CacheControl) ?? [] };
                    document.AdditionalProperties["file"] = JsonSerializer.SerializeToElement(file, AnthropicRequestContext.Default.DictionaryStringString);
                    parts.Add(document);
                    break;
                case "search_result":
                    // A search result the caller gives Claude to answer from (and cite): Claude gets the turn's blocks as
                    // written (below); other providers its title, source and text.
                    if (m.Role != "user")
                    {
                        throw new AnthropicRequestException($"{at}.type", $"{at}.type: search_result blocks belong to user turns.");
                    }

                    parts.Add(new ContentPart { Type = "text", Text = SearchResultText(b, at) + "\n\n", AdditionalProperties = CacheControl(b.CacheControl) }); // its own paragraph
                    searchResults = true;
                    break;
                case var server when ServerTools.IsServerBlock(server):
                    // A server tool's call or result in an earlier answer: the turn's blocks go back to Claude as they
                    // came (below); the canonical form holds the turn's text and the caller's own tool calls.
                    if (m.Role != "assistant")
                    {
                        throw new AnthropicRequestException($"{at}.type", $"{at}.type: {server} blocks belong to assistant turns.");
                    }

                    break;
                default:
                    throw new AnthropicRequestException($"{at}.type", $"Content blocks of type '{ProviderException.Quoted(b.Type)}' cannot be carried by this gateway (it translates to the OpenAI chat format); supported: text, image, document (a base64 PDF), thinking, redacted_thinking, tool_use, tool_result, and in assistant turns the blocks of Claude's server tools.");
            }
        }

        var raw = m.Content.Raw;
        if (raw is { } written && m.Role != "assistant")
        {
            if (!searchResults)
            {
                // Cited text in a user turn: the citations have no canonical place (server blocks there were refused above).
                throw new AnthropicRequestException($"{path}.content", $"{path}.content: text with citations belongs to assistant turns.");
            }

            if (blocks.Exists(static b => b.Type == "tool_result"))
            {
                // The turn's tool results are messages of their own (above), which Claude gets first in the turn (as it
                // wants them); the blocks kept as written are the rest, or Claude would get the results twice.
                raw = WithoutToolResults(written);
            }
        }

        if (parts.Count > 0 || calls.Count > 0 || thinking.Count > 0 || raw is not null)
        {
            var extra = ThinkingBlocks.Write(null, thinking, reasoning: null);
            if (raw is { } blocksAsWritten)
            {
                (extra ??= [])[ServerTools.ContentMember] = blocksAsWritten;
            }

            request.Messages.Add(new ChatCompletionMessage
            {
                Role = m.Role,
                Content = parts.Count == 0 ? null : parts.TrueForAll(p => p.Type == "text" && p.AdditionalProperties is null) ? new MessageContent(string.Concat(parts.Select(p => p.Text))) : new MessageContent(parts),
                ToolCalls = calls.Count > 0 ? calls : null,
                AdditionalProperties = extra,
            });
        }
    }

    /// <summary>Rules STJ's types do not express: roles, required fields per block type, sensible ranges.</summary>
    private static void Validate(AnthropicRequest a)
    {
        if (string.IsNullOrWhiteSpace(a.Model))
        {
            throw new AnthropicRequestException("model", "model: Field required");
        }

        if (a.MaxTokens < 1)
        {
            throw new AnthropicRequestException("max_tokens", "max_tokens: must be at least 1");
        }

        if (a.Temperature is { } t && (double.IsNaN(t) || t < 0 || t > 1))
        {
            throw new AnthropicRequestException("temperature", "temperature: must be between 0 and 1");
        }

        if (a.TopP is { } p && (double.IsNaN(p) || p < 0 || p > 1))
        {
            throw new AnthropicRequestException("top_p", "top_p: must be between 0 and 1");
        }

        if ((object?)a.Messages is null || a.Messages.Count == 0)
        {
            throw new AnthropicRequestException("messages", "messages: at least one message is required");
        }

        for (var i = 0; i < a.Messages.Count; i++)
        {
            var m = a.Messages[i];
            if ((object?)m is null)
            {
                throw new AnthropicRequestException($"messages.{i}", $"messages.{i}: must be an object with role and content");
            }

            if (m.Role is not ("user" or "assistant"))
            {
                throw new AnthropicRequestException($"messages.{i}.role", $"messages.{i}.role: must be 'user' or 'assistant'");
            }

            if (m.Content is null)
            {
                throw new AnthropicRequestException($"messages.{i}.content", $"messages.{i}.content: Field required");
            }

            for (var j = 0; j < (m.Content.Blocks?.Count ?? 0); j++)
            {
                ValidateBlock(m.Content.Blocks![j], $"messages.{i}.content.{j}");
            }
        }

        for (var i = 0; i < (a.StopSequences?.Count ?? 0); i++)
        {
            if (a.StopSequences![i] is null)
            {
                throw new AnthropicRequestException($"stop_sequences.{i}", $"stop_sequences.{i}: must be a string");
            }
        }

        for (var i = 0; i < (a.Tools?.Count ?? 0); i++)
        {
            var tool = a.Tools![i];
            if ((object?)tool is null)
            {
                throw new AnthropicRequestException($"tools.{i}", $"tools.{i}: must be an object");
            }

            if (string.IsNullOrEmpty(tool.Name))
            {
                throw new AnthropicRequestException($"tools.{i}.name", $"tools.{i}.name: Field required");
            }

            if (tool.Type is not (null or "custom"))
            {
                // One of Anthropic's own tools (web search, code execution, bash, the text editor…): carried as it is,
                // its own members and all, for Claude to check (ServerTools).
                if (!ServerTools.IsAnthropicToolType(tool.Type))
                {
                    throw new AnthropicRequestException($"tools.{i}.type", $"tools.{i}.type: '{ProviderException.Quoted(tool.Type)}' is not a tool type: 'custom' (or none) for a tool with an input_schema, or one of Anthropic's own (a name and a version date, such as 'web_search_20250305').");
                }

                continue;
            }

            if (tool.InputSchema is not { ValueKind: JsonValueKind.Object })
            {
                throw new AnthropicRequestException($"tools.{i}.input_schema", $"tools.{i}.input_schema: Field required (a JSON Schema object)");
            }
        }

        if (a.ToolChoice is { } choice)
        {
            if (choice.Type is not ("auto" or "any" or "none" or "tool"))
            {
                throw new AnthropicRequestException("tool_choice.type", "tool_choice.type: must be one of 'auto', 'any', 'tool', 'none'");
            }

            if (choice.Type == "tool" && string.IsNullOrEmpty(choice.Name))
            {
                throw new AnthropicRequestException("tool_choice.name", "tool_choice.name: Field required when type is 'tool'");
            }
        }
    }

    /// <summary>A text block as a canonical text part, its <c>cache_control</c> (prompt caching) kept for an Anthropic upstream.</summary>
    /// <summary>A turn's blocks as written, but its <c>tool_result</c> blocks.</summary>
    private static JsonElement WithoutToolResults(JsonElement blocks)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            foreach (var block in blocks.EnumerateArray())
            {
                if (!(block.ValueKind == JsonValueKind.Object && block.TryGetProperty("type"u8, out var type) && type.ValueEquals("tool_result"u8)))
                {
                    block.WriteTo(w);
                }
            }

            w.WriteEndArray();
        }

        return JsonDocument.Parse(buffer.WrittenMemory).RootElement.Clone();
    }

    /// <summary>
    /// A <c>search_result</c> block as text for a provider without the block (its title, source and text), after checking
    /// it as Claude does: a <c>source</c> and a <c>title</c> (strings) and a <c>content</c> of text blocks.
    /// </summary>
    internal static string SearchResultText(AnthropicInputBlock b, string at) =>
        SearchResultProblem(b) is { } problem
            ? throw new AnthropicRequestException($"{at}.{problem.Field}", $"{at}.{problem.Field}: {problem.Message}")
            : SearchResultText(b);

    /// <summary>What a <c>search_result</c> block lacks, if anything.</summary>
    internal static (string Field, string Message)? SearchResultProblem(AnthropicInputBlock b) =>
        b.Source is not { Type: "string", Url.Length: > 0 } ? ("source", "Field required (the result's URL or identifier, a string)")
        : b.Title is null ? ("title", "Field required")
        : b.Content is not { Raw: null } ? ("content", "Field required (a list of text blocks)")
        : null;

    /// <summary>A checked <c>search_result</c> block as text.</summary>
    internal static string SearchResultText(AnthropicInputBlock b) => $"Search result: {b.Title}\nSource: {b.Source!.Url}\n{b.Content!.Text}";

    internal static ContentPart TextPart(AnthropicInputBlock b) => new() { Type = "text", Text = b.Text, AdditionalProperties = CacheControl(b.CacheControl) };

    /// <summary>
    /// A block's or tool's <c>cache_control</c> as a canonical unknown member (null without one): the Anthropic translator
    /// writes it back where it was, an OpenAI upstream does not get it (docs/providers.md).
    /// </summary>
    private static Dictionary<string, JsonElement>? CacheControl(JsonElement? cacheControl) =>
        cacheControl is { ValueKind: not JsonValueKind.Null } c ? new() { [CacheControlMember] = c } : null;

    internal const string CacheControlMember = "cache_control";

    /// <summary>The capacity tier (both APIs; OpenAI's words in the canonical request).</summary>
    internal const string ServiceTier = "service_tier";

    /// <summary>A tool_result's <c>is_error</c>, kept on the canonical tool message for an Anthropic upstream.</summary>
    internal const string IsErrorMember = "is_error";

    /// <summary>
    /// Anthropic's own members that the canonical form carries as unknown ones — <c>cache_control</c>, <c>is_error</c>,
    /// Claude's <c>thinking_blocks</c>, the <c>thinking</c>, <c>top_k</c>, <c>context_management</c> and <c>output_config</c> parameters, a
    /// turn's <c>anthropic_content</c>: what an upstream with OpenAI's strict schema is not sent
    /// (<see cref="Hosting.ProviderOptions.StripAnthropicMembers"/>). (<c>mcp_servers</c> and <c>container</c> change
    /// what comes back: such a request is not sent there at all, <see cref="ServerTools.Refuse"/>.)
    /// </summary>
    internal static bool IsAnthropicOwn(string name) =>
        name is CacheControlMember or IsErrorMember or ThinkingBlocks.Member or ThinkingBlocks.Parameter or ServerTools.ContentMember
            or "top_k" or ServerTools.ContextManagement or OutputConfig;

    private static void ValidateBlock(AnthropicInputBlock b, string path)
    {
        // A null element in a JSON array reaches here as null, whatever the annotations say.
        if ((object?)b is null)
        {
            throw new AnthropicRequestException(path, $"{path}: must be a content block object");
        }

        if (ServerTools.IsServerBlock(b.Type))
        {
            return; // kept as written, for Claude to check
        }

        string? Missing() => b.Type switch
        {
            "text" when b.Text is null => "text",
            "image" when b.Source is null => "source",
            "image" when b.Source!.Type is not ("base64" or "url") => "source.type",
            "image" when b.Source!.Type == "base64" && (string.IsNullOrEmpty(b.Source.MediaType) || string.IsNullOrEmpty(b.Source.Data)) => string.IsNullOrEmpty(b.Source.MediaType) ? "source.media_type" : "source.data",
            "image" when b.Source!.Type == "url" && string.IsNullOrEmpty(b.Source.Url) => "source.url",
            "document" when b.Source is null => "source",
            "document" when string.IsNullOrEmpty(b.Source!.Data) && b.Source.Type == "base64" => "source.data",
            "tool_use" when string.IsNullOrEmpty(b.Id) => "id",
            "tool_use" when string.IsNullOrEmpty(b.Name) => "name",
            "tool_use" when b.Input is not { ValueKind: JsonValueKind.Object } => "input",
            "tool_result" when string.IsNullOrEmpty(b.ToolUseId) => "tool_use_id",
            ThinkingBlock.Plain when b.Thinking is null => "thinking",
            ThinkingBlock.Plain when string.IsNullOrEmpty(b.Signature) => "signature",
            ThinkingBlock.Redacted when string.IsNullOrEmpty(b.Data) => "data",
            _ => null,
        };

        if (Missing() is { } field)
        {
            throw new AnthropicRequestException($"{path}.{field}", $"{path}.{field}: Field required");
        }

        if (b.Type == "document")
        {
            // What the canonical form has no place for is refused, never dropped.
            if (b.Source!.Type != "base64" || b.Source.MediaType != "application/pdf")
            {
                throw new AnthropicRequestException($"{path}.source", $"{path}.source: only a base64 PDF document (type 'base64', media_type 'application/pdf') can be carried by this gateway.");
            }

            if (b.Context is not null || b.Citations is { ValueKind: JsonValueKind.Object } c && c.TryGetProperty("enabled", out var on) && on.ValueKind == JsonValueKind.True)
            {
                throw new AnthropicRequestException($"{path}.{(b.Context is not null ? "context" : "citations")}", $"{path}: a document's context and citations cannot be carried by this gateway.");
            }
        }
    }

    /// <summary>Claude's output settings (<c>effort</c>; its <c>format</c> read apart), sent on to Claude as they came.</summary>
    internal const string OutputConfig = "output_config";

    /// <summary>The structured-outputs beta's form of <c>output_config.format</c>.</summary>
    private const string OutputFormat = "output_format";

    /// <summary>
    /// Claude's structured outputs — <c>output_config.format</c> (or the beta's <c>output_format</c>), a JSON schema the
    /// answer follows — as the canonical <c>response_format</c> (a strict <c>json_schema</c>), so every deployment honours
    /// it: OpenAI natively, Claude through the gateway's JSON tool (the answer's text is the JSON, as Claude's own would
    /// be). The Vercel AI SDK asks Claude for objects this way; the member was carried and dropped before, and the
    /// answer was prose. The rest of <c>output_config</c> (<c>effort</c>) stays for Claude.
    /// </summary>
    private static void ReadOutputFormat(ChatCompletionRequest request)
    {
        var extra = request.AdditionalProperties;
        JsonElement? format = null;
        var at = OutputFormat;
        if (extra?.TryGetValue(OutputConfig, out var config) == true)
        {
            if (config.ValueKind != JsonValueKind.Object)
            {
                throw new AnthropicRequestException(OutputConfig, $"{OutputConfig}: must be an object");
            }

            if (config.TryGetProperty("format", out var f) && f.ValueKind != JsonValueKind.Null)
            {
                format = f;
                at = OutputConfig + ".format";
                var rest = config.EnumerateObject().Where(static m => m.Name != "format").ToList();
                if (rest.Count == 0)
                {
                    extra.Remove(OutputConfig);
                }
                else
                {
                    var buffer = new ArrayBufferWriter<byte>(64);
                    using (var w = new Utf8JsonWriter(buffer))
                    {
                        w.WriteStartObject();
                        rest.ForEach(m => m.WriteTo(w));
                        w.WriteEndObject();
                    }

                    using var doc = JsonDocument.Parse(buffer.WrittenMemory);
                    extra[OutputConfig] = doc.RootElement.Clone();
                }
            }
        }

        if (extra?.Remove(OutputFormat, out var beta) == true && beta.ValueKind != JsonValueKind.Null)
        {
            if (format is not null)
            {
                throw new AnthropicRequestException(OutputFormat, $"{OutputFormat}: give the format once, in {OutputConfig}.format");
            }

            format = beta;
        }

        if (extra is { Count: 0 })
        {
            request.AdditionalProperties = null; // the format was all there was
        }

        if (format is not { } given)
        {
            return;
        }

        if (given.ValueKind != JsonValueKind.Object || !given.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || !type.ValueEquals("json_schema"u8))
        {
            throw new AnthropicRequestException(at + ".type", $"{at}.type: must be 'json_schema'");
        }

        if (!given.TryGetProperty("schema", out var schema) || schema.ValueKind != JsonValueKind.Object)
        {
            throw new AnthropicRequestException(at + ".schema", $"{at}.schema: required (a JSON schema object)");
        }

        var output = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(output))
        {
            w.WriteStartObject();
            w.WriteString("type", "json_schema");
            w.WriteStartObject("json_schema");
            w.WriteString("name", "output");
            w.WritePropertyName("schema");
            schema.WriteTo(w);
            w.WriteBoolean("strict", true);
            w.WriteEndObject();
            w.WriteEndObject();
        }

        using var made = JsonDocument.Parse(output.WrittenMemory);
        request.ResponseFormat = made.RootElement.Clone();
    }

    private static JsonElement Json(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.Clone();
    }

    /// <summary>STJ's path (<c>$.messages[0].content[1]</c>) the way Anthropic names fields (<c>messages.0.content.1</c>).</summary>
    internal static string? Field(string? jsonPath)
    {
        if (string.IsNullOrEmpty(jsonPath) || jsonPath == "$")
        {
            return null;
        }

        var s = jsonPath.TrimStart('$').TrimStart('.').Replace("['", ".", StringComparison.Ordinal).Replace("']", string.Empty, StringComparison.Ordinal);
        return s.Replace("[", ".", StringComparison.Ordinal).Replace("]", string.Empty, StringComparison.Ordinal).TrimStart('.');
    }

    private static string Reason(JsonException ex)
    {
        var field = Field(Serialization.JsonProblems.PathOf(ex));
        var what = Plain(Serialization.JsonProblems.Says(ex));
        if (what.EndsWith(": Field required", StringComparison.Ordinal))
        {
            return field is null ? what : $"{field}.{what}";
        }

        return field is null ? $"The request body is not valid: {what}" : $"{field}: {what}";
    }

    /// <summary>System.Text.Json's wording with the .NET type names put the way an API user reads them.</summary>
    private static string Plain(string what)
    {
        var cut = what.IndexOf(" Path:", StringComparison.Ordinal);
        if (cut > 0)
        {
            what = what[..cut];
        }

        if (MissingRequired().Match(what) is { Success: true } missing)
        {
            return $"{missing.Groups[1].Value}: Field required";
        }

        if (NotConvertible().Match(what) is { Success: true } type)
        {
            return type.Groups[1].Value switch
            {
                "System.String" => "must be a string",
                "System.Int32" or "System.Int64" or "System.Nullable`1[System.Int32]" => "must be an integer",
                "System.Double" or "System.Nullable`1[System.Double]" => "must be a number",
                "System.Boolean" or "System.Nullable`1[System.Boolean]" => "must be a boolean",
                var t when t.StartsWith("System.Collections.Generic.List", StringComparison.Ordinal) => "must be a list",
                var t when t.EndsWith("InputBlock", StringComparison.Ordinal) => "must be a content block object",
                var t when t.EndsWith("AnthropicRequest", StringComparison.Ordinal) => "must be a JSON object",
                _ => "must be an object",
            };
        }

        return what.Replace("PipelineGateway.Providers.Anthropic.", string.Empty, StringComparison.Ordinal);
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"missing required properties including: '([^']+)'")]
    private static partial System.Text.RegularExpressions.Regex MissingRequired();

    [System.Text.RegularExpressions.GeneratedRegex(@"could not be converted to ([^ ]+?)\.?$")]
    private static partial System.Text.RegularExpressions.Regex NotConvertible();
}

/// <summary>A malformed or unsupported Anthropic request: <see cref="Field"/> names the field (Anthropic's dotted form).</summary>
internal sealed class AnthropicRequestException(string? field, string message) : Exception(message)
{
    public string? Field { get; } = field;
}

/// <summary>An Anthropic Messages request, as much of it as the gateway reads (unknown top-level fields are kept).</summary>
internal sealed class AnthropicRequest
{
    [JsonRequired]
    public string Model { get; set; } = string.Empty;

    [JsonRequired]
    public int MaxTokens { get; set; }

    [JsonRequired]
    public List<AnthropicInputMessage> Messages { get; set; } = [];

    public AnthropicSystem? System { get; set; }

    public double? Temperature { get; set; }

    public double? TopP { get; set; }

    public int? TopK { get; set; }

    public List<string>? StopSequences { get; set; }

    public bool? Stream { get; set; }

    public AnthropicMetadata? Metadata { get; set; }

    public List<AnthropicTool>? Tools { get; set; }

    public AnthropicToolChoice? ToolChoice { get; set; }

    /// <summary>
    /// Fields the gateway does not read (<c>thinking</c>, <c>service_tier</c>…): kept on the canonical request's unknown
    /// fields. An OpenAI-compatible upstream gets them as they are; the Anthropic translator writes <c>top_k</c> and
    /// nothing else of them (docs/providers.md).
    /// </summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? Extra { get; set; }
}

internal sealed class AnthropicInputMessage
{
    [JsonRequired]
    public string Role { get; set; } = string.Empty;

    [JsonRequired]
    public AnthropicInputContent Content { get; set; } = null!;
}

/// <summary>A message's content: a string, or a list of content blocks.</summary>
[JsonConverter(typeof(AnthropicInputContentConverter))]
internal sealed class AnthropicInputContent
{
    public string? Text { get; init; }

    public List<AnthropicInputBlock>? Blocks { get; init; }

    /// <summary>
    /// The blocks as written, when some have no canonical form — a server tool's blocks, text with citations — (else
    /// null): what Claude is given back (<see cref="ServerTools.ContentMember"/>).
    /// </summary>
    public JsonElement? Raw { get; init; }
}

internal sealed class AnthropicInputBlock
{
    [JsonRequired]
    public string Type { get; set; } = string.Empty;

    public string? Text { get; set; }

    /// <summary>An image's or a document's source; a block whose source is a string (<c>search_result</c>'s URL) reads as one the gateway cannot carry.</summary>
    [JsonConverter(typeof(AnthropicSourceConverter))]
    public AnthropicImageSource? Source { get; set; }

    public string? Id { get; set; }

    public string? Name { get; set; }

    public JsonElement? Input { get; set; }

    public string? ToolUseId { get; set; }

    /// <summary>A tool_result's content: a string or text blocks.</summary>
    public AnthropicSystem? Content { get; set; }

    public bool? IsError { get; set; }

    public JsonElement? CacheControl { get; set; }

    /// <summary>A thinking block's text.</summary>
    public string? Thinking { get; set; }

    /// <summary>A thinking block's signature.</summary>
    public string? Signature { get; set; }

    /// <summary>A redacted thinking block's data.</summary>
    public string? Data { get; set; }

    /// <summary>A document's title (carried as the file's name).</summary>
    public string? Title { get; set; }

    /// <summary>A document's context: refused (no canonical place).</summary>
    public string? Context { get; set; }

    /// <summary>A document's citations setting: enabled is refused (the answer's citations have no canonical place).</summary>
    public JsonElement? Citations { get; set; }
}

/// <summary>The system prompt (or a tool result): a string, or a list of text blocks, joined.</summary>
[JsonConverter(typeof(AnthropicTextConverter))]
internal sealed class AnthropicSystem
{
    public string Text { get; init; } = string.Empty;

    /// <summary>The text blocks as they came, when one of them carries <c>cache_control</c> (else null: the text is enough).</summary>
    public List<AnthropicInputBlock>? CachedBlocks { get; init; }

    /// <summary>
    /// The blocks as written when some are <c>search_result</c>s (a tool's result: what Claude is given, <see
    /// cref="ServerTools.ContentMember"/>); <see cref="Text"/> then holds each result's title, source and text.
    /// </summary>
    public JsonElement? Raw { get; init; }

    /// <summary>The text as canonical content: the joined string, or text parts keeping each block's <c>cache_control</c>.</summary>
    public MessageContent ToContent() => CachedBlocks is { } blocks
        ? new MessageContent([.. blocks.Select(AnthropicCodec.TextPart)])
        : new MessageContent(Text);
}

internal sealed class AnthropicMetadata
{
    public string? UserId { get; set; }
}

internal sealed class AnthropicTool
{
    public string Name { get; set; } = string.Empty;

    public string? Description { get; set; }

    public JsonElement? InputSchema { get; set; }

    public string? Type { get; set; }

    public JsonElement? CacheControl { get; set; }

    /// <summary>The members of one of Anthropic's own tools (<c>max_uses</c>, <c>allowed_domains</c>, <c>display_width_px</c>…), kept.</summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? Extra { get; set; }
}

internal sealed class AnthropicToolChoice
{
    [JsonRequired]
    public string Type { get; set; } = string.Empty;

    public string? Name { get; set; }

    public bool? DisableParallelToolUse { get; set; }
}

internal sealed class ToolChoiceFunction
{
    public string Type { get; set; } = "function";

    public FunctionName Function { get; set; } = new();
}

internal sealed class FunctionName
{
    public string Name { get; set; } = string.Empty;
}

/// <summary>A string, or an array of content blocks; anything else is an error naming the field.</summary>
/// <summary>
/// A block's <c>source</c>: an object as images and documents have it; a string — a <c>search_result</c> block's URL —
/// as a source of type <c>string</c>, so the block is refused for what it is (a block type this gateway cannot carry,
/// naming its type), not for a source that "must be an object".
/// </summary>
internal sealed class AnthropicSourceConverter : JsonConverter<AnthropicImageSource>
{
    public override AnthropicImageSource? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType == JsonTokenType.String
            ? new AnthropicImageSource { Type = "string", Url = reader.GetString() }
            : Serialization.JsonProblems.ReadWithin(ref reader, AnthropicRequestContext.Default.AnthropicImageSource);

    public override void Write(Utf8JsonWriter writer, AnthropicImageSource value, JsonSerializerOptions options) =>
        throw new NotSupportedException("Anthropic request text is only read.");
}

internal sealed class AnthropicInputContentConverter : JsonConverter<AnthropicInputContent>
{
    public override AnthropicInputContent? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.String => new AnthropicInputContent { Text = reader.GetString() },
        JsonTokenType.StartArray => KeepsRaw(reader) ? ReadWithRaw(ref reader) : new AnthropicInputContent { Blocks = Serialization.JsonProblems.ReadWithin(ref reader, AnthropicRequestContext.Default.ListAnthropicInputBlock) },
        _ => throw new JsonException("must be a string or a list of content blocks"),
    };

    /// <summary>
    /// Whether the array holds a block with no canonical form — a server tool's (<see cref="ServerTools.IsServerBlock"/>),
    /// a <c>search_result</c>, or text with <c>citations</c> — looked for on a copy of the reader (false for anything malformed: the normal read
    /// names the error).
    /// </summary>
    private static bool KeepsRaw(Utf8JsonReader probe)
    {
        try
        {
            var depth = probe.CurrentDepth;
            while (probe.Read() && !(probe.TokenType == JsonTokenType.EndArray && probe.CurrentDepth == depth))
            {
                if (probe.TokenType != JsonTokenType.StartObject)
                {
                    probe.Skip();
                    continue;
                }

                while (probe.Read() && probe.TokenType == JsonTokenType.PropertyName)
                {
                    var isType = probe.ValueTextEquals("type"u8);
                    var isCitations = probe.ValueTextEquals("citations"u8);
                    probe.Read();
                    if (isType && probe.TokenType == JsonTokenType.String && (IsServerBlock(ref probe) || IsSearchResult(ref probe))
                        || isCitations && probe.TokenType == JsonTokenType.StartArray && !IsEmptyArray(probe))
                    {
                        return true;
                    }

                    probe.Skip();
                }
            }
        }
        catch (JsonException)
        {
            // Malformed: the normal read says where.
        }

        return false;
    }

    /// <summary>The type at the reader is a server tool's block's, read in place (no string per block on every request).</summary>
    private static bool IsServerBlock(ref Utf8JsonReader r)
    {
        if (r.ValueIsEscaped || r.HasValueSequence)
        {
            return ServerTools.IsServerBlock(r.GetString());
        }

        var type = r.ValueSpan;
        return type.SequenceEqual("server_tool_use"u8) || type.SequenceEqual("mcp_tool_use"u8) || type.SequenceEqual("container_upload"u8)
            || type.EndsWith("_tool_result"u8) && !type.SequenceEqual("tool_result"u8);
    }

    /// <summary>The type at the reader is <c>search_result</c> (a block the caller gives Claude as it is, with a text form for others).</summary>
    internal static bool IsSearchResult(ref Utf8JsonReader r) =>
        r.ValueIsEscaped || r.HasValueSequence ? r.GetString() == "search_result" : r.ValueSpan.SequenceEqual("search_result"u8);

    /// <summary>The array starting at the reader has no element (an empty <c>citations</c> is no citation).</summary>
    private static bool IsEmptyArray(Utf8JsonReader copy) => copy.Read() && copy.TokenType == JsonTokenType.EndArray;

    /// <summary>The blocks one by one (a server tool's as its type only: Claude checks the rest), and the array as written.</summary>
    private static AnthropicInputContent ReadWithRaw(ref Utf8JsonReader reader)
    {
        var raw = JsonElement.ParseValue(ref reader);
        var blocks = new List<AnthropicInputBlock>();
        var i = 0;
        foreach (var element in raw.EnumerateArray())
        {
            if (element.ValueKind == JsonValueKind.Object && element.TryGetProperty("type"u8, out var type) && type.ValueKind == JsonValueKind.String && ServerTools.IsServerBlock(type.GetString()))
            {
                blocks.Add(new AnthropicInputBlock { Type = type.GetString()! });
            }
            else
            {
                try
                {
                    blocks.Add(element.Deserialize(AnthropicRequestContext.Default.AnthropicInputBlock)!);
                }
                catch (JsonException ex)
                {
                    throw Serialization.JsonProblems.Within(ex, $"[{i}]");
                }
            }

            i++;
        }

        return new AnthropicInputContent { Blocks = blocks, Raw = raw };
    }

    public override void Write(Utf8JsonWriter writer, AnthropicInputContent value, JsonSerializerOptions options) =>
        throw new NotSupportedException("Anthropic request content is only read.");
}

/// <summary>A string, or an array of text blocks (joined); anything else is an error naming the field.</summary>
internal sealed class AnthropicTextConverter : JsonConverter<AnthropicSystem>
{
    public override AnthropicSystem? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String)
        {
            return new AnthropicSystem { Text = reader.GetString() ?? string.Empty };
        }

        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new JsonException("must be a string or a list of text blocks");
        }

        var text = new StringBuilder();
        JsonElement? raw = HasSearchResult(reader) ? JsonElement.ParseValue(ref reader) : null;
        var blocks = raw is { } written ? FromElement(written) : Serialization.JsonProblems.ReadWithin(ref reader, AnthropicRequestContext.Default.ListAnthropicInputBlock) ?? [];
        for (var i = 0; i < blocks.Count; i++)
        {
            switch (blocks[i])
            {
                case { Type: "text", Text: { } t }:
                    text.Append(t);
                    break;
                case { Type: "search_result" } result:
                    if (AnthropicCodec.SearchResultProblem(result) is { } problem)
                    {
                        throw Serialization.JsonProblems.Within(new JsonException($"{problem.Field}: {problem.Message}"), $"[{i}].{problem.Field}");
                    }

                    text.Append(text.Length > 0 ? "\n\n" : string.Empty).Append(AnthropicCodec.SearchResultText(result));
                    break;
                default:
                    throw new JsonException("must be a string or a list of text blocks (type 'text' with a 'text' field) and search results");
            }
        }

        return new AnthropicSystem { Text = text.ToString(), Raw = raw, CachedBlocks = raw is null && blocks.Exists(static b => b.CacheControl is not null) ? blocks : null };
    }

    /// <summary>Whether the array at the reader holds a <c>search_result</c> block (on a copy of the reader; false for anything malformed).</summary>
    private static bool HasSearchResult(Utf8JsonReader probe)
    {
        try
        {
            var depth = probe.CurrentDepth;
            while (probe.Read() && !(probe.TokenType == JsonTokenType.EndArray && probe.CurrentDepth == depth))
            {
                if (probe.TokenType == JsonTokenType.PropertyName && probe.CurrentDepth == depth + 2 && probe.ValueTextEquals("type"u8)
                    && probe.Read() && probe.TokenType == JsonTokenType.String && AnthropicInputContentConverter.IsSearchResult(ref probe))
                {
                    return true;
                }
            }
        }
        catch (JsonException)
        {
            // Malformed: the normal read says where.
        }

        return false;
    }

    private static List<AnthropicInputBlock> FromElement(JsonElement written)
    {
        var blocks = new List<AnthropicInputBlock>();
        var i = 0;
        foreach (var element in written.EnumerateArray())
        {
            try
            {
                blocks.Add(element.Deserialize(AnthropicRequestContext.Default.AnthropicInputBlock) ?? throw new JsonException("must be a content block"));
            }
            catch (JsonException ex)
            {
                throw Serialization.JsonProblems.Within(ex, $"[{i}]");
            }

            i++;
        }

        return blocks;
    }

    public override void Write(Utf8JsonWriter writer, AnthropicSystem value, JsonSerializerOptions options) =>
        throw new NotSupportedException("Anthropic request text is only read.");
}

[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    AllowDuplicateProperties = false,
    NumberHandling = JsonNumberHandling.Strict)]
[JsonSerializable(typeof(AnthropicRequest))]
[JsonSerializable(typeof(List<AnthropicInputBlock>))]
[JsonSerializable(typeof(string))]
[JsonSerializable(typeof(ToolChoiceFunction))]
[JsonSerializable(typeof(int))]
[JsonSerializable(typeof(bool))]
[JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class AnthropicRequestContext : JsonSerializerContext;
