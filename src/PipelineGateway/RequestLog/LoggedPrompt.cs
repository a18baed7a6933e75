using System.Runtime.InteropServices;
using System.Text.Json;

namespace PipelineGateway.RequestLog;

/// <summary>
/// The prompt as the request log keeps it (<see cref="RequestLogOptions.LogBodies"/>): the messages as JSON, of which
/// the log keeps a head. A prompt whose text runs past that head — a long document, a photo inline as megabytes of base64,
/// audio as a data string — is first cut to it, string by string, in order: serializing it whole made a string of its
/// full size (twice its bytes, UTF-16) on the completing request's thread only to keep a few kilobytes of it.
/// </summary>
internal static class LoggedPrompt
{
    /// <summary>
    /// <paramref name="messages"/> with their text cut so that together it is at most <paramref name="budget"/>
    /// characters (the messages after the budget is spent left out); the list itself when it already fits (no copy).
    /// The JSON of a cut list is at least <paramref name="budget"/> characters long, so the log's cap marks it cut.
    /// </summary>
    public static List<ChatCompletionMessage> Trim(List<ChatCompletionMessage> messages, int budget)
    {
        var total = 0L;
        foreach (var message in messages)
        {
            total += Size(message);
            if (total > budget)
            {
                return Cut(messages, budget);
            }
        }

        return messages;
    }

    private static List<ChatCompletionMessage> Cut(List<ChatCompletionMessage> messages, int budget)
    {
        var left = budget;
        var kept = new List<ChatCompletionMessage>();
        foreach (var message in messages)
        {
            if (left <= 0)
            {
                break;
            }

            // The budget is spent in the order the message is written (its JSON's head is the whole one's).
            var copy = new ChatCompletionMessage
            {
                Role = message.Role,
                Content = message.Content switch
                {
                    { Text: { } text } => new MessageContent(Cut(text, ref left)!),
                    { Parts: { } parts } => new MessageContent(CutParts(parts, ref left)),
                    _ => null,
                },
                Name = message.Name,
                ToolCalls = CutCalls(message.ToolCalls, ref left),
                ToolCallId = message.ToolCallId,
                Refusal = Cut(message.Refusal, ref left),
                AdditionalProperties = CutMembers(message.AdditionalProperties, ref left),
            };
            kept.Add(copy);
        }

        return kept;
    }

    private static List<ToolCall>? CutCalls(List<ToolCall>? calls, ref int left)
    {
        if (calls is null)
        {
            return null;
        }

        var kept = new List<ToolCall>(calls.Count);
        foreach (var call in calls)
        {
            kept.Add(new ToolCall
            {
                Index = call.Index,
                Id = call.Id,
                Type = call.Type,
                Function = call.Function is { } f ? new FunctionCall { Name = f.Name, Arguments = Cut(f.Arguments, ref left) } : null,
            });
        }

        return kept;
    }

    private static List<ContentPart> CutParts(List<ContentPart> parts, ref int left)
    {
        var kept = new List<ContentPart>(parts.Count);
        foreach (var part in parts)
        {
            if (left <= 0)
            {
                break;
            }

            kept.Add(new ContentPart
            {
                Type = part.Type,
                Text = Cut(part.Text, ref left),
                ImageUrl = part.ImageUrl is { } image ? new ImageUrl { Url = Cut(image.Url, ref left)!, Detail = image.Detail } : null,
                AdditionalProperties = CutMembers(part.AdditionalProperties, ref left),
            });
        }

        return kept;
    }

    /// <summary>Members the model does not name (a part's <c>input_audio</c>, <c>file</c>): kept whole while they fit, else each a short string saying so.</summary>
    private static Dictionary<string, JsonElement>? CutMembers(Dictionary<string, JsonElement>? members, ref int left)
    {
        if (members is null)
        {
            return null;
        }

        var kept = new Dictionary<string, JsonElement>(members.Count, members.Comparer);
        foreach (var (name, value) in members)
        {
            var size = JsonMarshal.GetRawUtf8Value(value).Length;
            if (size <= left)
            {
                left -= size;
                kept[name] = value;
            }
            else
            {
                kept[name] = JsonSerializer.SerializeToElement($"…[{size:N0} bytes]", GatewayJsonContext.Default.String);
                left = 0;
            }
        }

        return kept;
    }

    /// <summary>The text within what is left of the budget (never half a surrogate pair), the budget spent by it.</summary>
    private static string? Cut(string? text, ref int left)
    {
        if (text is null)
        {
            return null;
        }

        if (text.Length <= left)
        {
            left -= text.Length;
            return text;
        }

        var n = Math.Max(left, 0);
        if (n > 0 && char.IsHighSurrogate(text[n - 1]))
        {
            n--;
        }

        left = 0;
        return text[..n];
    }

    /// <summary>A message's text in characters (members the model does not name: their JSON's bytes).</summary>
    private static long Size(ChatCompletionMessage message)
    {
        long size = (message.Refusal?.Length ?? 0) + (message.Content is { HasText: true } content ? content.TextLength : 0);
        foreach (var part in message.Content?.Parts ?? [])
        {
            size += (part.Text?.Length ?? 0) + (part.ImageUrl?.Url.Length ?? 0) + Members(part.AdditionalProperties);
        }

        foreach (var call in message.ToolCalls ?? [])
        {
            size += call.Function?.Arguments?.Length ?? 0;
        }

        return size + Members(message.AdditionalProperties);
    }

    private static long Members(Dictionary<string, JsonElement>? members)
    {
        var size = 0L;
        foreach (var value in members?.Values ?? (IEnumerable<JsonElement>)[])
        {
            size += JsonMarshal.GetRawUtf8Value(value).Length;
        }

        return size;
    }
}
