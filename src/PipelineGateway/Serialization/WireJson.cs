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
