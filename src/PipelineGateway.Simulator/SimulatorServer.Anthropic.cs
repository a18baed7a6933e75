using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Simulator;

/// <summary>The Anthropic route: /v1/messages, read with the gateway's own Anthropic codec, whole and streamed, with the Anthropic error shape.</summary>
public sealed partial class SimulatorServer
{
    private async Task AnthropicMessagesAsync(HttpContext ctx)
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (_options.ApiKey is { } key && ctx.Request.Headers["x-api-key"] != key)
            {
                await AnthropicError(ctx, 401, "authentication_error", "invalid x-api-key").ConfigureAwait(false);
                return;
            }

            if (string.IsNullOrEmpty(ctx.Request.Headers["anthropic-version"]))
            {
                await AnthropicError(ctx, 400, "invalid_request_error", "anthropic-version: header is required").ConfigureAwait(false);
                return;
            }

            // The gateway's own Anthropic codec reads the request: the simulator and /v1/messages agree on what is valid.
            ChatCompletionRequest request;
            try
            {
                using var body = new MemoryStream();
                await ctx.Request.Body.CopyToAsync(body, ctx.RequestAborted).ConfigureAwait(false);
                request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse(body.ToArray()));
            }
            catch (AnthropicRequestException ex)
            {
                await AnthropicError(ctx, 400, "invalid_request_error", ex.Message).ConfigureAwait(false);
                return;
            }

            if ((ToolIdRefused(request) ?? ForgedThinking(request) ?? ThinkingLeftOut(request) ?? ServerToolError(request, string.Join(',', ctx.Request.Headers["anthropic-beta"].ToArray()))) is { } refused)
            {
                await AnthropicError(ctx, 400, "invalid_request_error", refused).ConfigureAwait(false);
                return;
            }

            var plan = Plan(ctx);
            if (!await PrepareAsync(ctx, plan, request, anthropic: true).ConfigureAwait(false))
            {
                return;
            }

            var words = StopAt(SimulatedText.Answer(request, _options.Seed, _options.CompletionWords), request, out var stoppedAt);
            var usage = PromptCacheUsage(request, words.Length);
            var thought = Thinks(request) ? "Considering: " + string.Join(' ', words.Take(4)) : null;
            var tool = SimulatedTools.WantsTool(request);
            var finish = SimulatedText.Finish(request, _options.CompletionWords, tool, stoppedAt is not null);
            var id = "msg_sim" + SimulatedText.StableHash(string.Join(' ', words)).ToString("x8", System.Globalization.CultureInfo.InvariantCulture);
            if (WebSearchQuery(request, words) is { } query)
            {
                // One search, reported as Claude reports it (billed per search).
                usage = Cost.ServerToolUse.With(usage, JsonSerializer.SerializeToElement(new Dictionary<string, int> { ["web_search_requests"] = 1 }));
                SetRateLimitHeaders(ctx);
                await (request.Stream == true ? StreamSearchAsync(ctx, id, request.Model, query, words, usage) : WriteSearchAsync(ctx, id, request.Model, query, words, usage)).ConfigureAwait(false);
                return;
            }

            if (request.Stream == true)
            {
                await AnthropicStreamAsync(ctx, plan, request.Model, words, usage, id, tool, tool is null ? null : SimulatedTools.ToolArguments(request, tool, words), thought, tool is null ? stoppedAt : null, finish).ConfigureAwait(false);
                return;
            }

            var answer = new ChatCompletionResponse
            {
                Id = id,
                Model = request.Model,
                Choices =
                [
                    new ChatChoice
                    {
                        Message = tool is null
                            ? ChatCompletionMessage.Assistant(string.Join(' ', words))
                            : new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Id = ToolUseId(words, tool), Type = "function", Function = new FunctionCall { Name = tool, Arguments = SimulatedTools.ToolArguments(request, tool, words) } }] },
                        FinishReason = finish,
                    },
                ],
                Usage = usage,
            };
            if (tool is null && stoppedAt is not null)
            {
                AnthropicStop.Set(answer, AnthropicStop.Sequence, stoppedAt); // Claude says which stop sequence ended the answer
            }

            if (thought is not null)
            {
                var message = answer.Choices[0].Message!;
                message.AdditionalProperties = ThinkingBlocks.Write(message.AdditionalProperties, [new ThinkingBlock(ThinkingBlock.Plain, thought, Sign(thought), null)], thought);
            }

            SetRateLimitHeaders(ctx);
            ctx.Response.ContentType = "application/json";
            await JsonSerializer.SerializeAsync(ctx.Response.Body, AnthropicResponses.ToAnthropic(answer), AnthropicJsonContext.Default.AnthropicMessage, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            Interlocked.Increment(ref _aborted);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private async Task AnthropicStreamAsync(HttpContext ctx, FaultPlan plan, string model, string[] words, TokenUsage usage, string id, string? tool, string? args, string? thought, string? stoppedAt, string finish)
    {
        StartSse(ctx);

        // The answer as canonical chunks, written as Anthropic events by the gateway's own stream writer.
        var writer = new AnthropicStreamWriter(usage);
        ChatCompletionChunk Chunk(ChatCompletionDelta delta, string? finish = null) => new()
        {
            Id = id,
            Model = model,
            Choices = [new ChunkChoice { Delta = delta, FinishReason = finish }],
        };

        var chunks = new List<ChatCompletionChunk> { Chunk(new ChatCompletionDelta { Role = ChatRoles.Assistant }) };
        if (plan.StreamError is { } streamError)
        {
            // message_start, then an error event: the usual way Anthropic reports overload mid-stream.
            foreach (var e in writer.OnChunk(chunks[0]).Take(1))
            {
                await WriteSseAsync(ctx, e.Name, e.Json).ConfigureAwait(false);
            }

            var error = AnthropicStreamWriter.Error(streamError, plan.Message ?? "Overloaded");
            await WriteSseAsync(ctx, error.Name, error.Json).ConfigureAwait(false);
            return;
        }

        if (thought is not null)
        {
            // Extended thinking: the thought in two pieces, then its signature, as Claude streams it.
            var half = thought.Length / 2;
            chunks.Add(Chunk(new ChatCompletionDelta { AdditionalProperties = ThinkingBlocks.Write(null, [new ThinkingBlock(ThinkingBlock.Plain, thought[..half], null, null)], thought[..half]) }));
            chunks.Add(Chunk(new ChatCompletionDelta { AdditionalProperties = ThinkingBlocks.Write(null, [new ThinkingBlock(ThinkingBlock.Plain, thought[half..], null, null)], thought[half..]) }));
            chunks.Add(Chunk(new ChatCompletionDelta { AdditionalProperties = ThinkingBlocks.Write(null, [new ThinkingBlock(ThinkingBlock.Plain, string.Empty, Sign(thought), null)], null) }));
        }

        // A tool the caller forced (tool_choice any or a named tool) is called with no text before it, as Anthropic does.
        if (tool is null)
        {
            for (var i = 0; i < words.Length; i++)
            {
                chunks.Add(Chunk(new ChatCompletionDelta { Content = i == 0 ? words[i] : " " + words[i] }));
            }
        }
        else
        {
            var half = args!.Length / 2;
            chunks.Add(Chunk(new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Id = ToolUseId(words, tool), Type = "function", Function = new FunctionCall { Name = tool, Arguments = string.Empty } }] }));
            chunks.Add(Chunk(new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = args[..half] } }] }));
            chunks.Add(Chunk(new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = args[half..] } }] }));
        }

        chunks.Add(Chunk(new ChatCompletionDelta(), finish));
        chunks[^1].AnthropicStop = stoppedAt is null ? null : (AnthropicStop.Sequence, stoppedAt);
        chunks.Add(new ChatCompletionChunk { Id = id, Model = model, Choices = [], Usage = usage });

        var events = chunks.SelectMany(writer.OnChunk).Concat(writer.Finish()).ToList();
        for (var i = 0; i < events.Count; i++)
        {
            if (await FaultMidStreamAsync(ctx, plan, i).ConfigureAwait(false))
            {
                return;
            }

            await WriteSseAsync(ctx, events[i].Name, events[i].Json).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// <c>/v1/messages/count_tokens</c>: the prompt's tokens as the messages route counts them (its usage's input tokens),
    /// and as strict as Claude about the body — a member count_tokens does not take is a 400.
    /// </summary>
    private async Task AnthropicCountTokensAsync(HttpContext ctx)
    {
        Interlocked.Increment(ref _countRequests);
        if (_options.ApiKey is { } key && ctx.Request.Headers["x-api-key"] != key)
        {
            await AnthropicError(ctx, 401, "authentication_error", "invalid x-api-key").ConfigureAwait(false);
            return;
        }

        using var body = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(body, ctx.RequestAborted).ConfigureAwait(false);
        try
        {
            using (var doc = JsonDocument.Parse(body.ToArray()))
            {
                foreach (var member in doc.RootElement.EnumerateObject())
                {
                    if (member.Name is not ("model" or "messages" or "system" or "tools" or "tool_choice" or "thinking" or "mcp_servers"))
                    {
                        await AnthropicError(ctx, 400, "invalid_request_error", $"{member.Name}: Extra inputs are not permitted").ConfigureAwait(false);
                        return;
                    }
                }
            }

            var request = AnthropicCodec.ToCanonical(AnthropicCodec.ParseCount(body.ToArray()));
            await ctx.Response.WriteAsJsonAsync(new Dictionary<string, int> { ["input_tokens"] = SimulatedText.PromptTokens(request) }, SimJson.Default.DictionaryStringInt32, cancellationToken: ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is AnthropicRequestException or JsonException)
        {
            await AnthropicError(ctx, 400, "invalid_request_error", ex.Message).ConfigureAwait(false);
        }
    }

    private long _countRequests;

    /// <summary>count_tokens requests received.</summary>
    public long CountRequests => Interlocked.Read(ref _countRequests);

    /// <summary>The request turns extended thinking on (<c>thinking: {"type": "enabled", …}</c>).</summary>
    private static bool Thinks(ChatCompletionRequest request) =>
        request.AdditionalProperties?.TryGetValue(ThinkingBlocks.Parameter, out var t) == true && t.ValueKind == JsonValueKind.Object
        && t.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "enabled";

    /// <summary>The simulator's signature of a thought (Claude's are opaque; this one is checked as Claude checks its own).</summary>
    private static string Sign(string thought) => "sim_sig_" + SimulatedText.StableHash(thought).ToString("x8", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>
    /// A thinking block given back with a signature this server did not give it (changed text, or none): Anthropic refuses
    /// such a request, and so does the simulator, so a gateway that alters Claude's thinking on its way back is seen.
    /// </summary>
    /// <summary>
    /// With thinking on, Claude wants its thinking back in a tool loop: the last assistant message, when it called tools,
    /// must start with the thinking that came with it. Anthropic refuses a request without it, and so does the simulator,
    /// so a route that drops Claude's thinking on its way back is seen.
    /// </summary>
    private static string? ThinkingLeftOut(ChatCompletionRequest request)
    {
        if (!Thinks(request))
        {
            return null;
        }

        var last = request.Messages.FindLastIndex(static m => m.Role == ChatRoles.Assistant);
        if (last < 0 || request.Messages[last].ToolCalls is not { Count: > 0 } || ThinkingBlocks.Read(request.Messages[last].AdditionalProperties).Count > 0)
        {
            return null;
        }

        return $"messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`.";
    }

    /// <summary>A tool id Claude refuses (<see cref="PipelineGateway.Providers.ToolIds"/>), in Anthropic's words: so a route that sends another model's ids as they are is seen.</summary>
    private static string? ToolIdRefused(ChatCompletionRequest request)
    {
        for (var i = 0; i < request.Messages.Count; i++)
        {
            var message = request.Messages[i];
            if (message.Role == ChatRoles.Tool && !ToolIds.ClaudeTakes(message.ToolCallId))
            {
                return $"messages.{i}.content.0.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'";
            }

            for (var j = 0; j < (message.ToolCalls?.Count ?? 0); j++)
            {
                if (!ToolIds.ClaudeTakes(message.ToolCalls![j].Id))
                {
                    return $"messages.{i}.content.{j}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'";
                }
            }
        }

        return null;
    }

    private static string? ForgedThinking(ChatCompletionRequest request)
    {
        for (var i = 0; i < request.Messages.Count; i++)
        {
            foreach (var block in ThinkingBlocks.Read(request.Messages[i].AdditionalProperties))
            {
                if (block.Type == ThinkingBlock.Plain && block.Signature != Sign(block.Thinking ?? string.Empty))
                {
                    return $"messages.{i}: Invalid `signature` in `thinking` block";
                }
            }
        }

        return null;
    }

    /// <summary>
    /// Anthropic's prompt cache, simulated: the prompt up to the last block marked <c>cache_control</c> (system and
    /// messages in order) is the cached prefix when it is at least <see cref="MinCachedTokens"/> long — written to the
    /// cache the first time this server sees it, read from it after that.
    /// </summary>
    private TokenUsage PromptCacheUsage(ChatCompletionRequest request, int completion)
    {
        var total = SimulatedText.PromptTokens(request);
        var last = request.Messages.FindLastIndex(static m => m.AdditionalProperties?.ContainsKey("cache_control") == true
            || m.Content?.Parts?.Exists(static p => p.AdditionalProperties?.ContainsKey("cache_control") == true) == true);
        if (last < 0)
        {
            return TokenUsage.Of(total, completion);
        }

        var prefix = new ChatCompletionRequest { Model = request.Model, Messages = request.Messages[..(last + 1)] };
        var cached = SimulatedText.PromptTokens(prefix);
        if (cached < MinCachedTokens)
        {
            return TokenUsage.Of(total, completion);
        }

        var key = request.Model + "\n" + string.Join("\n", prefix.Messages.Select(static m => m.Role + ":" + m.Content?.GetText()));
        var seen = !_promptCache.TryAdd(key, 0);
        return Cost.PromptCacheTokens.Usage(total - cached, completion, seen ? cached : 0, seen ? 0 : cached);
    }

    /// <summary>Anthropic caches prompts of at least 1,024 tokens (Sonnet and Opus).</summary>
    private const int MinCachedTokens = 1024;

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> _promptCache = new(StringComparer.Ordinal);

    private static Task AnthropicError(HttpContext ctx, int status, string type, string message)
    {
        ctx.Response.StatusCode = status;
        return ctx.Response.WriteAsJsonAsync(new { type = "error", error = new { type, message } }, ctx.RequestAborted);
    }

    // ---------------------------------------------------------------- shared

    /// <summary>A tool call's id, different per answer as Claude's are (a function of the answer, so a run is repeatable).</summary>
    private static string ToolUseId(string[] words, string tool) =>
        "toolu_sim" + SimulatedText.StableHash(tool + ":" + string.Join(' ', words)).ToString("x8", System.Globalization.CultureInfo.InvariantCulture);
}
