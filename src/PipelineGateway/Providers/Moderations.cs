using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>
/// OpenAI's moderations request (<c>POST /v1/moderations</c>) as the pipeline carries it (<see cref="Operations"/>):
/// <c>input</c> — a string, a list of strings (one result each) or a list of content parts, text and images (one result
/// for them all) — and <c>model</c>, a model group like any other, <see cref="DefaultModel"/> when left out, as OpenAI
/// defaults it. Other members are sent on as they came.
/// </summary>
internal static class Moderations
{
    /// <summary>The model a request without one is for (OpenAI's default).</summary>
    public const string DefaultModel = "omni-moderation-latest";

    /// <summary>Checks a moderations request given as JSON and makes the pipeline's request of it.</summary>
    /// <exception cref="InvalidRequestException">A member is missing or not what the schema allows; its name is the error's param.</exception>
    /// <param name="route">The model the route names, which the body's then does not.</param>
    public static ChatCompletionRequest ToRequest(JsonElement root, string? route = null)
    {
        var model = Operations.Model(root, route, "a moderation model", DefaultModel);

        if (!root.TryGetProperty("input", out var input) || input.ValueKind is JsonValueKind.Null)
        {
            throw new InvalidRequestException("input", "'input' is required: a string, a list of strings or a list of text and image parts.");
        }

        return new ChatCompletionRequest
        {
            Model = model,
            Messages = [ChatCompletionMessage.User(Describe(input))],
            Operation = new OperationRequest(OperationKind.Moderations, root),
        };
    }

    /// <summary>Checks <c>input</c> and gives its text for the pipeline's one user message (an image as its place).</summary>
    private static string Describe(JsonElement input) => Operations.DescribeInput(
        input,
        "a string, a list of strings or a list of text and image parts",
        [JsonValueKind.String, JsonValueKind.Object],
        static (item, param) => item.ValueKind == JsonValueKind.String ? Operations.NonEmpty(item, param) : Part(item, param));

    /// <summary>A content part: <c>{"type":"text","text":…}</c> or <c>{"type":"image_url","image_url":{"url":…}}</c>.</summary>
    private static string Part(JsonElement part, string param)
    {
        var type = part.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        switch (type)
        {
            case "text" when part.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String:
                return Operations.NonEmpty(text, $"{param}.text");
            case "image_url" when part.TryGetProperty("image_url", out var image) && image.ValueKind == JsonValueKind.Object
                && image.TryGetProperty("url", out var url) && url.ValueKind == JsonValueKind.String && url.GetString() is { Length: > 0 }:
                return "[image]";
            default:
                throw new InvalidRequestException(param, $"'{param}' must be a text part ({{\"type\":\"text\",\"text\":…}}) or an image part ({{\"type\":\"image_url\",\"image_url\":{{\"url\":…}}}}).");
        }
    }
}
