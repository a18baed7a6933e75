using System.Buffers;
using System.Text.Json;
using PipelineGateway.Serialization;

namespace PipelineGateway;

/// <summary>
/// A chat request read from a client (<see cref="TryRead"/>) and as an OpenAI-compatible upstream receives it
/// (<see cref="WriteUpstream"/>). Written by hand: what
/// <c>JsonSerializer.Serialize(request.ForUpstream(model, stream), …ChatCompletionRequest)</c> writes with the wire
/// encoder (<see cref="Serialization.WireJson"/>), byte for byte (RequestJsonDifferentialTests), without the copy of the request, the serializer's write stack
/// and its metadata walk, for every attempt. Why by hand: the request type keeps unknown fields
/// (<c>[JsonExtensionData]</c>), which rules out the source generator's fast path; its metadata path allocated a
/// write-stack array and a request copy per attempt (docs/benchmarks.md, issue 21).
/// </summary>
internal static partial class RequestJson
{
    /// <summary>The request's JSON for <paramref name="model"/>, streamed (with usage asked for) or not, as a new array (tests).</summary>
    public static byte[] ToUpstreamBytes(ChatCompletionRequest request, string model, bool stream, bool dropAnthropicMembers = false, Hosting.ToolCallIdRule toolIds = Hosting.ToolCallIdRule.AsSent)
    {
        using var content = ToUpstreamContent(request, model, stream, dropAnthropicMembers, toolIds);
        return content.Json.ToArray();
    }

    /// <summary>
    /// The request's JSON for <paramref name="model"/>, streamed (with usage asked for) or not, as a request body in a
    /// rented buffer (given back when the content is disposed with its message: <see cref="Providers.Http.RentedJsonContent"/>).
    /// </summary>
    /// <param name="toolIds">The upstream's rule for tool-call ids: one that does not fit is made to (<see cref="Providers.ToolIds"/>).</param>
    public static Providers.Http.RentedJsonContent ToUpstreamContent(ChatCompletionRequest request, string model, bool stream, bool dropAnthropicMembers = false, Hosting.ToolCallIdRule toolIds = Hosting.ToolCallIdRule.AsSent)
    {
        var writer = Serialization.ReusedWriter.Take(ref t_buffer, ref t_writer, WriterOptions);
        var buffer = t_buffer!;
        t_dropAnthropicMembers = dropAnthropicMembers;
        t_toolIds = toolIds;
        try
        {
            WriteUpstream(writer, request, model, stream);
            writer.Flush();
            return new Providers.Http.RentedJsonContent(buffer.WrittenSpan);
        }
        finally
        {
            t_dropAnthropicMembers = false;
            t_toolIds = Hosting.ToolCallIdRule.AsSent;
            Serialization.ReusedWriter.Release(ref t_buffer, ref t_writer);
        }
    }

    /// <summary>Non-ASCII text goes upstream as UTF-8, as clients send it to OpenAI (WireJson), not as \uXXXX escapes.</summary>
    private static readonly JsonWriterOptions WriterOptions = new() { Encoder = WireJson.Encoder, SkipValidation = true };

    /// <summary>
    /// Set around one <see cref="ToUpstreamBytes"/> (which never awaits) for an upstream that refuses Anthropic's own
    /// members — <c>cache_control</c>, a tool result's <c>is_error</c>, Claude's <c>thinking_blocks</c> in earlier turns and
    /// the <c>thinking</c> parameter: <see cref="AnswerJson.WriteExtra"/> leaves them out, wherever they are.
    /// </summary>
    [ThreadStatic]
    internal static bool t_dropAnthropicMembers;

    /// <summary>Set around one <see cref="ToUpstreamBytes"/>: the upstream's rule for tool-call ids.</summary>
    [ThreadStatic]
    internal static Hosting.ToolCallIdRule t_toolIds;

    /// <summary>A tool-call id as the request being written sends it (<see cref="t_toolIds"/>).</summary>
    internal static string? UpstreamToolId(string? id) => t_toolIds == Hosting.ToolCallIdRule.AsSent ? id : Providers.ToolIds.For(t_toolIds, id);

    [ThreadStatic]
    private static ArrayBufferWriter<byte>? t_buffer;

    [ThreadStatic]
    private static Utf8JsonWriter? t_writer;

    /// <summary>Writes <paramref name="request"/> with <paramref name="model"/>, <c>stream</c> and <c>stream_options</c> set as <see cref="ChatCompletionRequest.ForUpstream"/> does.</summary>
    public static void WriteUpstream(Utf8JsonWriter w, ChatCompletionRequest request, string model, bool stream)
    {
        w.WriteStartObject();
        w.WriteString("model"u8, model);
        if (request.Messages is { } messages)
        {
            w.WriteStartArray("messages"u8);
            foreach (var message in messages)
            {
                WriteMessage(w, message);
            }

            w.WriteEndArray();
        }

        WriteNumber(w, "temperature"u8, request.Temperature);
        WriteNumber(w, "top_p"u8, request.TopP);
        WriteNumber(w, "max_tokens"u8, request.MaxTokens);
        WriteNumber(w, "max_completion_tokens"u8, request.MaxCompletionTokens);
        if (request.Stop is { } stop)
        {
            w.WritePropertyName("stop"u8);
            if (stop.WasSingle && stop.Count == 1)
            {
                w.WriteStringValue(stop[0]);
            }
            else
            {
                w.WriteStartArray();
                foreach (var s in stop)
                {
                    w.WriteStringValue(s);
                }

                w.WriteEndArray();
            }
        }

        WriteNumber(w, "n"u8, request.N);
        if (request.Seed is { } seed)
        {
            w.WriteNumber("seed"u8, seed);
        }

        if (request.Tools is { } tools)
        {
            w.WriteStartArray("tools"u8);
            foreach (var tool in tools)
            {
                WriteTool(w, tool);
            }

            w.WriteEndArray();
        }

        WriteElement(w, "tool_choice"u8, request.ToolChoice);
        WriteElement(w, "response_format"u8, request.ResponseFormat);
        AnswerJson.WriteIfNotNull(w, "user"u8, request.User);
        if (stream)
        {
            // Usage asked for in the last chunk, so streamed token counts are known; the client's other options kept.
            w.WriteBoolean("stream"u8, true);
            w.WriteStartObject("stream_options"u8);
            w.WriteBoolean("include_usage"u8, true);
            AnswerJson.WriteExtra(w, request.StreamOptions?.AdditionalProperties);
            w.WriteEndObject();
        }

        AnswerJson.WriteExtra(w, request.AdditionalProperties);
        w.WriteEndObject();
    }

    /// <summary>A message as the request contract writes it: absent fields left out.</summary>
    public static void WriteMessage(Utf8JsonWriter w, ChatCompletionMessage? message)
    {
        if (message is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartObject();
        AnswerJson.WriteIfNotNull(w, "role"u8, message.Role);
        if (message.Content is { } content)
        {
            w.WritePropertyName("content"u8);
            AnswerJson.WriteContent(w, content);
        }

        AnswerJson.WriteIfNotNull(w, "name"u8, message.Name);
        AnswerJson.WriteToolCalls(w, message.ToolCalls);
        AnswerJson.WriteIfNotNull(w, "tool_call_id"u8, UpstreamToolId(message.ToolCallId));
        AnswerJson.WriteIfNotNull(w, "refusal"u8, message.Refusal);
        AnswerJson.WriteExtra(w, message.AdditionalProperties);
        w.WriteEndObject();
    }

    private static void WriteTool(Utf8JsonWriter w, ToolDefinition? tool)
    {
        if (tool is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartObject();
        AnswerJson.WriteIfNotNull(w, "type"u8, tool.Type);
        if (tool.Function is { } function)
        {
            w.WriteStartObject("function"u8);
            AnswerJson.WriteIfNotNull(w, "name"u8, function.Name);
            AnswerJson.WriteIfNotNull(w, "description"u8, function.Description);
            WriteElement(w, "parameters"u8, function.Parameters);
            if (function.Strict is { } strict)
            {
                w.WriteBoolean("strict"u8, strict);
            }

            w.WriteEndObject();
        }

        AnswerJson.WriteExtra(w, tool.AdditionalProperties);
        w.WriteEndObject();
    }

    private static void WriteNumber(Utf8JsonWriter w, ReadOnlySpan<byte> name, double? value)
    {
        if (value is { } number)
        {
            w.WriteNumber(name, number);
        }
    }

    private static void WriteNumber(Utf8JsonWriter w, ReadOnlySpan<byte> name, int? value)
    {
        if (value is { } number)
        {
            w.WriteNumber(name, number);
        }
    }

    private static void WriteElement(Utf8JsonWriter w, ReadOnlySpan<byte> name, JsonElement? value)
    {
        if (value is { } element)
        {
            w.WritePropertyName(name);
            WireJson.WriteValue(w, element);
        }
    }
}
