using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PipelineGateway.Providers;
using PipelineGateway.Providers.ChatClient;
using AI = Microsoft.Extensions.AI;

namespace PipelineGateway;

/// <summary>
/// The gateway as a Microsoft.Extensions.AI <see cref="IChatClient"/>: every call is submitted to the gateway's queue, so
/// it goes through admission, the cache, routing, failover and metrics like any other request. Messages, tools and tool
/// calls, usage and <see cref="ChatOptions"/> (model, temperature, top-p, max output tokens, seed, stop sequences,
/// response format, tools and tool mode) are translated both ways. The gateway's failures surface as its typed
/// exceptions (<see cref="RateLimitedException"/>, <see cref="BudgetExceededException"/>…); a cancelled call throws an
/// <see cref="OperationCanceledException"/>, as M.E.AI callers expect. The gateway never runs tools: put
/// <c>UseFunctionInvocation()</c> on top (a <see cref="ChatClientBuilder"/>) to have them run.
/// </summary>
public sealed class GatewayChatClient : IChatClient
{
    private readonly IGatewayQueue _gateway;
    private readonly string _model;

    public GatewayChatClient(IGatewayQueue gateway, string model)
    {
        ArgumentNullException.ThrowIfNull(gateway);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        _gateway = gateway;
        _model = model;
    }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var request = ToRequest(messages, options, stream: false);
        var response = await _gateway.SubmitAsync(request, cancellationToken).ConfigureAwait(false);
        var choice = response.Choices.Count > 0 ? response.Choices[0] : null;
        var contents = new List<AIContent>();
        if (ReasoningMapping.WithBlocks(ReasoningMapping.Content(choice?.Message?.AdditionalProperties), ReasoningMapping.BlocksJson(choice?.Message?.AdditionalProperties)) is { } reasoning)
        {
            contents.Add(reasoning);
        }

        if (choice?.Message?.Content?.GetText() is { Length: > 0 } text)
        {
            contents.Add(new TextContent(text));
        }

        if (choice?.Message?.Refusal is { Length: > 0 } refusal)
        {
            contents.Add(Refused(refusal));
        }

        foreach (var call in choice?.Message?.ToolCalls ?? [])
        {
            contents.Add(CallContent(call.Function?.Arguments ?? string.Empty, call.Id, call.Function?.Name, call.AdditionalProperties));
        }

        return new ChatResponse(new AI.ChatMessage(ChatRole.Assistant, contents))
        {
            ResponseId = response.Id,
            ModelId = response.Model,
            CreatedAt = response.Created > 0 ? DateTimeOffset.FromUnixTimeSeconds(response.Created) : null,
            FinishReason = FinishReason(choice?.FinishReason),
            Usage = Usage(response.Usage),
            AdditionalProperties = Info(response.Gateway),
            RawRepresentation = response,
        };
    }

    /// <summary>
    /// The model's refusal (the chat format's <c>refusal</c>: it declined): Microsoft.Extensions.AI has no content of its
    /// own for one, so it is an <see cref="ErrorContent"/> with the code <c>Refusal</c> — what its OpenAI chat client
    /// gives for one — not left out (the answer read as empty).
    /// </summary>
    private static ErrorContent Refused(string refusal) => new(refusal) { ErrorCode = "Refusal" };

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = ToRequest(messages, options, stream: true);

        // Tool calls arrive in pieces (name first, arguments in fragments, by index): they are put together and handed on
        // whole, in the update that finishes the answer, which is what a function-invoking client needs.
        SortedDictionary<int, (string? Id, string? Name, StringBuilder Arguments, Dictionary<string, JsonElement>? Members)>? calls = null;
        Providers.Anthropic.ThinkingBlocks.Collector? thinking = null; // Claude's signed blocks, handed on whole at the end (ReasoningMapping.WithBlocks)
        StringBuilder? refusal = null; // the model's refusal, handed on whole at the end as the whole answer's is
        await foreach (var chunk in _gateway.StreamAsync(request, cancellationToken).ConfigureAwait(false))
        {
            var contents = new List<AIContent>();
            string? finish = null;
            foreach (var choice in chunk.Choices)
            {
                if (ReasoningMapping.Content(choice.Delta.AdditionalProperties) is { } reasoning)
                {
                    contents.Add(reasoning);
                }

                if (Providers.Anthropic.ThinkingBlocks.Read(choice.Delta.AdditionalProperties) is { Count: > 0 } pieces)
                {
                    (thinking ??= new()).Add(pieces);
                }

                if (!string.IsNullOrEmpty(choice.Delta.Content))
                {
                    contents.Add(new TextContent(choice.Delta.Content));
                }

                if (!string.IsNullOrEmpty(choice.Delta.Refusal))
                {
                    (refusal ??= new()).Append(choice.Delta.Refusal);
                }

                foreach (var call in choice.Delta.ToolCalls ?? [])
                {
                    calls ??= [];
                    var index = call.Index ?? calls.Count;
                    var (id, name, args, members) = calls.TryGetValue(index, out var seen) ? seen : (null, null, new StringBuilder(), null);
                    args.Append(call.Function?.Arguments);
                    foreach (var (member, value) in call.AdditionalProperties ?? [])
                    {
                        (members ??= [])[member] = value; // Gemini's thought signature, on the call's first delta
                    }

                    calls[index] = (call.Id ?? id, call.Function?.Name ?? name, args, members);
                }

                finish ??= choice.FinishReason;
            }

            if (finish is not null && thinking is not null)
            {
                var blocks = Providers.Anthropic.ThinkingBlocks.Write(null, thinking.Blocks(), null)![Providers.Anthropic.ThinkingBlocks.Member];
                contents.Add(ReasoningMapping.WithBlocks(null, blocks.GetRawText())!);
                thinking = null;
            }

            if (finish is not null && refusal is not null)
            {
                contents.Add(Refused(refusal.ToString()));
                refusal = null;
            }

            if (finish is not null && calls is not null)
            {
                foreach (var (id, name, args, members) in calls.Values)
                {
                    contents.Add(CallContent(args.ToString(), id, name, members));
                }

                calls = null;
            }

            if (Usage(chunk.Usage) is { } usage)
            {
                contents.Add(new UsageContent(usage));
            }

            yield return new ChatResponseUpdate(ChatRole.Assistant, contents)
            {
                ResponseId = chunk.Id,
                ModelId = chunk.Model,
                CreatedAt = chunk.Created > 0 ? DateTimeOffset.FromUnixTimeSeconds(chunk.Created) : null,
                FinishReason = FinishReason(finish),
                AdditionalProperties = Info(chunk.Gateway),
                RawRepresentation = chunk,
            };
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("pipelinegateway", null, _model)
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(_gateway) ? _gateway
        : null;

    public void Dispose()
    {
        // The gateway belongs to whoever built it.
    }

    /// <summary>M.E.AI messages and options as the gateway's request.</summary>
    internal ChatCompletionRequest ToRequest(IEnumerable<AI.ChatMessage> messages, ChatOptions? options, bool stream)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var request = new ChatCompletionRequest
        {
            Model = options?.ModelId ?? _model,
            Temperature = options?.Temperature,
            TopP = options?.TopP,
            MaxTokens = options?.MaxOutputTokens,
            Seed = options?.Seed,
            Stop = options?.StopSequences is { Count: > 0 } stop ? new StopSequences(stop) : null,
            Stream = stream ? true : null,
        };
        ReasoningMapping.SetEffort(request, options?.Reasoning);
        SetNumber(request, "frequency_penalty", options?.FrequencyPenalty);
        SetNumber(request, "presence_penalty", options?.PresencePenalty);
        foreach (var m in messages)
        {
            AddMessage(request.Messages, m);
        }

        if (options?.Tools is { Count: > 0 } tools)
        {
            request.Tools = [.. tools.OfType<AIFunctionDeclaration>().Select(t => new ToolDefinition
            {
                Function = new FunctionDefinition { Name = t.Name, Description = string.IsNullOrEmpty(t.Description) ? null : t.Description, Parameters = t.JsonSchema },
            })];
            request.ToolChoice = options.ToolMode switch
            {
                NoneChatToolMode => Json("\"none\""),
                RequiredChatToolMode { RequiredFunctionName: { } name } => Json($$$"""{"type":"function","function":{"name":{{{JsonSerializer.Serialize(name, GatewayJsonContext.Default.String)}}}}}"""),
                RequiredChatToolMode => Json("\"required\""),
                _ => null,
            };
        }

        request.ResponseFormat = options?.ResponseFormat switch
        {
            ChatResponseFormatJson { Schema: { } schema } json => Json($$$"""{"type":"json_schema","json_schema":{"name":{{{JsonSerializer.Serialize(json.SchemaName ?? "response", GatewayJsonContext.Default.String)}}},"schema":{{{schema.GetRawText()}}}}}"""),
            ChatResponseFormatJson => Json("""{"type":"json_object"}"""),
            _ => null,
        };
        return request;
    }

    private static void SetNumber(ChatCompletionRequest request, string name, float? value)
    {
        if (value is { } v)
        {
            (request.AdditionalProperties ??= [])[name] = JsonSerializer.SerializeToElement((double)v, GatewayJsonContext.Default.Double);
        }
    }

    private static void AddMessage(List<ChatCompletionMessage> into, AI.ChatMessage m)
    {
        if (m.Role == ChatRole.Tool)
        {
            // One tool message per result: the OpenAI shape the gateway speaks.
            foreach (var result in m.Contents.OfType<FunctionResultContent>())
            {
                into.Add(ChatCompletionMessage.Tool(result.CallId, result.Result switch
                {
                    null => string.Empty,
                    string s => s,
                    JsonElement { ValueKind: JsonValueKind.String } e => e.GetString()!, // a tool's text result, serialized by the invoker
                    JsonElement e => e.GetRawText(),
                    var other => JsonSerializer.Serialize(other, AIJsonUtilities.DefaultOptions.GetTypeInfo(other.GetType())),
                }));
            }

            return;
        }

        var role = m.Role == ChatRole.System ? ChatRoles.System : m.Role == ChatRole.Assistant ? ChatRoles.Assistant : ChatRoles.User;
        var parts = new List<ContentPart>();
        List<ToolCall>? calls = null;
        foreach (var content in m.Contents)
        {
            switch (content)
            {
                case TextContent text:
                    parts.Add(new ContentPart { Type = "text", Text = text.Text });
                    break;
                case DataContent data when data.HasTopLevelMediaType("image"):
                    parts.Add(new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = data.Uri } });
                    break;
                case UriContent uri when uri.HasTopLevelMediaType("image"):
                    parts.Add(new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = uri.Uri.ToString() } });
                    break;
                case FunctionCallContent call:
                    (calls ??= []).Add(new ToolCall
                    {
                        Id = call.CallId,
                        Type = "function",
                        Function = new FunctionCall { Name = call.Name, Arguments = call.Arguments is null ? "{}" : JsonSerializer.Serialize(call.Arguments, AIJsonUtilities.DefaultOptions.GetTypeInfo(typeof(IDictionary<string, object?>))) },
                        AdditionalProperties = CallMembers(call.AdditionalProperties),
                    });
                    break;
            }
        }

        into.Add(new ChatCompletionMessage
        {
            Role = role,
            Name = m.AuthorName,
            Content = parts.Count == 0 ? (calls is null ? new MessageContent(string.Empty) : null)
                : parts.TrueForAll(p => p.Type == "text") ? new MessageContent(string.Concat(parts.Select(p => p.Text))) : new MessageContent(parts),
            ToolCalls = calls,
            // An assistant turn's own thinking blocks go back with it: Claude needs them in a tool loop's next step.
            AdditionalProperties = role == ChatRoles.Assistant && ReasoningMapping.Blocks(m.Contents) is { } blocks
                ? new Dictionary<string, JsonElement> { [Providers.Anthropic.ThinkingBlocks.Member] = blocks }
                : null,
        });
    }

    private static JsonElement Json(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.Clone();
    }

    internal static UsageDetails? Usage(TokenUsage? usage) =>
        usage is null ? null : new UsageDetails { InputTokenCount = usage.PromptTokens, OutputTokenCount = usage.CompletionTokens, TotalTokenCount = usage.TotalTokens };

    private static ChatFinishReason? FinishReason(string? reason) => reason switch
    {
        null => null,
        FinishReasons.Stop => ChatFinishReason.Stop,
        FinishReasons.Length => ChatFinishReason.Length,
        FinishReasons.ToolCalls => ChatFinishReason.ToolCalls,
        FinishReasons.ContentFilter => ChatFinishReason.ContentFilter,
        _ => new ChatFinishReason(reason),
    };

    /// <summary>What the gateway adds: who answered, whether from the cache, the cost, the request id.</summary>
    /// <summary>
    /// A tool call as Microsoft.Extensions.AI has one, with the call's members the chat format does not model in its
    /// <see cref="AIContent.AdditionalProperties"/> (as <see cref="JsonElement"/>s): Gemini's thought signature
    /// (<c>extra_content</c>), which the function-invocation loop keeps in the conversation and <see cref="CallMembers"/>
    /// sends back with the next turn.
    /// </summary>
    private static FunctionCallContent CallContent(string arguments, string? id, string? name, Dictionary<string, JsonElement>? members)
    {
        var content = FunctionCallContent.CreateFromParsedArguments(arguments, id ?? string.Empty, name ?? string.Empty, ToolArguments.ParseAnswer);
        if (members is { Count: > 0 })
        {
            content.AdditionalProperties = [];
            foreach (var (member, value) in members)
            {
                content.AdditionalProperties[member] = value;
            }
        }

        return content;
    }

    /// <summary>
    /// The call's members to send back: only what is JSON already (what <see cref="CallContent"/> put there, or a stored
    /// conversation read back) — anything else an application's own code hung on the content stays in the application
    /// (a strict upstream refuses a member it does not know).
    /// </summary>
    private static Dictionary<string, JsonElement>? CallMembers(AdditionalPropertiesDictionary? properties)
    {
        Dictionary<string, JsonElement>? members = null;
        foreach (var (member, value) in properties ?? [])
        {
            if (value is JsonElement json)
            {
                (members ??= [])[member] = json;
            }
        }

        return members;
    }

    internal static AdditionalPropertiesDictionary? Info(GatewayResponseInfo? info) => info is null ? null : new()
    {
        ["gateway.request_id"] = info.RequestId,
        ["gateway.provider"] = info.Provider,
        ["gateway.cached"] = info.Cached,
        ["gateway.cost_usd"] = info.Cost,
        ["gateway.attempts"] = info.Attempts.Count,
    };
}

/// <summary>The gateway as an <see cref="IChatClient"/>.</summary>
public static class GatewayChatClientExtensions
{
    /// <summary>An <see cref="IChatClient"/> over the gateway, for <paramref name="model"/> (a model group or alias) unless <see cref="ChatOptions.ModelId"/> says otherwise.</summary>
    public static IChatClient AsChatClient(this IGatewayQueue gateway, string model) => new GatewayChatClient(gateway, model);

    /// <summary>
    /// Registers an <see cref="IChatClient"/> over the gateway for <paramref name="model"/> (keyed by <paramref name="serviceKey"/>
    /// when given): code written against Microsoft.Extensions.AI uses the gateway without changes.
    /// </summary>
    public static TBuilder AddChatClient<TBuilder>(this TBuilder builder, string model, object? serviceKey = null)
        where TBuilder : Hosting.IGatewayBuilder
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        if (serviceKey is null)
        {
            Microsoft.Extensions.DependencyInjection.ServiceCollectionServiceExtensions.AddSingleton<IChatClient>(builder.Services, sp => new GatewayChatClient(Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<IGatewayQueue>(sp), model));
        }
        else
        {
            Microsoft.Extensions.DependencyInjection.ServiceCollectionServiceExtensions.AddKeyedSingleton<IChatClient>(builder.Services, serviceKey, (sp, _) => new GatewayChatClient(Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<IGatewayQueue>(sp), model));
        }

        return builder;
    }
}
