using System.Buffers;
using System.Text;
using System.Text.Json;
using PipelineGateway.Providers;

namespace PipelineGateway.RequestLog;

/// <summary>The <c>attempts</c> column: <c>[{"provider","model","outcome","status","latency_ms","error_code","error"}]</c>.</summary>
internal static class AttemptsJson
{
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
            w.WriteString("provider", a.Provider);
            w.WriteString("model", a.ProviderModel);
            w.WriteString("outcome", a.Outcome.ToString());
            if (a.StatusCode is { } sc)
            {
                w.WriteNumber("status", sc);
            }

            w.WriteNumber("latency_ms", Math.Round(a.Latency.TotalMilliseconds, 3));
            if (a.ErrorCode is { } ec)
            {
                w.WriteString("error_code", ec);
            }

            if (a.Error is { } err)
            {
                w.WriteString("error", SecretRedactor.RedactAndTrim(err, 200));
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
    }
}
