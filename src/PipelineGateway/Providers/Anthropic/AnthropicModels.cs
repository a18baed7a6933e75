using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>An Anthropic Messages response (<c>type: message</c>).</summary>
internal sealed class AnthropicMessage
{
    public string Id { get; set; } = string.Empty;

    public string Type { get; set; } = "message";

    public string Role { get; set; } = "assistant";

    public string Model { get; set; } = string.Empty;

    public List<AnthropicContentBlock> Content { get; set; } = [];

    public string? StopReason { get; set; }

    public string? StopSequence { get; set; }

    public AnthropicUsage? Usage { get; set; }
}

/// <summary>A content block: text, image, tool_use or tool_result (the fields of each kind).</summary>
internal sealed class AnthropicContentBlock
{
    public string Type { get; set; } = "text";

    public string? Text { get; set; }

    public string? Id { get; set; }

    public string? Name { get; set; }

    public JsonElement? Input { get; set; }

    public string? ToolUseId { get; set; }

    /// <summary>tool_result content: a string or a list of blocks; kept as JSON.</summary>
    public JsonElement? Content { get; set; }

    public bool? IsError { get; set; }

    public AnthropicImageSource? Source { get; set; }

    /// <summary>A thinking block's text.</summary>
    public string? Thinking { get; set; }

    /// <summary>A thinking block's signature.</summary>
    public string? Signature { get; set; }

    /// <summary>A redacted thinking block's data.</summary>
    public string? Data { get; set; }

    /// <summary>
    /// The members of blocks the gateway does not model — a text's <c>citations</c>, a server tool's results — kept so
    /// the block can be written back as Claude wrote it (<see cref="ServerTools"/>). Null on the usual blocks.
    /// </summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? Extra { get; set; }
}

internal sealed class AnthropicImageSource
{
    public string Type { get; set; } = "base64";

    public string? MediaType { get; set; }

    public string? Data { get; set; }

    public string? Url { get; set; }
}

internal sealed class AnthropicUsage
{
    public int InputTokens { get; set; }

    public int OutputTokens { get; set; }

    public int? CacheCreationInputTokens { get; set; }

    public int? CacheReadInputTokens { get; set; }

    /// <summary>Claude's server tools' use (<c>{"web_search_requests": N}</c>), billed per use (<see cref="Cost.ServerToolUse"/>).</summary>
    public JsonElement? ServerToolUse { get; set; }
}

/// <summary>One server-sent event of an Anthropic stream; which fields are set depends on <see cref="Type"/>.</summary>
internal sealed class AnthropicStreamEvent
{
    public string Type { get; set; } = string.Empty;

    public AnthropicMessage? Message { get; set; }

    public int? Index { get; set; }

    public AnthropicContentBlock? ContentBlock { get; set; }

    public AnthropicDelta? Delta { get; set; }

    public AnthropicUsage? Usage { get; set; }

    public AnthropicError? Error { get; set; }
}

internal sealed class AnthropicDelta
{
    public string? Type { get; set; }

    public string? Text { get; set; }

    public string? PartialJson { get; set; }

    /// <summary>A <c>thinking_delta</c>'s text.</summary>
    public string? Thinking { get; set; }

    /// <summary>A <c>signature_delta</c>'s signature.</summary>
    public string? Signature { get; set; }

    public string? StopReason { get; set; }

    public string? StopSequence { get; set; }
}

internal sealed class AnthropicError
{
    public string Type { get; set; } = string.Empty;

    public string Message { get; set; } = string.Empty;
}

/// <summary>An Anthropic error body: <c>{"type":"error","error":{"type":…,"message":…}}</c>.</summary>
internal sealed class AnthropicErrorBody
{
    public string Type { get; set; } = "error";

    public AnthropicError Error { get; set; } = new();
}

[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(AnthropicMessage))]
[JsonSerializable(typeof(AnthropicStreamEvent))]
[JsonSerializable(typeof(AnthropicErrorBody))]
[JsonSerializable(typeof(List<AnthropicContentBlock>))]
[JsonSerializable(typeof(string))]
internal sealed partial class AnthropicJsonContext : JsonSerializerContext;
