using System.Text.Json.Nodes;

namespace PipelineGateway.Tests.Support;

/// <summary>An SSE body's JSON events, as a client reads them: each <c>data: {…}</c> line's object, in order.</summary>
public static class SseEvents
{
    public static IEnumerable<JsonNode> Json(string sse) =>
        sse.Split('\n').Where(static l => l.StartsWith("data: {", StringComparison.Ordinal)).Select(static l => JsonNode.Parse(l["data: ".Length..])!);
}
