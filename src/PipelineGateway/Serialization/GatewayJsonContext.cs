using System.Text.Json.Serialization;

namespace PipelineGateway;

/// <summary>
/// Source-generated JSON for the canonical (OpenAI) wire model: no reflection on the hot path. Answers and stream
/// chunks go through hand-written converters (<see cref="AnswerJson"/>: the serializer's own contract, measured
/// faster); everything else is the generator's.
/// </summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    UseStringEnumConverter = true,
    Converters = [typeof(ChatCompletionResponseConverter), typeof(ChatCompletionChunkConverter)])]
[JsonSerializable(typeof(ChatCompletionRequest))]
[JsonSerializable(typeof(ChatCompletionResponse))]
[JsonSerializable(typeof(ChatCompletionChunk))]
[JsonSerializable(typeof(List<ContentPart>))]
[JsonSerializable(typeof(List<ToolDefinition>))]
[JsonSerializable(typeof(List<ToolCall>))]
[JsonSerializable(typeof(MessageContent))]
[JsonSerializable(typeof(List<ChatCompletionMessage>))]
[JsonSerializable(typeof(GatewayMetricsSnapshot))]
internal sealed partial class GatewayJsonContext : JsonSerializerContext;
