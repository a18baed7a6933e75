using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Simulator;

/// <summary>The OpenAI route: /v1/chat/completions, whole and streamed, with the OpenAI error shape.</summary>
public sealed partial class SimulatorServer
{
    private async Task OpenAIChatAsync(HttpContext ctx)
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (!await OpenAIKeyAcceptedAsync(ctx).ConfigureAwait(false))
            {
                return;
            }

            ChatCompletionRequest? request;
            try
            {
                request = await JsonSerializer.DeserializeAsync(ctx.Request.Body, GatewayJsonContext.Default.ChatCompletionRequest, ctx.RequestAborted).ConfigureAwait(false);
            }
            catch (JsonException ex)
            {
                await OpenAIError(ctx, 400, "invalid_request_error", null, $"We could not parse the JSON body of your request. ({ex.Message})").ConfigureAwait(false);
                return;
            }

            if (request is null || request.Messages.Count == 0 || string.IsNullOrEmpty(request.Model))
            {
                await OpenAIError(ctx, 400, "invalid_request_error", null, "'model' and 'messages' are required.", "messages").ConfigureAwait(false);
                return;
            }

            if (ToolIdTooLong(request) is { } tooLong)
            {
                await OpenAIError(ctx, 400, "invalid_request_error", "string_above_max_length", tooLong.Message, tooLong.Param).ConfigureAwait(false);
                return;
            }

            var plan = Plan(ctx);
            if (!await PrepareAsync(ctx, plan, request, anthropic: false).ConfigureAwait(false))
            {
                return;
            }

            var words = StopAt(SimulatedText.Answer(request, _options.Seed, _options.CompletionWords), request, out var stoppedAt);
            var promptTokens = SimulatedText.PromptTokens(request);
            var id = "chatcmpl-sim" + SimulatedText.StableHash(string.Join(' ', words)).ToString("x8", System.Globalization.CultureInfo.InvariantCulture);
            var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var tool = SimulatedTools.WantsTool(request);
            var finish = SimulatedText.Finish(request, _options.CompletionWords, tool, stoppedAt is not null || SimulatedTools.StructuredContent(request, words) is not null);
            if (request.Stream == true)
            {
                await OpenAIStreamAsync(ctx, plan, request, words, promptTokens, id, created, tool, finish).ConfigureAwait(false);
                return;
            }

            var message = tool is null
                ? ChatCompletionMessage.Assistant(SimulatedTools.StructuredContent(request, words) ?? string.Join(' ', words))
                : new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Id = "call_sim1", Type = "function", Function = new FunctionCall { Name = tool, Arguments = SimulatedTools.ToolArguments(request, tool, words) } }] };
            var logprobs = tool is null ? SimulatedText.Logprobs(request, SimulatedProvider.Pieces(message.Content!.GetText(), words)) : null;
            var response = new ChatCompletionResponse
            {
                Id = id,
                Created = created,
                Model = request.Model,
                Choices = [new ChatChoice { Message = message, FinishReason = finish, Logprobs = logprobs }],
                Usage = TokenUsage.Of(promptTokens, words.Length),
            };
            SetRateLimitHeaders(ctx);
            ctx.Response.ContentType = "application/json";
            await JsonSerializer.SerializeAsync(ctx.Response.Body, response, GatewayJsonContext.Default.ChatCompletionResponse, ctx.RequestAborted).ConfigureAwait(false);
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

    /// <summary>The key check of every OpenAI route: false (answered 401) when a key is configured and another was sent.</summary>
    private async Task<bool> OpenAIKeyAcceptedAsync(HttpContext ctx)
    {
        if (_options.ApiKey is { } key && ctx.Request.Headers.Authorization != $"Bearer {key}" && ctx.Request.Headers["api-key"] != key)
        {
            // Like the real API, echo a masked fragment of the key that was sent.
            var sent = ctx.Request.Headers.Authorization.ToString().Replace("Bearer ", string.Empty, StringComparison.Ordinal);
            var masked = sent.Length > 8 ? $"{sent[..6]}***{sent[^4..]}" : "***";
            await OpenAIError(ctx, 401, "invalid_request_error", "invalid_api_key", $"Incorrect API key provided: {masked}. You can find your API key in your account settings.").ConfigureAwait(false);
            return false;
        }

        return true;
    }

    /// <summary>
    /// <c>POST /v1/embeddings</c> and <c>/v1/moderations</c> (and Azure's deployment route for embeddings): OpenAI's
    /// answers, made up deterministically (<see cref="SimulatedEmbeddings"/>, <see cref="SimulatedModerations"/>), with the
    /// same faults and latency as the chat route.
    /// </summary>
    private Task OpenAIEmbeddingsAsync(HttpContext ctx) => OpenAIOperationAsync(ctx, PipelineGateway.Providers.OperationKind.Embeddings);

    private Task OpenAIModerationsAsync(HttpContext ctx) => OpenAIOperationAsync(ctx, PipelineGateway.Providers.OperationKind.Moderations);

    private Task OpenAIImagesAsync(HttpContext ctx) => OpenAIOperationAsync(ctx, PipelineGateway.Providers.OperationKind.Images);

    private Task OpenAISpeechAsync(HttpContext ctx) => OpenAIOperationAsync(ctx, PipelineGateway.Providers.OperationKind.Speech);

    private Task OpenAIRerankAsync(HttpContext ctx) => OpenAIOperationAsync(ctx, PipelineGateway.Providers.OperationKind.Rerank);

    private async Task OpenAIOperationAsync(HttpContext ctx, PipelineGateway.Providers.OperationKind kind)
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (!await OpenAIKeyAcceptedAsync(ctx).ConfigureAwait(false))
            {
                return;
            }

            if (await ReadCheckedAsync(ctx, body => PipelineGateway.Providers.Operations.Read(kind, body)) is not { } request)
            {
                return;
            }

            var plan = Plan(ctx);
            if (!await PrepareAsync(ctx, plan, request, anthropic: false).ConfigureAwait(false))
            {
                return;
            }

            var operation = request.Operation!;
            PipelineGateway.Providers.OperationAnswer data;
            try
            {
                data = kind switch
                {
                    PipelineGateway.Providers.OperationKind.Embeddings => SimulatedEmbeddings.Data(operation),
                    PipelineGateway.Providers.OperationKind.Moderations => SimulatedModerations.Results(operation, (ulong)SimulatedText.StableHash(request.Messages[0].Content!.GetText())),
                    PipelineGateway.Providers.OperationKind.Speech => SimulatedSpeech.Audio(operation),
                    PipelineGateway.Providers.OperationKind.Rerank => SimulatedRerank.Answer(operation, request.Model, "rerank-sim" + SimulatedText.StableHash(request.Messages[0].Content!.GetText()).ToString("x8", System.Globalization.CultureInfo.InvariantCulture)).Answer,
                    _ => SimulatedImages.Data(operation, request.Model),
                };
            }
            catch (PipelineGateway.Providers.ProviderException ex)
            {
                await OpenAIError(ctx, 400, "invalid_request_error", null, ex.Message, ex.Param).ConfigureAwait(false);
                return;
            }

            if (PipelineGateway.Providers.Images.Streams(operation))
            {
                // A streamed image generation (gpt-image models): its partial images, then the image; cut as the plan draws.
                List<byte[]> imageEvents;
                try
                {
                    imageEvents = PipelineGateway.Providers.Images.Events(data, operation, DateTimeOffset.UtcNow.ToUnixTimeSeconds());
                }
                catch (PipelineGateway.Providers.ProviderException ex)
                {
                    await OpenAIError(ctx, 400, "invalid_request_error", null, ex.Message, ex.Param).ConfigureAwait(false);
                    return;
                }

                StartSse(ctx);
                for (var i = 0; i < imageEvents.Count; i++)
                {
                    if (await FaultMidStreamAsync(ctx, plan, i).ConfigureAwait(false))
                    {
                        return;
                    }

                    await WriteSseAsync(ctx, null, imageEvents[i]).ConfigureAwait(false);
                }

                return;
            }

            if (kind == PipelineGateway.Providers.OperationKind.Speech && PipelineGateway.Providers.Speech.AsEvents(operation))
            {
                // Asked as events: OpenAI's speech.audio.delta per block, then speech.audio.done; cut as the plan draws.
                StartSse(ctx);
                var events = PipelineGateway.Providers.Speech.Events(data.List, PipelineGateway.Providers.Http.RawBodyEvents.BlockBytes, PipelineGateway.Providers.Speech.Characters(operation), data.List.Length / 1024);
                for (var i = 0; i < events.Count; i++)
                {
                    if (await FaultMidStreamAsync(ctx, plan, i).ConfigureAwait(false))
                    {
                        return;
                    }

                    await WriteSseAsync(ctx, null, events[i]).ConfigureAwait(false);
                }

                return;
            }

            if (kind == PipelineGateway.Providers.OperationKind.Speech)
            {
                // The audio as OpenAI sends it, as it is made: in blocks, --token-delay-ms apart, cut as --break-rate draws
                // (its length announced, so an early end is a broken body, never a short file taken for whole).
                SetRateLimitHeaders(ctx);
                ctx.Response.ContentType = data.MediaType;
                ctx.Response.ContentLength = data.List.Length;
                for (int at = 0, block = 0; at < data.List.Length; at += PipelineGateway.Providers.Http.RawBodyEvents.BlockBytes, block++)
                {
                    if (await FaultMidStreamAsync(ctx, plan, block).ConfigureAwait(false))
                    {
                        ctx.Abort();
                        return;
                    }

                    await ctx.Response.Body.WriteAsync(data.List.Slice(at, Math.Min(PipelineGateway.Providers.Http.RawBodyEvents.BlockBytes, data.List.Length - at)), ctx.RequestAborted).ConfigureAwait(false);
                    await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
                }

                return;
            }

            var tokens = SimulatedEmbeddings.PromptTokens(operation);
            SetRateLimitHeaders(ctx);
            ctx.Response.ContentType = data.MediaType; // JSON
            var usage = kind == PipelineGateway.Providers.OperationKind.Embeddings ? new TokenUsage { PromptTokens = tokens, TotalTokens = tokens } : null; // moderations: no usage, as OpenAI
            var answer = PipelineGateway.Providers.Operations.ToJson(new ChatCompletionResponse { Model = request.Model, Created = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Usage = usage, Operation = data });
            ctx.Response.ContentLength = answer.Length;
            await ctx.Response.Body.WriteAsync(answer, ctx.RequestAborted).ConfigureAwait(false);
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

    private async Task OpenAIStreamAsync(HttpContext ctx, FaultPlan plan, ChatCompletionRequest request, string[] words, int promptTokens, string id, long created, string? tool, string finish)
    {
        StartSse(ctx);
        if (plan.StreamError is { } streamError)
        {
            // The opening (role only, no content), then an error in the stream, as OpenAI reports a failure mid-stream.
            var opening = new ChatCompletionChunk { Id = id, Created = created, Model = request.Model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Role = ChatRoles.Assistant, Content = string.Empty } }] };
            await WriteSseAsync(ctx, null, JsonSerializer.SerializeToUtf8Bytes(opening, GatewayJsonContext.Default.ChatCompletionChunk)).ConfigureAwait(false);
            await WriteSseAsync(ctx, null, JsonSerializer.SerializeToUtf8Bytes(new { error = new { message = plan.Message ?? "The server is overloaded.", type = streamError, param = (string?)null, code = (string?)null } })).ConfigureAwait(false);
            return;
        }

        var chunks = new List<ChatCompletionChunk>();
        ChatCompletionChunk Chunk(ChatCompletionDelta delta, string? finish = null) => new()
        {
            Id = id,
            Created = created,
            Model = request.Model,
            Choices = [new ChunkChoice { Delta = delta, FinishReason = finish }],
        };

        // OpenAI's own events carry members the gateway does not model (--openai-extras): every event gets them.
        var extras = _options.OpenAIExtras ? new Random(unchecked((int)created ^ id.Length)) : null;

        if (tool is null)
        {
            // Structured output streams its JSON in two pieces; text a word at a time.
            var pieces = SimulatedTools.StructuredContent(request, words) is { } json ? [json[..(json.Length / 2)], json[(json.Length / 2)..]] : words.Select((w, i) => i == 0 ? w : " " + w).ToArray();
            for (var i = 0; i < pieces.Length; i++)
            {
                var chunk = Chunk(new ChatCompletionDelta { Role = i == 0 ? ChatRoles.Assistant : null, Content = pieces[i] });
                chunk.Choices[0].Logprobs = SimulatedText.Logprobs(request, [pieces[i]]);
                chunks.Add(chunk);
            }

            chunks.Add(Chunk(new ChatCompletionDelta(), finish));
        }
        else
        {
            // A streamed tool call: the name first, then the arguments in fragments.
            var args = SimulatedTools.ToolArguments(request, tool, words);
            var half = args.Length / 2;
            chunks.Add(Chunk(new ChatCompletionDelta { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Index = 0, Id = "call_sim1", Type = "function", Function = new FunctionCall { Name = tool, Arguments = string.Empty } }] }));
            chunks.Add(Chunk(new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = args[..half] } }] }));
            chunks.Add(Chunk(new ChatCompletionDelta { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = args[half..] } }] }));
            chunks.Add(Chunk(new ChatCompletionDelta(), FinishReasons.ToolCalls));
        }

        if (request.StreamOptions?.IncludeUsage == true)
        {
            chunks.Add(new ChatCompletionChunk { Id = id, Created = created, Model = request.Model, Choices = [], Usage = TokenUsage.Of(promptTokens, words.Length) });
        }

        for (var i = 0; i < chunks.Count; i++)
        {
            if (await FaultMidStreamAsync(ctx, plan, i).ConfigureAwait(false))
            {
                return;
            }

            if (extras is not null)
            {
                chunks[i].SystemFingerprint = "fp_sim0000001";
                chunks[i].AdditionalProperties = new Dictionary<string, JsonElement>
                {
                    ["service_tier"] = JsonSerializer.SerializeToElement("default", GatewayJsonContext.Default.String),
                    ["obfuscation"] = JsonSerializer.SerializeToElement(Padding(extras), GatewayJsonContext.Default.String),
                };
            }

            await WriteSseAsync(ctx, null, JsonSerializer.SerializeToUtf8Bytes(chunks[i], GatewayJsonContext.Default.ChatCompletionChunk)).ConfigureAwait(false);
        }

        await WriteSseAsync(ctx, null, "[DONE]"u8.ToArray()).ConfigureAwait(false);
    }

    /// <summary>Random padding of 1–16 letters and digits, as OpenAI's <c>obfuscation</c> member carries.</summary>
    private static string Padding(Random random) =>
        string.Create(random.Next(1, 17), random, static (span, r) =>
        {
            const string Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            for (var i = 0; i < span.Length; i++)
            {
                span[i] = Alphabet[r.Next(Alphabet.Length)];
            }
        });

    private static Task OpenAIError(HttpContext ctx, int status, string type, string? code, string message, string? param = null)
    {
        ctx.Response.StatusCode = status;
        return ctx.Response.WriteAsJsonAsync(new { error = new { message, type, param, code } }, ctx.RequestAborted);
    }

    // ---------------------------------------------------------------- Anthropic

    /// <summary>
    /// A tool-call id longer than OpenAI takes (<see cref="PipelineGateway.Providers.ToolIds.OpenAIMaxLength"/>), in OpenAI's
    /// words: so a route that sends another model's long ids to OpenAI as they are is seen.
    /// </summary>
    private static (string Message, string Param)? ToolIdTooLong(ChatCompletionRequest request)
    {
        for (var i = 0; i < request.Messages.Count; i++)
        {
            var message = request.Messages[i];
            for (var j = 0; j < (message.ToolCalls?.Count ?? 0); j++)
            {
                if (message.ToolCalls![j]?.Id is { Length: > PipelineGateway.Providers.ToolIds.OpenAIMaxLength } id)
                {
                    return ($"Invalid 'messages[{i}].tool_calls[{j}].id': string too long. Expected a string with maximum length {PipelineGateway.Providers.ToolIds.OpenAIMaxLength}, but got a string with length {id.Length} instead.", $"messages[{i}].tool_calls[{j}].id");
                }
            }

            if (message.ToolCallId is { Length: > PipelineGateway.Providers.ToolIds.OpenAIMaxLength } result)
            {
                return ($"Invalid 'messages[{i}].tool_call_id': string too long. Expected a string with maximum length {PipelineGateway.Providers.ToolIds.OpenAIMaxLength}, but got a string with length {result.Length} instead.", $"messages[{i}].tool_call_id");
            }
        }

        return null;
    }
}
