using System.Text.Encodings.Web;
using System.Text.Json;

namespace PipelineGateway.Serialization;

/// <summary>
/// How the gateway's JSON is escaped on the wire — answers (non-streamed bodies, SSE events, on both routes) and the
/// requests it sends upstream (OpenAI-compatible and Anthropic): non-ASCII text stays UTF-8, as OpenAI and Anthropic
/// send it, instead of the default encoder's <c>\uXXXX</c> (6 bytes for what UTF-8 says in 2–3, through the encoder's
/// slow path). The relaxed encoder still escapes quotes, backslashes, control
/// characters and lone surrogates, so the JSON is the same JSON; it leaves <c>&lt;</c>, <c>&gt;</c>, <c>&amp;</c> and
/// <c>'</c> as they are, which matters only to JSON pasted into HTML — these bodies are <c>application/json</c> and
/// <c>text/event-stream</c>. The dashboard's events keep the default encoder, and so do cache keys (a key must not
/// change between versions). Characters outside the Basic Multilingual Plane (emoji) are still escaped as surrogate
/// pairs: System.Text.Json's encoders do not pass them through.
/// </summary>
internal static class WireJson
{
    public static JavaScriptEncoder Encoder => JavaScriptEncoder.UnsafeRelaxedJsonEscaping;

    /// <summary>The string a JSON string token (quotes included, already checked to decode) spells.</summary>
    public static string StringOf(byte[] json)
    {
        var r = new Utf8JsonReader(json);
        r.Read();
        return r.GetString()!;
    }

    /// <summary>
    /// A kept JSON value (a tool's parameter schema, a member the gateway does not model) written as its own bytes: the
    /// value was parsed, so they are JSON, and they mean what <see cref="JsonElement.WriteTo"/> would write, which walked
    /// the value token by token and escaped every string again — on a coding agent's request (16 tool schemas) ~7% of
    /// its CPU (docs/benchmarks.md, "Agent-sized requests and token limits"). The sender's spacing and escapes stay as
    /// they were. Bytes that are not UTF-8 (the front door refuses such a body; a library caller's own value could hold
    /// them) are written token by token as before, which replaces what is not UTF-8.
    /// </summary>
    public static void WriteValue(Utf8JsonWriter w, JsonElement value)
    {
        var raw = System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(value);
        if (System.Text.Unicode.Utf8.IsValid(raw))
        {
            w.WriteRawValue(raw, skipInputValidation: true);
        }
        else
        {
            value.WriteTo(w);
        }
    }

    /// <summary>An object's members as they came, but <paramref name="except"/> (none when it is not an object): what a rewrite then writes in its place.</summary>
    public static void WriteMembersExcept(Utf8JsonWriter w, JsonElement obj, string except)
    {
        if (obj.ValueKind != JsonValueKind.Object)
        {
            return;
        }

        foreach (var member in obj.EnumerateObject())
        {
            if (!member.NameEquals(except))
            {
                member.WriteTo(w);
            }
        }
    }
}
