using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// Rankings as vLLM and Jina answer them, made up deterministically for both simulators: each document scored by the
/// share of the query's words it holds (a tiny hash of the pair breaking ties), best first, <c>top_n</c> of them, each
/// with its document when <c>return_documents</c> asks, and the usage in tokens (about four characters a token).
/// </summary>
internal static class SimulatedRerank
{
    /// <summary>The answer to a checked rerank request to <paramref name="model"/>: its results and other members.</summary>
    public static (OperationAnswer Answer, TokenUsage Usage) Answer(OperationRequest operation, string model, string id)
    {
        var body = operation.Body;
        var query = Words(body.GetProperty("query").GetString()!);
        var documents = body.GetProperty("documents").EnumerateArray()
            .Select(static d => d.ValueKind == JsonValueKind.String ? d.GetString()! : d.GetProperty("text").GetString()!).ToList();
        var scored = documents.Select((text, index) =>
        {
            var words = Words(text);
            var overlap = query.Count == 0 ? 0 : query.Count(words.Contains) / (double)query.Count;
            return (Index: index, Text: text, Score: Math.Round((0.9 * overlap) + ((SimulatedText.StableHash(text + "\u0000" + string.Join(' ', query)) & 0xFFF) / 40960.0), 6));
        }).OrderByDescending(static d => d.Score).ThenBy(static d => d.Index).Take(operation.InputCount).ToList();
        var returnDocuments = body.TryGetProperty("return_documents", out var r) && r.ValueKind == JsonValueKind.True;

        var list = new ArrayBufferWriter<byte>(64 * scored.Count);
        using (var w = new Utf8JsonWriter(list))
        {
            w.WriteStartArray();
            foreach (var (index, text, score) in scored)
            {
                w.WriteStartObject();
                w.WriteNumber("index", index);
                if (returnDocuments)
                {
                    w.WriteStartObject("document");
                    w.WriteString("text", text);
                    w.WriteEndObject();
                }

                w.WriteNumber("relevance_score", score);
                w.WriteEndObject();
            }

            w.WriteEndArray();
        }

        var tokens = Math.Max(1, Operations.PromptTokens(operation, static text => Math.Max(1, text.Length / 4)));
        var members = new ArrayBufferWriter<byte>(128);
        using (var w = new Utf8JsonWriter(members))
        {
            w.WriteStartObject();
            w.WriteString("id", id);
            w.WriteString("model", model);
            w.WriteStartObject("usage");
            w.WriteNumber("total_tokens", tokens);
            w.WriteEndObject();
            w.WriteEndObject();
        }

        var answer = new OperationAnswer(OperationKind.Rerank, list.WrittenMemory.ToArray(), scored.Count) { Members = members.WrittenMemory[1..^1].ToArray() };
        return (answer, new TokenUsage { PromptTokens = tokens, TotalTokens = tokens });
    }

    private static HashSet<string> Words(string text) =>
        [.. text.Split([' ', ',', '.', '?', '!', ';', ':', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries).Select(static w => w.ToLowerInvariant())];
}
