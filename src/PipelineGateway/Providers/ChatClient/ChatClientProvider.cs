using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.AI;
using AI = Microsoft.Extensions.AI;

namespace PipelineGateway.Providers.ChatClient;

/// <summary>
/// Any <see cref="IChatClient"/> (Microsoft.Extensions.AI) as a gateway provider: the canonical request is
/// translated to M.E.AI messages and options, the answer back to the canonical schema. Tool definitions
/// travel as declarations (the gateway never invokes tools: it returns the calls to the caller).
/// </summary>
public sealed class ChatClientProvider(string name, IChatClient client) : ILlmProvider
{
    public string Name { get; } = name;

    public async ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        var (messages, options) = ToChatClient(request);
        // Whatever the client throws goes to the gateway's one classifier as it is (an SDK's status code decides:
        // a 400 is the caller's mistake, not a reason to fall back).
        var response = await client.GetResponseAsync(messages, options, cancellationToken).ConfigureAwait(false);

        var message = response.Messages.LastOrDefault(m => m.Role == ChatRole.Assistant) ?? new AI.ChatMessage(ChatRole.Assistant, response.Text);
        var calls = ToolCalls(message.Contents);
        return new ChatCompletionResponse
        {
            Id = response.ResponseId ?? "chatcmpl-" + Guid.NewGuid().ToString("N"),
            Created = (response.CreatedAt ?? DateTimeOffset.UtcNow).ToUnixTimeSeconds(),
            Model = response.ModelId ?? request.Model,
            Choices =
            [
                new ChatChoice
                {
                    Message = new ChatCompletionMessage
                    {
                        Role = ChatRoles.Assistant,
                        Content = calls is not null && string.IsNullOrEmpty(message.Text) ? null : new MessageContent(message.Text),
                        ToolCalls = calls,
                        AdditionalProperties = ReasoningMapping.WithReasoning(null, message.Contents),
                    },
                    FinishReason = FinishReason(response.FinishReason) ?? (calls is not null ? FinishReasons.ToolCalls : FinishReasons.Stop),
                },
            ],
            Usage = Usage(response.Usage),
        };
    }

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var (messages, options) = ToChatClient(request);
        var id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        var toolIndex = 0;
        await foreach (var update in client.GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false))
        {
            var delta = new ChatCompletionDelta { Role = update.Role == ChatRole.Assistant ? ChatRoles.Assistant : null };
            TokenUsage? usage = null;
            foreach (var content in update.Contents)
            {
                switch (content)
                {
                    case TextContent text:
                        delta.Content += text.Text;
                        break;
                    case FunctionCallContent call:
                        (delta.ToolCalls ??= []).Add(new ToolCall
                        {
                            Index = toolIndex++,
                            Id = call.CallId,
                            Type = "function",
                            Function = new FunctionCall { Name = call.Name, Arguments = Arguments(call) },
                        });
                        break;
                    case UsageContent u:
                        usage = Usage(u.Details);
                        break;
                }
            }

            delta.AdditionalProperties = ReasoningMapping.WithReasoning(null, update.Contents);

            yield return new ChatCompletionChunk
            {
                Id = update.ResponseId ?? id,
                Model = update.ModelId ?? request.Model,
                Created = (update.CreatedAt ?? DateTimeOffset.UtcNow).ToUnixTimeSeconds(),
                Choices = [new ChunkChoice { Delta = delta, FinishReason = FinishReason(update.FinishReason) }],
                Usage = usage,
            };
        }
    }

    /// <summary>The canonical request as M.E.AI messages and options.</summary>
    public static (List<AI.ChatMessage> Messages, ChatOptions Options) ToChatClient(ProviderRequest request)
    {
        var r = request.Request;
        OpenAIOnlyParameters.Check(r, "an IChatClient deployment");
        var messages = new List<AI.ChatMessage>(r.Messages.Count);
        for (var i = 0; i < r.Messages.Count; i++)
        {
            var m = r.Messages[i];
            var role = m.Role switch
            {
                ChatRoles.System or ChatRoles.Developer => ChatRole.System,
                ChatRoles.Assistant => ChatRole.Assistant,
                ChatRoles.Tool => ChatRole.Tool,
                _ => ChatRole.User,
            };
            var contents = new List<AIContent>();
            if (m.Role == ChatRoles.Tool)
            {
                if (m.Content?.Parts is { } resultParts && resultParts.FindIndex(static p => p.Type != "text") is var other and >= 0)
                {
                    throw ProviderException.Unsupported($"messages[{i}].content[{other}]",
                        $"messages[{i}].content[{other}] is a '{ProviderException.Quoted(resultParts[other].Type)}' part in a tool result, which an IChatClient deployment takes as text only; the request was not sent to this deployment.");
                }

                contents.Add(new FunctionResultContent(m.ToolCallId ?? string.Empty, m.Content?.GetText()));
            }
            else if (m.Content?.Parts is { } parts)
            {
                for (var j = 0; j < parts.Count; j++)
                {
                    if (Content(parts[j], i, j) is { } content)
                    {
                        contents.Add(content);
                    }
                }
            }
            else if (m.Content?.Text is { } text)
            {
                contents.Add(new TextContent(text));
            }

            var calls = m.ToolCalls ?? [];
            for (var j = 0; j < calls.Count; j++)
            {
                var call = calls[j];
                contents.Add(new FunctionCallContent(call.Id ?? string.Empty, call.Function?.Name ?? string.Empty, ToolArguments.ToDictionary(call.Function?.Arguments, i, j, "an IChatClient deployment")));
            }

            messages.Add(new AI.ChatMessage(role, contents) { AuthorName = m.Name });
        }

        var options = new ChatOptions
        {
            ModelId = request.Model,
            Temperature = (float?)r.Temperature,
            TopP = (float?)r.TopP,
            MaxOutputTokens = r.RequestedCompletionTokens,
            Seed = r.Seed,
            StopSequences = r.Stop is { Count: > 0 } ? [.. r.Stop] : null,
            FrequencyPenalty = Number(r, "frequency_penalty"),
            PresencePenalty = Number(r, "presence_penalty"),
            Reasoning = ReasoningMapping.Options(r),
        };
        // A tool of another type than function (Anthropic's own, OpenAI's custom) or a turn's server-tool blocks: an
        // IChatClient's tools are functions, so the request is not sent here rather than sent without them.
        Anthropic.ServerTools.Refuse(r, "an IChatClient deployment", anyType: true);
        if (r.Tools is { Count: > 0 })
        {
            options.Tools = [.. r.Tools.Where(t => t.Function is not null).Select(t => (AITool)AIFunctionFactory.CreateDeclaration(
                t.Function!.Name,
                t.Function.Description,
                t.Function.Parameters ?? JsonDocument.Parse("""{"type":"object","properties":{}}""").RootElement))];
            options.ToolMode = r.ToolChoice is { ValueKind: JsonValueKind.String } c
                ? c.GetString() switch { "none" => ChatToolMode.None, "required" => ChatToolMode.RequireAny, _ => ChatToolMode.Auto }
                : r.ToolChoice is { ValueKind: JsonValueKind.Object } o && o.TryGetProperty("function", out var f) && f.TryGetProperty("name", out var n)
                    ? ChatToolMode.RequireSpecific(n.GetString()!)
                    : ChatToolMode.Auto;
        }

        if (r.ResponseFormat is { ValueKind: JsonValueKind.Object } format && format.TryGetProperty("type", out var type))
        {
            options.ResponseFormat = type.GetString() switch
            {
                "json_object" => ChatResponseFormat.Json,
                "json_schema" when format.TryGetProperty("json_schema", out var js) && js.TryGetProperty("schema", out var schema) =>
                    ChatResponseFormat.ForJsonSchema(schema, js.TryGetProperty("name", out var nm) ? nm.GetString() : null),
                _ => ChatResponseFormat.Text,
            };
        }

        return (messages, options);
    }

    /// <summary>
    /// One content part as M.E.AI content: text, an image (a data URL or a link), audio (<c>input_audio</c>'s base64 and
    /// format), a file (<c>file_data</c>'s data URL, or a <c>file_id</c> the provider holds). A part with no M.E.AI form
    /// is named, not dropped (<see cref="ProviderException.Unsupported"/>).
    /// </summary>
    private static AIContent? Content(ContentPart part, int message, int index)
    {
        try
        {
            switch (part.Type)
            {
                case "text":
                    return part.Text is null ? null : new TextContent(part.Text);
                case "image_url" when part.ImageUrl is { } image:
                    return image.Url.StartsWith("data:", StringComparison.Ordinal) ? new DataContent(image.Url) : new UriContent(new Uri(image.Url), "image/*");
                case "input_audio" when Member(part, "input_audio") is { ValueKind: JsonValueKind.Object } audio
                    && audio.TryGetProperty("data", out var data) && data.ValueKind == JsonValueKind.String
                    && audio.TryGetProperty("format", out var format) && format.ValueKind == JsonValueKind.String:
                    return new DataContent(data.GetBytesFromBase64(), format.GetString() == "mp3" ? "audio/mpeg" : "audio/" + format.GetString());
                case "file" when Member(part, "file") is { ValueKind: JsonValueKind.Object } file:
                    var name = file.TryGetProperty("filename", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString() : null;
                    if (file.TryGetProperty("file_data", out var fileData) && fileData.ValueKind == JsonValueKind.String)
                    {
                        return new DataContent(fileData.GetString()!) { Name = name };
                    }

                    if (file.TryGetProperty("file_id", out var id) && id.ValueKind == JsonValueKind.String)
                    {
                        return new HostedFileContent(id.GetString()!) { Name = name };
                    }

                    break;
            }
        }
        catch (Exception ex) when (ex is FormatException or UriFormatException or ArgumentException or InvalidOperationException)
        {
            var at = $"messages[{message}].content[{index}]";
            throw ProviderException.Unsupported(at, $"{at} ('{ProviderException.Quoted(part.Type)}') is not well formed ({ex.GetType().Name}); the request was not sent to this deployment.");
        }

        var where = $"messages[{message}].content[{index}]";
        throw ProviderException.Unsupported(where,
            $"{where} is a '{ProviderException.Quoted(part.Type)}' part an IChatClient deployment has no form for (text, image_url, input_audio with data and format, file with file_data or file_id); the request was not sent to this deployment.");
    }

    /// <summary>A number the request carries as an unknown field (OpenAI's penalties), if it does.</summary>
    private static float? Number(ChatCompletionRequest r, string name) =>
        r.AdditionalProperties?.TryGetValue(name, out var v) == true && v.ValueKind == JsonValueKind.Number ? v.GetSingle() : null;

    private static JsonElement? Member(ContentPart part, string name) =>
        part.AdditionalProperties?.TryGetValue(name, out var value) == true ? value : null;

    private static List<ToolCall>? ToolCalls(IList<AIContent> contents)
    {
        List<ToolCall>? calls = null;
        foreach (var call in contents.OfType<FunctionCallContent>())
        {
            (calls ??= []).Add(new ToolCall { Id = call.CallId, Type = "function", Function = new FunctionCall { Name = call.Name, Arguments = Arguments(call) } });
        }

        return calls;
    }

    // M.E.AI's default options indent; tool-call arguments travel compact, as the OpenAI API sends them.
    private static readonly JsonSerializerOptions CompactOptions = new(AIJsonUtilities.DefaultOptions) { WriteIndented = false };

    private static string Arguments(FunctionCallContent call) =>
        call.Arguments is null ? "{}" : JsonSerializer.Serialize(call.Arguments, CompactOptions.GetTypeInfo(typeof(IDictionary<string, object?>)));

    private static TokenUsage? Usage(UsageDetails? usage) =>
        usage is null ? null : TokenUsage.Of((int)(usage.InputTokenCount ?? 0), (int)(usage.OutputTokenCount ?? 0));

    private static string? FinishReason(ChatFinishReason? reason)
    {
        if (reason is not { } r)
        {
            return null;
        }

        if (r == ChatFinishReason.Length)
        {
            return FinishReasons.Length;
        }

        if (r == ChatFinishReason.ToolCalls)
        {
            return FinishReasons.ToolCalls;
        }

        return r == ChatFinishReason.ContentFilter ? FinishReasons.ContentFilter : FinishReasons.Stop;
    }
}
