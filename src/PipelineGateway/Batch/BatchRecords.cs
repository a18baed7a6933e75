using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Batch;

/// <summary>
/// Writes the OpenAI Batch output format:
/// <c>{"id","custom_id","response":{"status_code","request_id","body"},"error"}</c>, one line each.
/// A request failure keeps the status and OpenAI error body in <c>response</c> with <c>"error": null</c> — OpenAI's files
/// set <c>error</c> only for a request that failed without an HTTP answer, and a reader that takes <c>error</c> first
/// would otherwise read two accounts of one failure; a bad input line (no request was made) has
/// <c>"response": null</c>, what was wrong in <c>error</c> and its line number in <c>error.line</c>.
/// </summary>
internal sealed class BatchRecords
{
    private readonly ArrayBufferWriter<byte> _buffer = new(4096);
    private readonly Utf8JsonWriter _json;

    public BatchRecords() => _json = new Utf8JsonWriter(_buffer, new JsonWriterOptions { SkipValidation = true, Encoder = Serialization.WireJson.Encoder });

    public static string RecordId(long line) => "batch_req_" + line.ToString(System.Globalization.CultureInfo.InvariantCulture);

    public byte[] Success(BatchLine line, ChatCompletionResponse response)
    {
        Begin(line.Number, line.CustomId);
        _json.WriteStartObject("response");
        _json.WriteNumber("status_code", 200);
        _json.WriteString("request_id", response.Gateway?.RequestId);
        _json.WritePropertyName("body");
        if (line.Answer is { } answer)
        {
            _json.WriteRawValue(answer(response), skipInputValidation: true);
        }
        else if (line.Request?.Operation is not null)
        {
            Providers.Operations.WriteAnswer(_json, response);
        }
        else if (line.Request?.TextCompletion is not null)
        {
            _json.WriteRawValue(Providers.TextCompletions.WriteAnswer(response), skipInputValidation: true);
        }
        else
        {
            JsonSerializer.Serialize(_json, response, GatewayJsonContext.Default.ChatCompletionResponse);
        }

        _json.WriteEndObject();
        _json.WriteNull("error");
        return End();
    }

    public byte[] Failure(BatchLine line, Exception error)
    {
        var (status, body, _) = OpenAIErrorMapping.Map(error);
        Begin(line.Number, line.CustomId);
        _json.WriteStartObject("response");
        _json.WriteNumber("status_code", status);
        if (line.Request?.Gateway?.RequestSequence is > 0 and var sequence)
        {
            _json.WriteString("request_id", Pipeline.RequestIds.Format(sequence));
        }
        else
        {
            _json.WriteNull("request_id");
        }
        _json.WriteStartObject("body");
        _json.WriteStartObject("error");
        _json.WriteString("message", body.Message);
        _json.WriteString("type", body.Type);
        _json.WriteString("param", body.Param);
        _json.WriteString("code", body.Code);
        _json.WriteEndObject();
        _json.WriteEndObject();
        _json.WriteEndObject();
        _json.WriteNull("error");
        return End();
    }

    public byte[] BadLine(BatchLine line)
    {
        Begin(line.Number, line.CustomId);
        _json.WriteNull("response");
        WriteError(line.ErrorCode!, line.ErrorMessage!, line.Number);
        return End();
    }

    private void Begin(long number, string? customId)
    {
        _buffer.ResetWrittenCount();
        _json.Reset();
        _json.WriteStartObject();
        _json.WriteString("id", RecordId(number));
        _json.WriteString("custom_id", customId);
    }

    private void WriteError(string code, string message, long number)
    {
        _json.WriteStartObject("error");
        _json.WriteString("code", code);
        _json.WriteString("message", message);
        _json.WriteNumber("line", number);
        _json.WriteEndObject();
    }

    private byte[] End()
    {
        _json.WriteEndObject();
        _json.Flush();
        var bytes = new byte[_buffer.WrittenCount + 1];
        _buffer.WrittenSpan.CopyTo(bytes);
        bytes[^1] = (byte)'\n';
        return bytes;
    }
}
