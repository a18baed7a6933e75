using System.Text.Json;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// OpenAI's Responses API request (<c>POST /v1/responses</c>) read into the canonical chat request: the conversation
/// comes in <c>input</c> (messages, the model's function calls, their outputs, reasoning items), whole as the Agents SDK
/// and Codex send it with <c>store: false</c>, or referring to what the gateway stored (<see cref="ResponsesStore"/>):
/// <c>previous_response_id</c> puts the conversation that response ended first, an <c>item_reference</c> stands for the
/// stored item; <c>background</c> asks for a background response (<see cref="BackgroundResponses"/>). What needs state the
/// gateway does not keep (<c>conversation</c>, <c>prompt</c>) and
/// what it has no form for (OpenAI's hosted tools: web search, file search, computer use…; non-function tool choices)
/// is a 400 naming the field, never dropped. Reasoning items the gateway did not write are left out: their encrypted
/// content is for OpenAI's own model only (docs/server.md).
/// </summary>
internal static class ResponsesCodec
{
    /// <summary>Members the gateway reads or knowingly leaves (<c>store</c>, <c>metadata</c>, <c>include</c>, <c>truncation</c>…).</summary>
    private static readonly HashSet<string> Known =
    [
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls",
        "stream", "text", "reasoning", "user", "metadata", "store", "include", "truncation", "service_tier", "prompt_cache_key",
        "safety_identifier", "stream_options", "max_tool_calls", "prompt_cache_retention", "previous_response_id", "top_logprobs",
        "background", "conversation",
    ];

    /// <summary>Where stored things are looked up: an item by its id, the conversation a response ended by the response's id.</summary>
    public interface IStored
    {
        JsonElement? Item(string id);

        JsonElement? Conversation(string responseId);

        /// <summary>A conversation's items (the Conversations API), by the conversation's id.</summary>
        JsonElement? ConversationItems(string conversationId);
    }

    /// <summary>A reference to something the gateway does not have (expired, deleted, another key's, never stored): a 400 with OpenAI's code.</summary>
    public sealed class NotFoundException(string param, string code, string message) : Exception(message)
    {
        public string Param { get; } = param;

        public string Code { get; } = code;
    }

    /// <summary>A request read: the canonical request, and what storing its answer needs.</summary>
    public sealed class Input(ChatCompletionRequest request)
    {
        public ChatCompletionRequest Request { get; } = request;

        /// <summary>The answer is to be stored (<c>store</c> absent or true, as OpenAI's default).</summary>
        public bool Store { get; set; } = true;

        /// <summary>A background response (<c>background: true</c>): answered at once as queued, made apart from the request.</summary>
        public bool Background { get; set; }

        public string? PreviousResponseId { get; set; }

        /// <summary>The conversation (the Conversations API) this response goes on, and is added to.</summary>
        public string? ConversationId { get; set; }

        /// <summary>The conversation <see cref="PreviousResponseId"/> ended, as stored.</summary>
        public JsonElement? Earlier { get; set; }

        /// <summary>This request's input items, references replaced by what they stand for (a string input as its user message).</summary>
        public List<JsonElement> Items { get; } = [];
    }

    /// <summary>
    /// What a body refers to, read ahead so the store can be asked before the body is read in full (the store may be
    /// Redis): its <c>previous_response_id</c> and its <c>item_reference</c> ids. Nothing for a body that is not what it
    /// should be — <see cref="Parse(ReadOnlySpan{byte}, IStored?)"/> says what is wrong with it.
    /// </summary>
    public static (string? Previous, List<string> Items, string? Conversation) References(byte[] body)
    {
        var items = new List<string>();
        var span = body.AsSpan();
        if (span.IndexOf("previous_response_id"u8) < 0 && span.IndexOf("item_reference"u8) < 0 && span.IndexOf("conversation"u8) < 0 && span.IndexOf("\\u"u8) < 0)
        {
            return (null, items, null); // refers to nothing: not parsed again (a name spelt with escapes is looked for below)
        }

        try
        {
            using var doc = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 64 });
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                return (null, items, null);
            }

            var previous = root.TryGetProperty("previous_response_id", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString() : null;
            var conversation = root.TryGetProperty("conversation", out var c) ? ConversationIdOf(c) : null;
            if (root.TryGetProperty("input", out var input) && input.ValueKind == JsonValueKind.Array)
            {
                foreach (var item in input.EnumerateArray())
                {
                    if (item.ValueKind == JsonValueKind.Object && item.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.ValueEquals("item_reference")
                        && item.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String && id.GetString() is { Length: > 0 } text)
                    {
                        items.Add(text);
                    }
                }
            }

            return (previous, items, conversation);
        }
        catch (JsonException)
        {
            return (null, items, null);
        }
    }

    /// <summary>Reads and checks a body (no stored things: every reference is not found).</summary>
    public static ChatCompletionRequest Parse(ReadOnlySpan<byte> body) => Parse(body, null).Request;

    /// <summary>
    /// Reads and checks a body, references looked up in <paramref name="stored"/>; throws <see cref="InvalidRequestException"/>
    /// naming the field, or <see cref="NotFoundException"/> for a reference to nothing stored.
    /// </summary>
    public static Input Parse(ReadOnlySpan<byte> body, IStored? stored)
    {
        using var doc = JsonDocument.Parse(body.ToArray(), new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 64 });
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException(null, "The request body must be a JSON object.");
        }

        foreach (var member in root.EnumerateObject())
        {
            if (member.Name is "prompt")
            {
                if (member.Value.ValueKind is not (JsonValueKind.Null or JsonValueKind.False))
                {
                    throw new InvalidRequestException(member.Name, $"{member.Name} is not supported: this gateway keeps no prompts (send the instructions in 'instructions' and the conversation in 'input').");
                }
            }
            else if (!Known.Contains(member.Name))
            {
                throw new InvalidRequestException(member.Name, $"Unknown parameter: '{Providers.ProviderException.Quoted(member.Name)}'.");
            }
        }

        var request = new ChatCompletionRequest
        {
            Model = RequiredString(root, "model"),
            Temperature = Number(root, "temperature", 0, 2),
            TopP = Number(root, "top_p", 0, 1),
            MaxTokens = Integer(root, "max_output_tokens", 1),
            User = OptionalString(root, "user") ?? OptionalString(root, "safety_identifier"),
            Stream = Boolean(root, "stream") == true ? true : null,
        };

        var read = new Input(request)
        {
            Store = Boolean(root, "store") != false,
            Background = Boolean(root, "background") == true,
            PreviousResponseId = OptionalString(root, "previous_response_id"),
        };
        if (read.Background && !read.Store)
        {
            // As OpenAI's: a background response is polled for, so it is kept.
            throw new InvalidRequestException("store", "store: a background response must be stored ('background': true needs 'store' true or absent).");
        }

        if (request.Stream == true)
        {
            request.StreamOptions = new StreamOptions { IncludeUsage = true }; // response.completed carries the usage
        }

        if (OptionalString(root, "instructions") is { Length: > 0 } instructions)
        {
            request.Messages.Add(ChatCompletionMessage.System(instructions)); // this request's own: an earlier one's are not carried
        }

        if (!root.TryGetProperty("input", out var input) || input.ValueKind == JsonValueKind.Null)
        {
            throw new InvalidRequestException("input", "input: required (a string or a list of input items).");
        }

        List<ThinkingBlock>? thinking = null;
        if (root.TryGetProperty("conversation", out var conversation) && conversation.ValueKind != JsonValueKind.Null)
        {
            read.ConversationId = ConversationIdOf(conversation)
                ?? throw new InvalidRequestException("conversation", "conversation: expected a conversation's id (a string, or an object with 'id').");
            if (read.PreviousResponseId is not null)
            {
                throw new InvalidRequestException("conversation", "conversation: cannot be used with 'previous_response_id' (a conversation carries its own history).");
            }

            if (stored?.ConversationItems(read.ConversationId) is not { ValueKind: JsonValueKind.Array } items)
            {
                throw new NotFoundException("conversation", "conversation_not_found", $"Conversation with id '{Providers.ProviderException.Quoted(read.ConversationId)}' not found.");
            }

            read.Earlier = items;
            var e = 0;
            foreach (var item in items.EnumerateArray())
            {
                AddItem(request, item, $"conversation[{e++}]", ref thinking);
            }
        }

        if (read.PreviousResponseId is { } previous)
        {
            if (stored?.Conversation(previous) is not { ValueKind: JsonValueKind.Array } earlier)
            {
                throw new NotFoundException("previous_response_id", "previous_response_not_found", $"Previous response with id '{Providers.ProviderException.Quoted(previous)}' not found.");
            }

            read.Earlier = earlier;
            var e = 0;
            foreach (var item in earlier.EnumerateArray())
            {
                AddItem(request, item, $"previous_response_id[{e++}]", ref thinking);
            }
        }

        if (input.ValueKind == JsonValueKind.String)
        {
            request.Messages.Add(ChatCompletionMessage.User(input.GetString()!));
            read.Items.Add(Element(w =>
            {
                w.WriteStartObject();
                w.WriteString("type", "message");
                w.WriteString("role", ChatRoles.User);
                w.WriteString("content", input.GetString());
                w.WriteEndObject();
            }));
        }
        else if (input.ValueKind == JsonValueKind.Array)
        {
            var i = 0;
            foreach (var given in input.EnumerateArray())
            {
                var at = $"input[{i++}]";
                var item = Resolve(given, at, stored);
                AddItem(request, item, at, ref thinking);
                read.Items.Add(item.Clone());
            }
        }
        else
        {
            throw new InvalidRequestException("input", "input: must be a string or a list of input items.");
        }

        if (request.Messages.Count == 0 || request.Messages.TrueForAll(static m => m.Role is ChatRoles.System or ChatRoles.Developer))
        {
            throw new InvalidRequestException("input", "input: at least one message is required.");
        }

        ReadTools(root, request);
        ReadText(root, request);
        if (root.TryGetProperty("reasoning", out var reasoning) && reasoning.ValueKind != JsonValueKind.Null)
        {
            // The effort's values are not checked (new ones come; the upstream says which it takes), its type is: a
            // number or a misplaced object was dropped without a word.
            if (reasoning.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidRequestException("reasoning", $"reasoning: expected an object, got {Serialization.JsonProblems.KindName(reasoning.ValueKind)}.");
            }

            if (reasoning.TryGetProperty("effort", out var effort) && effort.ValueKind != JsonValueKind.Null)
            {
                (request.AdditionalProperties ??= [])["reasoning_effort"] = effort.ValueKind == JsonValueKind.String
                    ? effort.Clone()
                    : throw new InvalidRequestException("reasoning.effort", $"reasoning.effort: expected a string (such as 'low', 'medium' or 'high'), got {Serialization.JsonProblems.KindName(effort.ValueKind)}.");
            }
        }

        foreach (var carried in (ReadOnlySpan<string>)["service_tier", "prompt_cache_key"])
        {
            if (root.TryGetProperty(carried, out var value) && value.ValueKind == JsonValueKind.String)
            {
                (request.AdditionalProperties ??= [])[carried] = value.Clone(); // the chat format has them too
            }
        }

        ReadLogprobs(root, request);
        if (Boolean(root, "parallel_tool_calls") is { } parallel)
        {
            (request.AdditionalProperties ??= [])["parallel_tool_calls"] = Element(w => w.WriteBooleanValue(parallel));
        }

        return read;
    }

    /// <summary>An input item, or the stored item an <c>item_reference</c> stands for.</summary>
    private static JsonElement Resolve(JsonElement item, string at, IStored? stored)
    {
        if (item.ValueKind != JsonValueKind.Object || !item.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || !type.ValueEquals("item_reference"))
        {
            return item;
        }

        var id = RequiredString(item, "id", at);
        return stored?.Item(id) ?? throw new NotFoundException($"{at}.id", "item_not_found", $"Item with id '{Providers.ProviderException.Quoted(id)}' not found.");
    }

    /// <summary>
    /// One input item: a message, a function call the model made, its output. A reasoning item the gateway wrote carries
    /// Claude's thinking blocks (<see cref="ResponsesReasoning"/>): they go to the assistant turn that follows it
    /// (<paramref name="thinking"/> holds them until then), as Claude needs them back in a tool loop; another reasoning
    /// item (OpenAI's own encrypted reasoning) has no canonical form, and no other model could read it: left out.
    /// </summary>
    private static void AddItem(ChatCompletionRequest request, JsonElement item, string at, ref List<ThinkingBlock>? thinking)
    {
        if (item.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException(at, $"{at}: must be an input item (an object).");
        }

        var type = item.TryGetProperty("type", out var t) ? t.ValueKind == JsonValueKind.String ? t.GetString() : throw new InvalidRequestException($"{at}.type", $"{at}.type: must be a string.") : "message";
        switch (type)
        {
            case "message":
                AddMessage(request, item, at);
                if (request.Messages[^1].Role == ChatRoles.Assistant)
                {
                    request.Messages[^1].AdditionalProperties = ResponsesReasoning.Attach(request.Messages[^1].AdditionalProperties, ref thinking);
                }

                break;
            case "function_call":
                var call = new ToolCall
                {
                    Id = RequiredString(item, "call_id", at),
                    Type = "function",
                    Function = new FunctionCall { Name = RequiredString(item, "name", at), Arguments = RequiredString(item, "arguments", at) },
                };
                // Consecutive calls are one assistant turn with several tool calls (as the chat format has them).
                if (request.Messages.Count > 0 && request.Messages[^1] is { Role: ChatRoles.Assistant, ToolCalls: { } calls })
                {
                    calls.Add(call);
                }
                else
                {
                    request.Messages.Add(new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [call], AdditionalProperties = ResponsesReasoning.Attach(null, ref thinking) });
                }

                break;
            case "function_call_output":
                request.Messages.Add(ChatCompletionMessage.Tool(RequiredString(item, "call_id", at), Output(item, at)));
                break;
            case "reasoning":
                if (ResponsesReasoning.Read(item, at) is { Count: > 0 } blocks)
                {
                    (thinking ??= []).AddRange(blocks);
                }

                break;
            default:
                throw new InvalidRequestException($"{at}.type", $"{at}.type: '{Providers.ProviderException.Quoted(type)}' is not supported by this gateway (it carries message, function_call, function_call_output, reasoning and item_reference items).");
        }
    }

    /// <summary>A function call's output: a string, or text parts (joined); an image in it has no form in a tool message.</summary>
    private static string Output(JsonElement item, string at)
    {
        if (!item.TryGetProperty("output", out var output) || output.ValueKind is not (JsonValueKind.String or JsonValueKind.Array))
        {
            throw new InvalidRequestException($"{at}.output", $"{at}.output: required (a string or a list of input_text parts).");
        }

        if (output.ValueKind == JsonValueKind.String)
        {
            return output.GetString()!;
        }

        var text = new System.Text.StringBuilder();
        var j = 0;
        foreach (var part in output.EnumerateArray())
        {
            var path = $"{at}.output[{j++}]";
            if (part.ValueKind != JsonValueKind.Object || OptionalString(part, "type") is not ("input_text" or "output_text"))
            {
                throw new InvalidRequestException($"{path}.type", $"{path}: only text parts (input_text) are supported in a function call's output by this gateway.");
            }

            text.Append(RequiredString(part, "text", path));
        }

        return text.ToString();
    }

    private static void AddMessage(ChatCompletionRequest request, JsonElement item, string at)
    {
        var role = RequiredString(item, "role", at);
        if (role is not (ChatRoles.User or ChatRoles.Assistant or ChatRoles.System or ChatRoles.Developer))
        {
            throw new InvalidRequestException($"{at}.role", $"{at}.role: must be one of 'user', 'assistant', 'system', 'developer'.");
        }

        if (!item.TryGetProperty("content", out var content))
        {
            throw new InvalidRequestException($"{at}.content", $"{at}.content: required.");
        }

        if (content.ValueKind == JsonValueKind.String)
        {
            request.Messages.Add(new ChatCompletionMessage { Role = role, Content = content.GetString()! });
            return;
        }

        if (content.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidRequestException($"{at}.content", $"{at}.content: must be a string or a list of content parts.");
        }

        var parts = new List<ContentPart>();
        var j = 0;
        foreach (var part in content.EnumerateArray())
        {
            var path = $"{at}.content[{j++}]";
            var partType = part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var pt) && pt.ValueKind == JsonValueKind.String
                ? pt.GetString()
                : throw new InvalidRequestException($"{path}.type", $"{path}: must be a content part with a type.");
            switch (partType)
            {
                case "input_text" or "output_text":
                    parts.Add(new ContentPart { Type = "text", Text = RequiredString(part, "text", path) });
                    break;
                case "refusal" when role == ChatRoles.Assistant:
                    parts.Add(new ContentPart { Type = "text", Text = RequiredString(part, "refusal", path) });
                    break;
                case "input_image" when part.TryGetProperty("image_url", out var url) && url.ValueKind == JsonValueKind.String:
                    parts.Add(new ContentPart
                    {
                        Type = "image_url",
                        ImageUrl = new ImageUrl { Url = url.GetString()!, Detail = OptionalString(part, "detail") },
                    });
                    break;
                default:
                    throw new InvalidRequestException($"{path}.type", $"{path}.type: '{Providers.ProviderException.Quoted(partType)}' is not supported by this gateway (input_text, output_text, refusal, input_image by image_url).");
            }
        }

        request.Messages.Add(new ChatCompletionMessage
        {
            Role = role,
            Content = parts.TrueForAll(static p => p.Type == "text") ? new MessageContent(string.Concat(parts.Select(static p => p.Text))) : new MessageContent(parts),
        });
    }

    private static void ReadTools(JsonElement root, ChatCompletionRequest request)
    {
        if (root.TryGetProperty("tools", out var tools) && tools.ValueKind != JsonValueKind.Null)
        {
            if (tools.ValueKind != JsonValueKind.Array)
            {
                throw new InvalidRequestException("tools", "tools: must be a list.");
            }

            var list = new List<ToolDefinition>();
            var i = 0;
            foreach (var tool in tools.EnumerateArray())
            {
                var at = $"tools[{i++}]";
                var type = tool.ValueKind == JsonValueKind.Object ? OptionalString(tool, "type") : null;
                if (type != "function")
                {
                    throw new InvalidRequestException($"{at}.type", $"{at}.type: only function tools are supported by this gateway (OpenAI's hosted tools run at OpenAI only), got '{Providers.ProviderException.Quoted(type)}'.");
                }

                list.Add(new ToolDefinition
                {
                    Function = new FunctionDefinition
                    {
                        Name = RequiredString(tool, "name", at),
                        Description = OptionalString(tool, "description"),
                        Parameters = tool.TryGetProperty("parameters", out var p) && p.ValueKind != JsonValueKind.Null
                            ? p.ValueKind == JsonValueKind.Object ? p.Clone() : throw new InvalidRequestException($"{at}.parameters", $"{at}.parameters: expected an object (a JSON Schema), got {Serialization.JsonProblems.KindName(p.ValueKind)}.")
                            : null,
                        Strict = tool.TryGetProperty("strict", out var s) && s.ValueKind is JsonValueKind.True or JsonValueKind.False ? s.GetBoolean() : null,
                    },
                });
            }

            request.Tools = list.Count > 0 ? list : null;
        }

        if (root.TryGetProperty("tool_choice", out var choice) && choice.ValueKind != JsonValueKind.Null)
        {
            request.ToolChoice = choice.ValueKind switch
            {
                JsonValueKind.String when choice.GetString() is "auto" or "none" or "required" => choice.Clone(),
                JsonValueKind.Object when OptionalString(choice, "type") == "function" && OptionalString(choice, "name") is { } name => Element(w => WriteNamedFunction(w, name)),
                JsonValueKind.Object when OptionalString(choice, "type") == "allowed_tools" => AllowedTools(choice),
                _ => throw new InvalidRequestException("tool_choice", "tool_choice: must be 'auto', 'none', 'required', {\"type\": \"function\", \"name\": …} or {\"type\": \"allowed_tools\", \"mode\": …, \"tools\": […]}."),
            };
        }
    }

    /// <summary>A function named as the chat format names one: <c>{"type":"function","function":{"name":…}}</c>.</summary>
    private static void WriteNamedFunction(Utf8JsonWriter w, string name)
    {
        w.WriteStartObject();
        w.WriteString("type", "function");
        w.WriteStartObject("function");
        w.WriteString("name", name);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>
    /// The Responses API's <c>allowed_tools</c> choice (<c>{"type":"allowed_tools","mode":"auto"|"required","tools":[{"type":
    /// "function","name":…}]}</c>) in the chat format's shape, which nests it and names each function under
    /// <c>function</c> — what an OpenAI deployment takes, and what the Anthropic translation offers Claude as the only tools.
    /// </summary>
    private static JsonElement AllowedTools(JsonElement choice)
    {
        var mode = OptionalString(choice, "mode");
        if (mode is not ("auto" or "required") || !choice.TryGetProperty("tools", out var list) || list.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidRequestException("tool_choice", "tool_choice: allowed_tools needs a mode ('auto' or 'required') and a list of tools.");
        }

        var names = new List<string>();
        foreach (var entry in list.EnumerateArray())
        {
            if (entry.ValueKind != JsonValueKind.Object || OptionalString(entry, "type") != "function" || OptionalString(entry, "name") is not { } name)
            {
                throw new InvalidRequestException("tool_choice", "tool_choice: each of allowed_tools' tools must be {\"type\": \"function\", \"name\": …} (the function tools this route carries).");
            }

            names.Add(name);
        }

        return Element(w =>
        {
            w.WriteStartObject();
            w.WriteString("type", "allowed_tools");
            w.WriteStartObject("allowed_tools");
            w.WriteString("mode", mode);
            w.WriteStartArray("tools");
            foreach (var name in names)
            {
                WriteNamedFunction(w, name);
            }

            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        });
    }

    /// <summary>
    /// Log probabilities — <c>include</c> naming <c>message.output_text.logprobs</c>, or <c>top_logprobs</c> above 0 — as the
    /// chat format's <c>logprobs</c> and <c>top_logprobs</c> (a deployment that cannot give them refuses them, as on the chat
    /// route); the answer's text parts carry them.
    /// </summary>
    private static void ReadLogprobs(JsonElement root, ChatCompletionRequest request)
    {
        var top = Integer(root, "top_logprobs", 0);
        if (top > 20)
        {
            throw new InvalidRequestException("top_logprobs", "top_logprobs: must be an integer from 0 to 20.");
        }

        var included = false;
        if (root.TryGetProperty("include", out var include) && include.ValueKind == JsonValueKind.Array)
        {
            foreach (var name in include.EnumerateArray())
            {
                included |= name.ValueKind == JsonValueKind.String && name.ValueEquals("message.output_text.logprobs");
            }
        }

        if (included || top > 0)
        {
            (request.AdditionalProperties ??= [])["logprobs"] = Element(static w => w.WriteBooleanValue(true));
            if (top > 0)
            {
                request.AdditionalProperties["top_logprobs"] = Element(w => w.WriteNumberValue(top.Value));
            }
        }
    }

    /// <summary><c>text.format</c> as the chat format's <c>response_format</c>.</summary>
    private static void ReadText(JsonElement root, ChatCompletionRequest request)
    {
        if (!root.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.Object || !text.TryGetProperty("format", out var format) || format.ValueKind == JsonValueKind.Null)
        {
            return;
        }

        switch (format.ValueKind == JsonValueKind.Object ? OptionalString(format, "type") : null)
        {
            case "text":
                break;
            case "json_object":
                request.ResponseFormat = Element(static w =>
                {
                    w.WriteStartObject();
                    w.WriteString("type", "json_object");
                    w.WriteEndObject();
                });
                break;
            case "json_schema":
                var name = RequiredString(format, "name", "text.format");
                var description = OptionalString(format, "description");
                request.ResponseFormat = Element(w =>
                {
                    w.WriteStartObject();
                    w.WriteString("type", "json_schema");
                    w.WriteStartObject("json_schema");
                    w.WriteString("name", name);
                    if (description is not null)
                    {
                        w.WriteString("description", description);
                    }

                    if (format.TryGetProperty("schema", out var schema) && schema.ValueKind == JsonValueKind.Object)
                    {
                        w.WritePropertyName("schema");
                        schema.WriteTo(w);
                    }

                    if (format.TryGetProperty("strict", out var strict) && strict.ValueKind is JsonValueKind.True or JsonValueKind.False)
                    {
                        w.WriteBoolean("strict", strict.GetBoolean());
                    }

                    w.WriteEndObject();
                    w.WriteEndObject();
                });
                break;
            default:
                throw new InvalidRequestException("text.format.type", "text.format.type: must be 'text', 'json_object' or 'json_schema'.");
        }
    }

    private static JsonElement Element(Action<Utf8JsonWriter> write)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(128);
        using (var w = new Utf8JsonWriter(buffer))
        {
            write(w);
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
    }

    private static string RequiredString(JsonElement o, string name, string? at = null) =>
        o.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String && v.GetString() is { Length: > 0 } s
            ? s
            : throw new InvalidRequestException(at is null ? name : $"{at}.{name}", $"{(at is null ? name : $"{at}.{name}")}: required (a non-empty string).");

    private static string? OptionalString(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null
            ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidRequestException(name, $"{name}: must be a string.")
            : null;

    private static double? Number(JsonElement o, string name, double min, double max)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out var d) && double.IsFinite(d) && d >= min && d <= max
            ? d
            : throw new InvalidRequestException(name, $"{name}: must be a number from {min} to {max}.");
    }

    private static int? Integer(JsonElement o, string name, int min)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var n) && n >= min
            ? n
            : throw new InvalidRequestException(name, $"{name}: must be an integer of at least {min}.");
    }

    /// <summary>A <c>conversation</c> member's id: the string itself, or an object's <c>id</c> (null: neither).</summary>
    private static string? ConversationIdOf(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String when value.GetString() is { Length: > 0 } id => id,
        JsonValueKind.Object when value.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String && id.GetString() is { Length: > 0 } text => text,
        _ => null,
    };

    private static bool? Boolean(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null
            ? v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw new InvalidRequestException(name, $"{name}: must be a boolean.")
            : null;
}
