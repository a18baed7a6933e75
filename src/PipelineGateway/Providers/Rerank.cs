using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// A rerank request (<c>POST /v1/rerank</c>, <c>/v2/rerank</c>: the Cohere-style API vLLM, Jina, TEI, Infinity and
/// LiteLLM serve) as the pipeline carries it (<see cref="Operations"/>): <c>model</c>, <c>query</c>, <c>documents</c>
/// (strings, or objects with a <c>text</c>), <c>top_n</c>, <c>return_documents</c>; other members sent on as they came.
/// The answer's <c>results</c> (each an <c>index</c> into the documents and a <c>relevance_score</c>) are checked and
/// passed through as their bytes, its other members (<c>id</c>, <c>model</c>, <c>usage</c>, <c>meta</c>) as they came.
/// </summary>
internal static class Rerank
{
    /// <summary>The most documents one request may rank (Cohere's bound).</summary>
    public const int MaxDocuments = 1000;

    /// <summary>Checks a rerank request given as JSON and makes the pipeline's request of it: the query and the documents are its one user message.</summary>
    /// <exception cref="InvalidRequestException">A member is missing or not what the API allows; its name is the error's param.</exception>
    public static ChatCompletionRequest ToRequest(JsonElement root)
    {
        var model = Operations.Model(root, null, "a rerank model");

        if (!root.TryGetProperty("query", out var query) || query.ValueKind != JsonValueKind.String)
        {
            throw new InvalidRequestException("query", "'query' is required: the text the documents are ranked against.");
        }

        var text = new System.Text.StringBuilder(Operations.NonEmpty(query, "query"));
        if (!root.TryGetProperty("documents", out var documents) || documents.ValueKind != JsonValueKind.Array || documents.GetArrayLength() is 0 or > MaxDocuments)
        {
            throw new InvalidRequestException("documents", $"'documents' is required: a list of 1 to {MaxDocuments} texts (strings, or objects with a 'text').");
        }

        var i = 0;
        foreach (var document in documents.EnumerateArray())
        {
            var param = $"documents[{i++}]";
            var content = document.ValueKind switch
            {
                JsonValueKind.String => document.GetString()!,
                JsonValueKind.Object when document.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String => t.GetString()!,
                _ => throw new InvalidRequestException(param, $"'{param}' must be a string or an object with a 'text'."),
            };
            text.Append("\n\n").Append(content);
        }

        if (root.TryGetProperty("top_n", out var topN) && topN.ValueKind != JsonValueKind.Null
            && !(topN.ValueKind == JsonValueKind.Number && topN.TryGetInt32(out var n) && n >= 1))
        {
            throw new InvalidRequestException("top_n", "'top_n' must be a whole number of at least 1.");
        }

        if (root.TryGetProperty("return_documents", out var r) && r.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
        {
            throw new InvalidRequestException("return_documents", "'return_documents' must be true or false.");
        }

        return new ChatCompletionRequest
        {
            Model = model,
            Messages = [ChatCompletionMessage.User(text.ToString())],
            Operation = new OperationRequest(OperationKind.Rerank, root),
        };
    }

    /// <summary>How many documents a checked request ranks.</summary>
    public static int Documents(JsonElement body) => body.GetProperty("documents").GetArrayLength();

    /// <summary>How many results the answer must hold: <c>top_n</c>, at most every document.</summary>
    public static int Results(JsonElement body) =>
        body.TryGetProperty("top_n", out var n) && n.ValueKind == JsonValueKind.Number ? Math.Min(n.GetInt32(), Documents(body)) : Documents(body);

    /// <summary>The prompt tokens at admission: the query's and every document's.</summary>
    public static int PromptTokens(OperationRequest operation, Func<string, int> count)
    {
        var tokens = count(operation.Body.GetProperty("query").GetString()!);
        foreach (var document in operation.Body.GetProperty("documents").EnumerateArray())
        {
            tokens += document.ValueKind == JsonValueKind.String ? count(document.GetString()!) : count(document.GetProperty("text").GetString()!);
        }

        return tokens;
    }

    /// <summary>
    /// Why an answer's results are not this request's (null when they are): each result's <c>index</c> a document of it,
    /// no document twice.
    /// </summary>
    public static string? Mismatch(OperationAnswer answer, OperationRequest operation)
    {
        var documents = Documents(operation.Body);
        var seen = new HashSet<int>();
        using var doc = JsonDocument.Parse(answer.List);
        foreach (var result in doc.RootElement.EnumerateArray())
        {
            var index = result.GetProperty("index").GetInt32();
            if (index >= documents || !seen.Add(index))
            {
                return $"a result's index {index} is {(index >= documents ? $"not one of the {documents} documents" : "given twice")}";
            }
        }

        return null;
    }
}
