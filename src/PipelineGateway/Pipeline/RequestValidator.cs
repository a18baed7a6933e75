using System.Text.Json;

namespace PipelineGateway.Pipeline;

/// <summary>Checks a request before it takes queue room; a failure names the offending field.</summary>
internal static class RequestValidator
{
    public static void Validate(ChatCompletionRequest? request)
    {
        if (request is null)
        {
            throw new InvalidRequestException(null, "The request body is missing.");
        }

        if (string.IsNullOrWhiteSpace(request.Model))
        {
            throw new InvalidRequestException("model", "'model' is required.");
        }

        if (request.Messages is null || request.Messages.Count == 0)
        {
            throw new InvalidRequestException("messages", "'messages' must contain at least one message.");
        }

        for (var i = 0; i < request.Messages.Count; i++)
        {
            ValidateMessage(request.Messages[i], i);
        }

        if (request.Temperature is { } t && (t < 0 || t > 2 || double.IsNaN(t)))
        {
            throw new InvalidRequestException("temperature", $"'temperature' must be between 0 and 2; got {t}.");
        }

        if (request.TopP is { } p && (p <= 0 || p > 1 || double.IsNaN(p)))
        {
            throw new InvalidRequestException("top_p", $"'top_p' must be greater than 0 and at most 1; got {p}.");
        }

        if (request.MaxTokens is <= 0)
        {
            throw new InvalidRequestException("max_tokens", $"'max_tokens' must be at least 1; got {request.MaxTokens}.");
        }

        if (request.MaxCompletionTokens is <= 0)
        {
            throw new InvalidRequestException("max_completion_tokens", $"'max_completion_tokens' must be at least 1; got {request.MaxCompletionTokens}.");
        }

        if (request.N is < 1 or > 128)
        {
            throw new InvalidRequestException("n", $"'n' must be between 1 and 128; got {request.N}.");
        }

        if (request.Stop is { Count: > 4 })
        {
            throw new InvalidRequestException("stop", "'stop' takes at most 4 sequences.");
        }

        for (var i = 0; i < (request.Stop?.Count ?? 0); i++)
        {
            if (request.Stop![i] is null)
            {
                throw new InvalidRequestException($"stop[{i}]", $"'stop[{i}]' must be a string.");
            }
        }

        if (request.Tools is { } tools)
        {
            for (var i = 0; i < tools.Count; i++)
            {
                if (tools[i] is null)
                {
                    throw new InvalidRequestException($"tools[{i}]", $"'tools[{i}]' is null; a tool is an object with 'type' and 'function'.");
                }

                if (tools[i].Type == "function" && string.IsNullOrWhiteSpace(tools[i].Function?.Name))
                {
                    throw new InvalidRequestException($"tools[{i}].function.name", $"'tools[{i}].function.name' is required.");
                }

                if (tools[i].Function?.Parameters is { ValueKind: not (JsonValueKind.Object or JsonValueKind.Null) } parameters)
                {
                    // Every upstream refuses it (a JSON Schema is an object); refused here, before queue room, fallbacks
                    // and a translation to Claude's input_schema are spent on it.
                    throw new InvalidRequestException($"tools[{i}].function.parameters", $"Invalid type for 'tools[{i}].function.parameters': expected an object (a JSON Schema), but got {Serialization.JsonProblems.KindName(parameters.ValueKind)} instead.");
                }
            }
        }

        ValidateToolChoice(request.ToolChoice);
        ValidateChosenTool(request.ToolChoice, request.Tools);
        if (request.AdditionalProperties?.TryGetValue("reasoning_effort", out var effort) == true && effort.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
        {
            // The values are not checked (new ones come: none, minimal, xhigh…; an OpenAI-compatible upstream says which
            // it takes), the type is: a number or an object reached the upstream as it was.
            throw new InvalidRequestException("reasoning_effort", $"Invalid type for 'reasoning_effort': expected a string (such as 'low', 'medium' or 'high'), but got {Serialization.JsonProblems.KindName(effort.ValueKind)} instead.");
        }
        ValidateResponseFormat(request.ResponseFormat);

        if (request.Gateway?.Timeout is { } timeout && timeout <= TimeSpan.Zero)
        {
            throw new InvalidRequestException("timeout", "The request timeout must be positive.");
        }
    }

    private static void ValidateMessage(ChatCompletionMessage? m, int i)
    {
        if (m is null)
        {
            throw new InvalidRequestException($"messages[{i}]", $"'messages[{i}]' is null.");
        }

        if (string.IsNullOrEmpty(m.Role) || !ChatRoles.IsKnown(m.Role))
        {
            throw new InvalidRequestException($"messages[{i}].role", $"'messages[{i}].role' must be one of system, developer, user, assistant, tool; got '{m.Role}'.");
        }

        switch (m.Role)
        {
            case ChatRoles.Tool when string.IsNullOrEmpty(m.ToolCallId):
                throw new InvalidRequestException($"messages[{i}].tool_call_id", $"'messages[{i}].tool_call_id' is required for a tool message.");
            case ChatRoles.Assistant when m.Content is null && m.ToolCalls is not { Count: > 0 }:
                throw new InvalidRequestException($"messages[{i}].content", $"'messages[{i}]' needs 'content' or 'tool_calls'.");
            case ChatRoles.System or ChatRoles.Developer or ChatRoles.User when m.Content is null:
                throw new InvalidRequestException($"messages[{i}].content", $"'messages[{i}].content' is required for a {m.Role} message.");
        }

        // (Where a refusal points is spelled only when refusing: an agent's step has dozens of valid calls and parts.)
        for (var j = 0; j < (m.ToolCalls?.Count ?? 0); j++)
        {
            var call = m.ToolCalls![j];
            if (call is null)
            {
                var at = $"messages[{i}].tool_calls[{j}]";
                throw new InvalidRequestException(at, $"'{at}' is null; a tool call is an object with 'id', 'type' and 'function'.");
            }

            if (string.IsNullOrEmpty(call.Id))
            {
                throw Refused($"messages[{i}].tool_calls[{j}].id", "is required.");
            }

            if (string.IsNullOrWhiteSpace(call.Function?.Name))
            {
                throw Refused($"messages[{i}].tool_calls[{j}].function.name", "is required.");
            }
        }

        var parts = m.Content?.Parts;
        for (var j = 0; j < (parts?.Count ?? 0); j++)
        {
            var part = parts![j];
            if (part is null || string.IsNullOrEmpty(part.Type))
            {
                throw Refused($"messages[{i}].content[{j}].type", "is required (text, image_url, input_audio or file).");
            }

            if (part.Type == "text" && part.Text is null)
            {
                throw Refused($"messages[{i}].content[{j}].text", "is required for a text part.");
            }

            if (part.Type == "image_url" && string.IsNullOrEmpty(part.ImageUrl?.Url))
            {
                throw Refused($"messages[{i}].content[{j}].image_url.url", "is required for an image part.");
            }
        }
    }

    /// <summary>A 400 naming <paramref name="field"/>: <c>'field' what</c>.</summary>
    private static InvalidRequestException Refused(string field, string what) => new(field, $"'{field}' {what}");

    /// <summary>
    /// <c>tool_choice</c> is kept as JSON for OpenAI-compatible upstreams, so its shape is checked here, once, before
    /// any provider translates it: a string of the known modes, or an object with a string <c>type</c> whose
    /// <c>function</c> (when given) names one.
    /// </summary>
    private static void ValidateToolChoice(JsonElement? choice)
    {
        if (choice is not { } c || c.ValueKind == JsonValueKind.Null)
        {
            return;
        }

        if (c.ValueKind == JsonValueKind.String)
        {
            if (c.GetString() is not ("none" or "auto" or "required"))
            {
                throw new InvalidRequestException("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or an object naming a function.");
            }

            return;
        }

        if (c.ValueKind != JsonValueKind.Object || !c.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
        {
            throw new InvalidRequestException("tool_choice", "'tool_choice' must be a string or an object with a string 'type'.");
        }

        var hasFunction = c.TryGetProperty("function", out var function);
        if ((hasFunction || type.GetString() == "function")
            && (function.ValueKind != JsonValueKind.Object || !function.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(name.GetString())))
        {
            throw new InvalidRequestException("tool_choice.function.name", "'tool_choice.function.name' must name a function.");
        }
    }

    /// <summary>
    /// A <c>tool_choice</c> that forces a call — <c>required</c> (Claude's <c>any</c>), or a function by name — needs the
    /// tool among <c>tools</c>: no upstream can honour it otherwise (OpenAI and Anthropic refuse it; a lenient server
    /// answers without the call the caller forced). Checked once here for every front door, so the message names no
    /// route's spelling of the member.
    /// </summary>
    private static void ValidateChosenTool(JsonElement? choice, List<ToolDefinition>? tools)
    {
        if (choice is not { } c)
        {
            return;
        }

        var forcesCall = c.ValueKind == JsonValueKind.String ? c.ValueEquals("required"u8) : c.ValueKind == JsonValueKind.Object;
        if (forcesCall && tools is not { Count: > 0 })
        {
            throw new InvalidRequestException("tool_choice", "'tool_choice' asks for a tool call, but the request has no 'tools'.");
        }

        if (c.ValueKind == JsonValueKind.Object && c.TryGetProperty("type", out var type) && type.ValueEquals("function"u8)
            && c.TryGetProperty("function", out var function) && function.TryGetProperty("name", out var name)
            && tools!.TrueForAll(static t => t.Type == "function") // another kind (Claude's server tools) names itself its own way
            && !tools.Exists(t => name.ValueEquals(t.Function?.Name)))
        {
            throw new InvalidRequestException("tool_choice", $"'tool_choice' names the function '{Providers.ProviderException.Quoted(name.GetString())}', which is not among 'tools'.");
        }

        // OpenAI's allowed_tools: each function it allows is one of the request's (else no upstream can honour the list).
        if (c.ValueKind == JsonValueKind.Object && c.TryGetProperty("type", out var subset) && subset.ValueEquals("allowed_tools"u8)
            && c.TryGetProperty("allowed_tools", out var allowed) && allowed.ValueKind == JsonValueKind.Object
            && allowed.TryGetProperty("tools", out var list) && list.ValueKind == JsonValueKind.Array
            && tools!.TrueForAll(static t => t.Type == "function"))
        {
            foreach (var entry in list.EnumerateArray())
            {
                if (entry.ValueKind == JsonValueKind.Object && entry.TryGetProperty("function", out var allowedFunction) && allowedFunction.ValueKind == JsonValueKind.Object
                    && allowedFunction.TryGetProperty("name", out var allowedName) && allowedName.ValueKind == JsonValueKind.String
                    && !tools.Exists(t => allowedName.ValueEquals(t.Function?.Name)))
                {
                    throw new InvalidRequestException("tool_choice", $"'tool_choice.allowed_tools' allows the function '{Providers.ProviderException.Quoted(allowedName.GetString())}', which is not among 'tools'.");
                }
            }
        }
    }

    /// <summary><c>response_format</c>: an object whose <c>type</c> is text, json_object or json_schema (with its schema object).</summary>
    private static void ValidateResponseFormat(JsonElement? format)
    {
        if (format is not { } f || f.ValueKind == JsonValueKind.Null)
        {
            return;
        }

        if (f.ValueKind != JsonValueKind.Object || !f.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || type.GetString() is not ("text" or "json_object" or "json_schema"))
        {
            throw new InvalidRequestException("response_format.type", "'response_format' must be an object whose 'type' is 'text', 'json_object' or 'json_schema'.");
        }

        if (type.GetString() == "json_schema"
            && (!f.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object
                || (js.TryGetProperty("schema", out var schema) && schema.ValueKind != JsonValueKind.Object)
                || (js.TryGetProperty("name", out var name) && name.ValueKind != JsonValueKind.String)))
        {
            throw new InvalidRequestException("response_format.json_schema", "'response_format.json_schema' must be an object with a string 'name' and a 'schema' object.");
        }
    }
}
