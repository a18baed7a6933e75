using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server;

/// <summary>
/// <c>POST /v1/messages</c>: the Anthropic Messages format in and out (SSE events too), routed through the same
/// pipeline to any provider. The request is translated to the canonical (OpenAI) form; the answer back.
/// </summary>
internal sealed class AnthropicMessagesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        var key = keys.Authenticate(ctx.Request);
        if (keys.Required && key is null)
        {
            await WriteErrorAsync(ctx, 401, "authentication_error", "Missing or invalid gateway key: send it as 'x-api-key: <key>'.");
            return;
        }

        if (ctx.Request.ContentLength > options.MaxRequestBodyBytes)
        {
            await WriteTooLargeAsync(ctx);
            return;
        }

        ChatCompletionRequest request;
        try
        {
            using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
            request = ToCanonical(doc.RootElement);
        }
        catch (JsonException ex)
        {
            await WriteErrorAsync(ctx, 400, "invalid_request_error", $"The request body is not valid JSON: {ex.Message}");
            return;
        }
        catch (InvalidRequestException ex)
        {
            await WriteErrorAsync(ctx, 400, "invalid_request_error", ex.Message);
            return;
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == 413)
        {
            await WriteTooLargeAsync(ctx);
            return;
        }

        request.Gateway = new GatewayRequestOptions { RateLimitKey = key?.Id, CacheNamespace = key?.Id };
        ctx.Response.Headers["request-id"] = ctx.TraceIdentifier;
        if (request.Stream == true)
        {
            await StreamAsync(ctx, request);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, ctx.RequestAborted);
            ctx.Response.ContentType = "application/json";
            await JsonSerializer.SerializeAsync(ctx.Response.Body, ToAnthropic(response), AnthropicJsonContext.Default.AnthropicMessage, ctx.RequestAborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            await WriteErrorAsync(ctx, ex);
        }
    }

    private Task WriteTooLargeAsync(HttpContext ctx) =>
        WriteErrorAsync(ctx, 413, "request_too_large", $"The request body is larger than {options.MaxRequestBodyBytes} bytes.");

    /// <summary>An Anthropic Messages request in canonical form.</summary>
    internal static ChatCompletionRequest ToCanonical(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException(null, "The request body must be a JSON object.");
        }

        var request = new ChatCompletionRequest
        {
            Model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()! : throw new InvalidRequestException("model", "model: Field required"),
            MaxTokens = root.TryGetProperty("max_tokens", out var mt) && mt.TryGetInt32(out var max) ? max : throw new InvalidRequestException("max_tokens", "max_tokens: Field required"),
            Stream = root.TryGetProperty("stream", out var s) && s.ValueKind == JsonValueKind.True ? true : null,
            Temperature = root.TryGetProperty("temperature", out var t) && t.TryGetDouble(out var temp) ? temp : null,
            TopP = root.TryGetProperty("top_p", out var p) && p.TryGetDouble(out var topP) ? topP : null,
            User = root.TryGetProperty("metadata", out var meta) && meta.ValueKind == JsonValueKind.Object && meta.TryGetProperty("user_id", out var uid) ? uid.GetString() : null,
        };

        if (root.TryGetProperty("system", out var system))
        {
            request.Messages.Add(ChatCompletionMessage.System(system.ValueKind == JsonValueKind.String ? system.GetString()! : TextOf(system)));
        }

        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidRequestException("messages", "messages: Field required");
        }

        foreach (var message in messages.EnumerateArray())
        {
            var role = message.TryGetProperty("role", out var r) ? r.GetString() : null;
            if (role is not ("user" or "assistant"))
            {
                throw new InvalidRequestException("messages.role", $"messages: role must be 'user' or 'assistant'; got '{role}'.");
            }

            var content = message.TryGetProperty("content", out var c) ? c : default;
            if (content.ValueKind == JsonValueKind.String)
            {
                request.Messages.Add(new ChatCompletionMessage { Role = role, Content = content.GetString() ?? string.Empty });
                continue;
            }

            var parts = new List<ContentPart>();
            var calls = new List<ToolCall>();
            foreach (var block in content.ValueKind == JsonValueKind.Array ? content.EnumerateArray() : default)
            {
                switch (block.GetProperty("type").GetString())
                {
                    case "text":
                        parts.Add(new ContentPart { Type = "text", Text = block.GetProperty("text").GetString() });
                        break;
                    case "image" when block.TryGetProperty("source", out var src):
                        var url = src.GetProperty("type").GetString() == "base64"
                            ? $"data:{src.GetProperty("media_type").GetString()};base64,{src.GetProperty("data").GetString()}"
                            : src.GetProperty("url").GetString()!;
                        parts.Add(new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = url } });
                        break;
                    case "tool_use":
                        calls.Add(new ToolCall { Id = block.GetProperty("id").GetString(), Type = "function", Function = new FunctionCall { Name = block.GetProperty("name").GetString(), Arguments = block.TryGetProperty("input", out var input) ? input.GetRawText() : "{}" } });
                        break;
                    case "tool_result":
                        var result = block.TryGetProperty("content", out var rc) ? (rc.ValueKind == JsonValueKind.String ? rc.GetString()! : TextOf(rc)) : string.Empty;
                        request.Messages.Add(ChatCompletionMessage.Tool(block.GetProperty("tool_use_id").GetString()!, result));
                        break;
                }
            }

            if (parts.Count > 0 || calls.Count > 0)
            {
                request.Messages.Add(new ChatCompletionMessage
                {
                    Role = role,
                    Content = parts.Count == 0 ? null : parts.TrueForAll(x => x.Type == "text") ? new MessageContent(string.Concat(parts.Select(x => x.Text))) : new MessageContent(parts),
                    ToolCalls = calls.Count > 0 ? calls : null,
                });
            }
        }

        if (root.TryGetProperty("stop_sequences", out var stops) && stops.ValueKind == JsonValueKind.Array)
        {
            request.Stop = new StopSequences(stops.EnumerateArray().Select(x => x.GetString()!));
        }

        if (root.TryGetProperty("tools", out var tools) && tools.ValueKind == JsonValueKind.Array)
        {
            request.Tools = [.. tools.EnumerateArray().Select(x => new ToolDefinition
            {
                Function = new FunctionDefinition
                {
                    Name = x.GetProperty("name").GetString()!,
                    Description = x.TryGetProperty("description", out var d) ? d.GetString() : null,
                    Parameters = x.TryGetProperty("input_schema", out var schema) ? schema.Clone() : null,
                },
            })];
        }

        if (root.TryGetProperty("tool_choice", out var choice) && choice.TryGetProperty("type", out var ct))
        {
            var json = ct.GetString() switch
            {
                "any" => "\"required\"",
                "none" => "\"none\"",
                "tool" => "{\"type\":\"function\",\"function\":{\"name\":" + JsonSerializer.Serialize(choice.GetProperty("name").GetString(), ServerStringContext.Default.String) + "}}",
                _ => "\"auto\"",
            };
            request.ToolChoice = JsonDocument.Parse(json).RootElement.Clone();
        }

        return request;
    }

    /// <summary>A canonical answer as an Anthropic message.</summary>
    internal static AnthropicMessage ToAnthropic(ChatCompletionResponse response)
    {
        var message = response.Choices.Count > 0 ? response.Choices[0].Message : null;
        var content = new List<AnthropicContentBlock>();
        if (message?.Content?.GetText() is { Length: > 0 } text)
        {
            content.Add(new AnthropicContentBlock { Type = "text", Text = text });
        }

        foreach (var call in message?.ToolCalls ?? [])
        {
            content.Add(new AnthropicContentBlock { Type = "tool_use", Id = call.Id, Name = call.Function?.Name, Input = ParseInput(call.Function?.Arguments) });
        }

        return new AnthropicMessage
        {
            Id = response.Id.StartsWith("msg_", StringComparison.Ordinal) ? response.Id : "msg_" + response.Id,
            Model = response.Model,
            Content = content,
            StopReason = StopReason(response.FinishReason),
            Usage = new AnthropicUsage { InputTokens = response.Usage?.PromptTokens ?? 0, OutputTokens = response.Usage?.CompletionTokens ?? 0 },
        };
    }

    private async Task StreamAsync(HttpContext ctx, ChatCompletionRequest request)
    {
        var started = false;
        var textOpen = false;
        var blockIndex = -1;
        var toolBlocks = new Dictionary<int, int>();
        string? finish = null;
        var outputTokens = 0;
        var inputTokens = 0;
        try
        {
            await foreach (var chunk in queue.StreamAsync(request, SubmitMode.FailFast, ctx.RequestAborted))
            {
                if (!started)
                {
                    ctx.Response.ContentType = "text/event-stream";
                    ctx.Response.Headers.CacheControl = "no-cache";
                    await EventAsync(ctx, "message_start", new AnthropicStreamEvent { Type = "message_start", Message = new AnthropicMessage { Id = "msg_" + chunk.Id, Model = chunk.Model, Usage = new AnthropicUsage() } });
                    await RawEventAsync(ctx, "ping", """{"type":"ping"}""");
                    started = true;
                }

                if (chunk.Usage is { } usage)
                {
                    inputTokens = usage.PromptTokens;
                    outputTokens = usage.CompletionTokens;
                }

                foreach (var choice in chunk.Choices)
                {
                    if (choice.Delta.Content is { Length: > 0 } text)
                    {
                        if (!textOpen)
                        {
                            blockIndex++;
                            textOpen = true;
                            await EventAsync(ctx, "content_block_start", new AnthropicStreamEvent { Type = "content_block_start", Index = blockIndex, ContentBlock = new AnthropicContentBlock { Type = "text", Text = string.Empty } });
                        }

                        await EventAsync(ctx, "content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = blockIndex, Delta = new AnthropicDelta { Type = "text_delta", Text = text } });
                    }

                    foreach (var call in choice.Delta.ToolCalls ?? [])
                    {
                        var toolIndex = call.Index ?? 0;
                        if (!toolBlocks.TryGetValue(toolIndex, out var index))
                        {
                            if (textOpen || blockIndex >= 0)
                            {
                                await RawEventAsync(ctx, "content_block_stop", $$"""{"type":"content_block_stop","index":{{blockIndex}}}""");
                                textOpen = false;
                            }

                            index = toolBlocks[toolIndex] = ++blockIndex;
                            await EventAsync(ctx, "content_block_start", new AnthropicStreamEvent { Type = "content_block_start", Index = index, ContentBlock = new AnthropicContentBlock { Type = "tool_use", Id = call.Id, Name = call.Function?.Name, Input = ParseInput("{}") } });
                        }

                        if (call.Function?.Arguments is { Length: > 0 } args)
                        {
                            await EventAsync(ctx, "content_block_delta", new AnthropicStreamEvent { Type = "content_block_delta", Index = index, Delta = new AnthropicDelta { Type = "input_json_delta", PartialJson = args } });
                        }
                    }

                    finish = choice.FinishReason ?? finish;
                }
            }

            if (blockIndex >= 0)
            {
                await RawEventAsync(ctx, "content_block_stop", $$"""{"type":"content_block_stop","index":{{blockIndex}}}""");
            }

            await EventAsync(ctx, "message_delta", new AnthropicStreamEvent { Type = "message_delta", Delta = new AnthropicDelta { StopReason = StopReason(finish) }, Usage = new AnthropicUsage { InputTokens = inputTokens, OutputTokens = outputTokens } });
            await RawEventAsync(ctx, "message_stop", """{"type":"message_stop"}""");
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (ctx.RequestAborted.IsCancellationRequested)
            {
                return;
            }

            if (!started)
            {
                await WriteErrorAsync(ctx, ex);
                return;
            }

            var (_, type, message) = Map(ex);
            await EventAsync(ctx, "error", new AnthropicStreamEvent { Type = "error", Error = new AnthropicError { Type = type, Message = message } });
        }
    }

    private static Task EventAsync(HttpContext ctx, string name, AnthropicStreamEvent e) =>
        RawEventAsync(ctx, name, JsonSerializer.Serialize(e, AnthropicJsonContext.Default.AnthropicStreamEvent));

    private static async Task RawEventAsync(HttpContext ctx, string name, string json)
    {
        await ctx.Response.Body.WriteAsync(Encoding.UTF8.GetBytes($"event: {name}\ndata: {json}\n\n"), ctx.RequestAborted);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
    }

    /// <summary>A failure in Anthropic's terms: the same status as on the OpenAI routes, with Anthropic's error type.</summary>
    private static (int Status, string Type, string Message) Map(Exception ex)
    {
        var (status, error, _) = OpenAIErrors.Map(ex);
        var type = ex is UpstreamRejectedException { ErrorType: { } upstream } && AnthropicTypes.Contains(upstream)
            ? upstream
            : status switch
            {
                400 or 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 or 529 => "overloaded_error",
                504 => "timeout_error",
                _ => "api_error",
            };
        return (status, type, error.Message);
    }

    private static readonly HashSet<string> AnthropicTypes =
        ["invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error"];

    private static Task WriteErrorAsync(HttpContext ctx, Exception ex)
    {
        var (status, type, message) = Map(ex);
        OpenAIErrors.WriteRetryAfter(ctx.Response, OpenAIErrors.Map(ex).RetryAfter); // the status mapping is shared with the OpenAI routes

        return WriteErrorAsync(ctx, status, type, message);
    }

    private static async Task WriteErrorAsync(HttpContext ctx, int status, string type, string message)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(ctx.Response.Body, new AnthropicErrorBody { Error = new AnthropicError { Type = type, Message = message } }, AnthropicJsonContext.Default.AnthropicErrorBody, CancellationToken.None);
    }

    private static string? StopReason(string? finish) => finish switch
    {
        null => null,
        FinishReasons.Length => "max_tokens",
        FinishReasons.ToolCalls => "tool_use",
        FinishReasons.ContentFilter => "refusal",
        _ => "end_turn",
    };

    private static JsonElement ParseInput(string? json)
    {
        try
        {
            return JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "{}" : json).RootElement.Clone();
        }
        catch (JsonException)
        {
            return JsonDocument.Parse("{}").RootElement.Clone();
        }
    }

    private static string TextOf(JsonElement blocks) =>
        blocks.ValueKind == JsonValueKind.Array
            ? string.Concat(blocks.EnumerateArray().Where(b => b.TryGetProperty("text", out _)).Select(b => b.GetProperty("text").GetString()))
            : blocks.ToString();
}

[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class ServerStringContext : System.Text.Json.Serialization.JsonSerializerContext;
