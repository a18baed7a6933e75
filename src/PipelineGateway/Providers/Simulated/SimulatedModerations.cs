using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// Moderation results as OpenAI answers them, made up deterministically for both simulators: one result per input (one
/// for a list of parts), each category flagged when the input's text names one of its words (so tests can ask for a
/// flag), every category's score, and the input types each was judged on.
/// </summary>
internal static class SimulatedModerations
{
    /// <summary>The categories and a word that flags each.</summary>
    private static readonly (string Category, string Word)[] Categories =
    [
        ("harassment", "harass"), ("harassment/threatening", "threaten"), ("hate", "hate"), ("hate/threatening", "exterminate"),
        ("illicit", "smuggle"), ("illicit/violent", "bomb"), ("self-harm", "self-harm"), ("self-harm/intent", "end it all"),
        ("self-harm/instructions", "how to hurt myself"), ("sexual", "explicit"), ("sexual/minors", "underage"),
        ("violence", "kill"), ("violence/graphic", "gore"),
    ];

    /// <summary>The answer's <c>results</c> (and an <c>id</c> from <paramref name="draw"/>) for a moderations request body.</summary>
    public static OperationAnswer Results(OperationRequest operation, ulong draw)
    {
        var inputs = Inputs(operation.Body.GetProperty("input"));
        var buffer = new ArrayBufferWriter<byte>(1024 * inputs.Count);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            foreach (var (text, image) in inputs)
            {
                var lower = text.ToLowerInvariant();
                var flags = Categories.Select(c => lower.Contains(c.Word, StringComparison.Ordinal)).ToArray();
                w.WriteStartObject();
                w.WriteBoolean("flagged", flags.Contains(true));
                w.WriteStartObject("categories");
                for (var i = 0; i < Categories.Length; i++)
                {
                    w.WriteBoolean(Categories[i].Category, flags[i]);
                }

                w.WriteEndObject();
                w.WriteStartObject("category_scores");
                for (var i = 0; i < Categories.Length; i++)
                {
                    // A flag scores high; otherwise a small number, a function of the text and the category.
                    var low = (SimulatedText.StableHash(Categories[i].Category + text) & 0xFFFF) / 65536.0 * 0.001;
                    w.WriteNumber(Categories[i].Category, flags[i] ? 0.9 + (low * 10) : low);
                }

                w.WriteEndObject();
                w.WriteStartObject("category_applied_input_types");
                foreach (var (category, _) in Categories)
                {
                    w.WriteStartArray(category);
                    w.WriteStringValue("text");
                    if (image && category is "sexual" or "violence" or "violence/graphic" or "self-harm" or "self-harm/intent" or "self-harm/instructions")
                    {
                        w.WriteStringValue("image");
                    }

                    w.WriteEndArray();
                }

                w.WriteEndObject();
                w.WriteEndObject();
            }

            w.WriteEndArray();
        }

        return new OperationAnswer(OperationKind.Moderations, buffer.WrittenMemory, inputs.Count, "modr-sim" + draw.ToString("x16", System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Each result's text and whether it has an image: a string, each string of a list, or a list of parts as one.</summary>
    private static List<(string Text, bool Image)> Inputs(JsonElement input)
    {
        if (input.ValueKind == JsonValueKind.String)
        {
            return [(input.GetString()!, false)];
        }

        if (input[0].ValueKind == JsonValueKind.String)
        {
            return [.. input.EnumerateArray().Select(static i => (i.GetString()!, false))];
        }

        var parts = input.EnumerateArray().ToList();
        // The text of the text parts only: another part may carry a member named "text" of any type (the reader lets a
        // part's other members be), which made the simulator answer 500 (found by the front door's fuzz test, seed 303).
        var text = string.Join("\n", parts.Where(static p => Typed(p, "text") && p.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String).Select(static p => p.GetProperty("text").GetString()));
        return [(text, parts.Exists(static p => Typed(p, "image_url")))];

        static bool Typed(JsonElement part, string type) => part.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.ValueEquals(type);
    }
}
