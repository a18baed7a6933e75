using System.Buffers;
using System.Text;
using System.Text.Json;
using PipelineGateway.Providers;

namespace PipelineGateway.RequestLog;

/// <summary>The <c>attempts</c> column: <c>[{"provider","model","outcome","status","latency_ms","error_code","error"}]</c>.</summary>
internal static class AttemptsJson
{
    private static readonly JsonEncodedText ProviderName = JsonEncodedText.Encode("provider");
    private static readonly JsonEncodedText ModelName = JsonEncodedText.Encode("model");
    private static readonly JsonEncodedText OutcomeName = JsonEncodedText.Encode("outcome");
    private static readonly JsonEncodedText StatusName = JsonEncodedText.Encode("status");
    private static readonly JsonEncodedText LatencyName = JsonEncodedText.Encode("latency_ms");
    private static readonly JsonEncodedText ErrorCodeName = JsonEncodedText.Encode("error_code");
    private static readonly JsonEncodedText ErrorName = JsonEncodedText.Encode("error");

    public static string Format(IReadOnlyList<GatewayAttempt>? attempts)
    {
        if (attempts is not { Count: > 0 })
        {
            return "[]";
        }

        var buffer = new ArrayBufferWriter<byte>(128 * attempts.Count);
        using (var w = new Utf8JsonWriter(buffer))
        {
            Write(w, attempts);
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    public static void Write(Utf8JsonWriter w, IReadOnlyList<GatewayAttempt>? attempts)
    {
        w.WriteStartArray();
        foreach (var a in attempts ?? [])
        {
            w.WriteStartObject();
            w.WriteString(ProviderName, a.Provider);
            w.WriteString(ModelName, a.ProviderModel);
            w.WriteString(OutcomeName, a.Outcome.ToString());
            if (a.StatusCode is { } sc)
            {
                w.WriteNumber(StatusName, sc);
            }

            w.WriteNumber(LatencyName, Math.Round(a.Latency.TotalMilliseconds, 3));
            if (a.ErrorCode is { } ec)
            {
                w.WriteString(ErrorCodeName, ec);
            }

            if (a.Error is { } err)
            {
                w.WriteString(ErrorName, SecretRedactor.RedactAndTrim(err, 200));
            }

            if (a.NotSent)
            {
                w.WriteBoolean("not_sent"u8, true);
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
    }
}
