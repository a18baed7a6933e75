using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway;

/// <summary>One message of a conversation (system, developer, user, assistant or tool).</summary>
public sealed class ChatCompletionMessage
{
    public string Role { get; set; } = string.Empty;

    public MessageContent? Content { get; set; }

    public string? Name { get; set; }

    public List<ToolCall>? ToolCalls { get; set; }

    public string? ToolCallId { get; set; }

    public string? Refusal { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }

    public static ChatCompletionMessage System(string text) => new() { Role = ChatRoles.System, Content = text };

    public static ChatCompletionMessage User(string text) => new() { Role = ChatRoles.User, Content = text };

    public static ChatCompletionMessage Assistant(string text) => new() { Role = ChatRoles.Assistant, Content = text };

    public static ChatCompletionMessage Tool(string toolCallId, string text) =>
        new() { Role = ChatRoles.Tool, ToolCallId = toolCallId, Content = text };
}

public static class ChatRoles
{
    public const string System = "system";
    public const string Developer = "developer";
    public const string User = "user";
    public const string Assistant = "assistant";
    public const string Tool = "tool";

    public static bool IsKnown(string role) =>
        role is System or Developer or User or Assistant or Tool;
}

/// <summary>
/// Message content: either plain text (JSON string) or a list of parts (JSON array), as in the OpenAI schema.
/// </summary>
[JsonConverter(typeof(MessageContentConverter))]
public sealed class MessageContent
{
    private readonly byte[]? _json;
    private readonly int _length;
    private string? _text;

    public MessageContent(string text) => _text = text;

    public MessageContent(List<ContentPart> parts) => Parts = parts;

    /// <summary>
    /// A text as a request spelled it: the JSON string token (quotes included) already checked to decode — valid UTF-8,
    /// escapes that make characters — and its length in UTF-16 code units. The string is made when first asked for:
    /// an agent's request carries tens of KB of texts that the gateway mostly sends on as they came (see
    /// <see cref="RequestJson"/>'s reader).
    /// </summary>
    internal MessageContent(byte[] json, int length)
    {
        _json = json;
        _length = length;
    }

    /// <summary>The text; null when the content is a list of parts.</summary>
    public string? Text => _text ?? (_json is null ? null : _text = Serialization.WireJson.StringOf(_json));

    /// <summary>Whether the content is a text (without making its string).</summary>
    internal bool HasText => _text is not null || _json is not null;

    /// <summary>The text's length in UTF-16 code units, as <c>Text.Length</c> (without making the string).</summary>
    internal int TextLength => _text?.Length ?? _length;

    /// <summary>Whether the text's string was made (for tests).</summary>
    internal bool TextMade => _text is not null;

    /// <summary>The text as the request's JSON spelled it (quotes included); empty when it came otherwise.</summary>
    internal ReadOnlySpan<byte> TextJson => _json;


    public List<ContentPart>? Parts { get; }

    /// <summary>The text of the content: the string, or the text parts joined.</summary>
    public string GetText()
    {
        if (Text is not null)
        {
            return Text;
        }

        if (Parts is null || Parts.Count == 0)
        {
            return string.Empty;
        }

        if (Parts.Count == 1)
        {
            return Parts[0].Text ?? string.Empty;
        }

        return string.Concat(Parts.Select(static p => p.Text));
    }

    public static implicit operator MessageContent(string text) => new(text);

    public override string ToString() => GetText();
}

public sealed class ContentPart
{
    /// <summary>"text", "image_url", "input_audio", "file", ... (required: a part without one is refused).</summary>
    public string Type { get; set; } = string.Empty;

    public string? Text { get; set; }

    public ImageUrl? ImageUrl { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }
}

public sealed class ImageUrl
{
    public string Url { get; set; } = string.Empty;

    public string? Detail { get; set; }
}

public sealed class ToolCall
{
    /// <summary>Position of the call; present in streamed deltas.</summary>
    public int? Index { get; set; }

    public string? Id { get; set; }

    public string? Type { get; set; }

    public FunctionCall? Function { get; set; }

    /// <summary>
    /// Members of the call the gateway does not model, kept both ways: Gemini's OpenAI-compatible endpoint puts the
    /// call's thought signature here (<c>extra_content.google.thought_signature</c>), which the next turn must send
    /// back (Gemini 3 refuses a function call's history without it).
    /// </summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }
}

public sealed class FunctionCall
{
    private string? _arguments;
    private byte[]? _argumentsJson;

    public string? Name { get; set; }

    /// <summary>The arguments as a JSON string (streamed deltas carry fragments of it).</summary>
    public string? Arguments
    {
        get => _arguments ?? (_argumentsJson is null ? null : _arguments = Serialization.WireJson.StringOf(_argumentsJson));
        set
        {
            _arguments = value;
            _argumentsJson = null; // what the request spelled is no longer the arguments
        }
    }

    /// <summary>The arguments as a request's JSON spelled them (quotes included), until they are set; empty otherwise.</summary>
    internal ReadOnlySpan<byte> ArgumentsJson => _argumentsJson;

    /// <summary>The array <see cref="ArgumentsJson"/> spans (never written to: a cache may keep it); null when not kept.</summary>
    internal byte[]? ArgumentsKept => _argumentsJson;

    /// <summary>Whether the arguments' string was made (for tests).</summary>
    internal bool ArgumentsMade => _arguments is not null;

    /// <summary>
    /// Arguments read from a request, kept as its JSON string (checked as <c>GetString</c> checks it): an agent resends
    /// every earlier call's arguments — JSON in a string, an escape at every quote — on every step, and they go upstream
    /// as these bytes; the string is made only if something reads it.
    /// </summary>
    internal void KeepArgumentsJson(byte[] json)
    {
        _argumentsJson = json;
        _arguments = null;
    }
}

public sealed class ToolDefinition
{
    public string Type { get; set; } = "function";

    public FunctionDefinition? Function { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }
}

public sealed class FunctionDefinition
{
    public string Name { get; set; } = string.Empty;

    public string? Description { get; set; }

    public JsonElement? Parameters { get; set; }

    public bool? Strict { get; set; }
}

/// <summary>The <c>stop</c> field: one string or a list of strings on the wire.</summary>
[JsonConverter(typeof(StopSequencesConverter))]
public sealed class StopSequences : List<string>
{
    public StopSequences()
    {
    }

    public StopSequences(IEnumerable<string> values)
        : base(values)
    {
    }

    /// <summary>True when the wire form was a single string rather than an array.</summary>
    public bool WasSingle { get; init; }

    public static implicit operator StopSequences(string value) => new([value]) { WasSingle = true };
}
