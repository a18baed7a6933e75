using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway;

/// <summary>Reads and writes <see cref="MessageContent"/> as a JSON string or an array of parts.</summary>
internal sealed class MessageContentConverter : JsonConverter<MessageContent>
{
    public override MessageContent? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null:
                return null;
            case JsonTokenType.String:
                return new MessageContent(reader.GetString()!);
            case JsonTokenType.StartArray:
                // A failure says where in the parts, after where the content is.
                return new MessageContent(Serialization.JsonProblems.ReadWithin(ref reader, GatewayJsonContext.Default.ListContentPart) ?? []);
            default:
                throw new JsonException("'content' must be a string or an array of content parts.");
        }
    }

    public override void Write(Utf8JsonWriter writer, MessageContent value, JsonSerializerOptions options)
    {
        if (value.Text is not null)
        {
            writer.WriteStringValue(value.Text);
            return;
        }

        JsonSerializer.Serialize(writer, value.Parts ?? [], GatewayJsonContext.Default.ListContentPart);
    }
}

/// <summary>Reads <c>stop</c> as a string or an array of strings; writes it back in the form it came in.</summary>
internal sealed class StopSequencesConverter : JsonConverter<StopSequences>
{
    public override StopSequences? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => ReadValue(ref reader);

    /// <summary>Reads <c>stop</c> from its first token (also for the hand-written request reader, <see cref="RequestJson"/>).</summary>
    public static StopSequences? ReadValue(ref Utf8JsonReader reader)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null:
                return null;
            case JsonTokenType.String:
                return new StopSequences([reader.GetString()!]) { WasSingle = true };
            case JsonTokenType.StartArray:
                var list = new StopSequences();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.String)
                    {
                        throw new JsonException("'stop' must be a string or an array of strings.");
                    }

                    list.Add(reader.GetString()!);
                }

                return list;
            default:
                throw new JsonException("'stop' must be a string or an array of strings.");
        }
    }

    public override void Write(Utf8JsonWriter writer, StopSequences value, JsonSerializerOptions options)
    {
        if (value.WasSingle && value.Count == 1)
        {
            writer.WriteStringValue(value[0]);
            return;
        }

        writer.WriteStartArray();
        foreach (var s in value)
        {
            writer.WriteStringValue(s);
        }

        writer.WriteEndArray();
    }
}

/// <summary>
/// An answer's message as the OpenAI schema has it: <c>content</c> and <c>refusal</c> are always present, null when
/// absent (a tool-call-only answer has <c>"content": null</c>). Request messages keep the usual contract (absent
/// fields left out), so this converter sits only on <see cref="ChatChoice.Message"/>.
/// </summary>
internal sealed class ResponseMessageConverter : JsonConverter<ChatCompletionMessage>
{
    public override ChatCompletionMessage? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        JsonSerializer.Deserialize(ref reader, GatewayJsonContext.Default.ChatCompletionMessage);

    public override void Write(Utf8JsonWriter writer, ChatCompletionMessage value, JsonSerializerOptions options) =>
        AnswerJson.WriteAnswerMessage(writer, value);
}
