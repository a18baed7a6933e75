using System.Buffers;
using System.Text;
using System.Text.Json;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// What the simulated provider and the upstream simulator answer to tools and structured output, alike: a forced tool
/// is called with arguments of its schema's shape, and a JSON schema (or JSON mode) is answered with a JSON object —
/// so a client's tool loop or structured-output parsing runs against the default configuration, with no keys.
/// </summary>
internal static class SimulatedTools
{
    /// <summary>
    /// The tool to call: the one the caller named, the first when it requires one, or — left to the model — one the last
    /// message names (none after a tool's result).
    /// </summary>
    public static string? WantsTool(ChatCompletionRequest request)
    {
        if (request.Tools is not { Count: > 0 } tools || request.Messages.Count == 0 || request.Messages[^1].Role == ChatRoles.Tool)
        {
            return null;
        }

        var choice = request.ToolChoice;
        if (choice is { ValueKind: JsonValueKind.Object } named && named.TryGetProperty("function", out var f) && f.ValueKind == JsonValueKind.Object
            && f.TryGetProperty("name", out var name) && name.ValueKind == JsonValueKind.String)
        {
            return name.GetString(); // the tool the caller named, wherever it is in the list
        }

        var required = choice is { ValueKind: JsonValueKind.String } c && c.GetString() == "required";
        if (choice is { ValueKind: JsonValueKind.Object } subset && subset.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.ValueEquals("allowed_tools"u8)
            && subset.TryGetProperty("allowed_tools", out var allowed) && allowed.ValueKind == JsonValueKind.Object && allowed.TryGetProperty("tools", out var list) && list.ValueKind == JsonValueKind.Array)
        {
            // OpenAI's allowed_tools: only the listed functions may be called; "required" makes the first of them called.
            var names = list.EnumerateArray().Select(static e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("function", out var fn) && fn.ValueKind == JsonValueKind.Object
                && fn.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString() : null).OfType<string>().ToHashSet(StringComparer.Ordinal);
            tools = tools.FindAll(t => t.Function?.Name is { } n && names.Contains(n));
            required = allowed.TryGetProperty("mode", out var mode) && mode.ValueKind == JsonValueKind.String && mode.ValueEquals("required"u8);
            choice = null; // left to the model among them, unless required
        }

        if (required)
        {
            return tools.Count > 0 ? tools[0].Function?.Name : null;
        }

        // Left to the model (auto, or no choice): a tool the last message asks for by name is called, as a model would —
        // the tool loop of a model that thinks (Claude cannot think with a forced tool call) needs a call made this way.
        var auto = choice is null or { ValueKind: JsonValueKind.Undefined or JsonValueKind.Null } || choice is { ValueKind: JsonValueKind.String } a && a.GetString() == "auto";
        var asked = request.Messages[^1].Content?.GetText();
        return auto && asked is not null ? tools.FirstOrDefault(t => t.Function?.Name is { Length: > 0 } n && asked.Contains(n, StringComparison.Ordinal))?.Function?.Name : null;
    }

    /// <summary>
    /// The called tool's arguments: a value of the declared type for every property its schema lists (text from the
    /// answer's words, 3 for numbers, true, [] and {}), or <c>{"query": …}</c> for a schema without properties.
    /// </summary>
    public static string ToolArguments(ChatCompletionRequest request, string tool, string[] words) =>
        ObjectFor(request.Tools?.FirstOrDefault(t => t.Function?.Name == tool)?.Function?.Parameters, words, "query");

    /// <summary>
    /// The answer's content when the request asks for structured output: an object of the <c>json_schema</c>'s shape,
    /// or <c>{"answer": …}</c> for JSON mode (<c>json_object</c>); null for plain text.
    /// </summary>
    public static string? StructuredContent(ChatCompletionRequest request, string[] words)
    {
        if (request.ResponseFormat is not { ValueKind: JsonValueKind.Object } format || !format.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
        {
            return null;
        }

        return type.GetString() switch
        {
            "json_schema" => ObjectFor(format.TryGetProperty("json_schema", out var js) && js.ValueKind == JsonValueKind.Object && js.TryGetProperty("schema", out var schema) ? schema : null, words, "answer"),
            "json_object" => ObjectFor(null, words, "answer"),
            _ => null,
        };
    }

    private static string ObjectFor(JsonElement? schema, string[] words, string fallbackMember)
    {
        var text = string.Join(' ', words.Take(3));
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            if (schema is not { ValueKind: JsonValueKind.Object } s || !s.TryGetProperty("properties", out var properties) || properties.ValueKind != JsonValueKind.Object)
            {
                w.WriteString(fallbackMember, text);
            }
            else
            {
                foreach (var property in properties.EnumerateObject())
                {
                    w.WritePropertyName(property.Name);
                    var kind = property.Value.ValueKind == JsonValueKind.Object && property.Value.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : "string";
                    switch (kind)
                    {
                        case "integer" or "number": w.WriteNumberValue(3); break;
                        case "boolean": w.WriteBooleanValue(true); break;
                        case "array": w.WriteStartArray(); w.WriteEndArray(); break;
                        case "object": w.WriteStartObject(); w.WriteEndObject(); break;
                        case "null": w.WriteNullValue(); break;
                        default: w.WriteStringValue(text); break;
                    }
                }
            }

            w.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }
}
