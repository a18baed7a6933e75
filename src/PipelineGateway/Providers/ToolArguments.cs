using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// A tool call's arguments — JSON text in OpenAI's schema, whatever a model produced — where a provider or M.E.AI needs
/// an object (Anthropic's <c>input</c>, <c>FunctionCallContent.Arguments</c>). Empty text is no arguments; anything but
/// a JSON object has no faithful form there, and is named rather than sent as no arguments.
/// </summary>
internal static class ToolArguments
{
    /// <summary>The arguments as a JSON object, or null and what they are instead (<c>not JSON</c>, <c>JSON array, not an object</c>).</summary>
    public static JsonDocument? ParseObject(string arguments, out string problem)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(arguments);
        }
        catch (JsonException)
        {
            problem = "not JSON";
            return null;
        }

        if (doc.RootElement.ValueKind == JsonValueKind.Object)
        {
            problem = string.Empty;
            return doc;
        }

        problem = $"JSON {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}, not an object";
        doc.Dispose();
        return null;
    }

    /// <summary>M.E.AI's form: null for none; a request's arguments that are not an object are <see cref="NotAnObject"/>.</summary>
    public static Dictionary<string, object?>? ToDictionary(string? arguments, int message, int call, string provider)
    {
        if (string.IsNullOrWhiteSpace(arguments))
        {
            return null;
        }

        using var doc = ParseObject(arguments, out var problem) ?? throw NotAnObject(message, call, problem, provider);
        return Members(doc.RootElement);
    }

    /// <summary>
    /// An answer's arguments for <c>FunctionCallContent.CreateFromParsedArguments</c>: a model's arguments that are not an
    /// object throw here, which M.E.AI keeps as the call's <c>Exception</c> (a function-invoking client tells the model).
    /// </summary>
    public static Dictionary<string, object?>? ParseAnswer(string arguments)
    {
        if (string.IsNullOrWhiteSpace(arguments))
        {
            return null;
        }

        using var doc = ParseObject(arguments, out var problem) ?? throw new InvalidOperationException($"The tool call's arguments are {problem}.");
        return Members(doc.RootElement);
    }

    /// <summary>The request's <c>messages[message].tool_calls[call]</c> cannot go to <paramref name="provider"/> as it is.</summary>
    public static ProviderException NotAnObject(int message, int call, string problem, string provider)
    {
        var at = $"messages[{message}].tool_calls[{call}].function.arguments";
        return ProviderException.Unsupported(at, $"{at} is {problem}; {provider} takes a tool call's arguments only as a JSON object. The request was not sent to this deployment.");
    }

    private static Dictionary<string, object?> Members(JsonElement obj) => obj.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());
}
