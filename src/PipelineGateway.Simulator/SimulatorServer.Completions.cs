using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Simulator;

/// <summary>
/// <c>POST /v1/completions</c> (and Azure's deployment route): OpenAI's legacy Completions API, whole and streamed, as
/// vLLM and OpenAI's instruct models answer it — one choice per prompt and <c>n</c>, <c>echo</c>, <c>logprobs</c> in the
/// API's own form (tokens, their log probabilities, offsets), usage in a last event when asked — with the chat route's
/// faults and latency.
/// </summary>
public sealed partial class SimulatorServer
{
    private async Task OpenAICompletionsAsync(HttpContext ctx)
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (!await OpenAIKeyAcceptedAsync(ctx).ConfigureAwait(false)
                || await ReadCheckedAsync(ctx, static body => TextCompletions.Read(body)) is not { } request)
            {
                return;
            }

            var plan = Plan(ctx);
            if (!await PrepareAsync(ctx, plan, request, anthropic: false).ConfigureAwait(false))
            {
                return;
            }

            var body = request.TextCompletion!.Body;
            var prompts = Prompts(body.GetProperty("prompt"));
            var n = body.TryGetProperty("n", out var nValue) && nValue.ValueKind == JsonValueKind.Number ? nValue.GetInt32() : 1;
            var echo = body.TryGetProperty("echo", out var e) && e.ValueKind == JsonValueKind.True;
            var logprobs = body.TryGetProperty("logprobs", out var l) && l.ValueKind == JsonValueKind.Number;
            var choices = new List<(string[] Pieces, string Finish)>();
            foreach (var prompt in prompts)
            {
                var words = StopAt(SimulatedText.Answer(prompt, _options.Seed, Math.Min(request.RequestedCompletionTokens ?? _options.CompletionWords, _options.CompletionWords)), request, out var stopped);
                var finish = SimulatedText.Finish(request, _options.CompletionWords, null, stopped is not null);
                var pieces = words.Select((w, i) => i == 0 ? w : " " + w).ToList();
                if (echo)
                {
                    pieces.Insert(0, prompt);
                }

                for (var k = 0; k < n; k++)
                {
                    choices.Add(([.. pieces], finish));
                }
            }

            var id = "cmpl-sim" + SimulatedText.StableHash(string.Concat(choices.SelectMany(c => c.Pieces))).ToString("x8", System.Globalization.CultureInfo.InvariantCulture);
            var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var promptTokens = prompts.Sum(p => Math.Max(1, p.Length / 4));
            var completionTokens = choices.Sum(c => c.Pieces.Length - (echo ? 1 : 0));
            var usage = TokenUsage.Of(promptTokens, completionTokens);
            if (request.Stream == true)
            {
                await CompletionStreamAsync(ctx, plan, request, choices, logprobs, id, created, usage).ConfigureAwait(false);
                return;
            }

            var answer = new ChatCompletionResponse
            {
                Id = id,
                Created = created,
                Model = request.Model,
                Usage = usage,
                Choices = [.. choices.Select((c, i) => new ChatChoice { Index = i, Message = ChatCompletionMessage.Assistant(string.Concat(c.Pieces)), FinishReason = c.Finish, Logprobs = logprobs ? Logprobs(c.Pieces, 0) : null })],
            };
            var json = TextCompletions.WriteAnswer(answer);
            SetRateLimitHeaders(ctx);
            ctx.Response.ContentType = "application/json";
            ctx.Response.ContentLength = json.Length;
            await ctx.Response.Body.WriteAsync(json, ctx.RequestAborted).ConfigureAwait(false);
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

    /// <summary>A piece an event, choice after choice; each choice's finish in an event of its own; the usage last when asked.</summary>
    private async Task CompletionStreamAsync(HttpContext ctx, FaultPlan plan, ChatCompletionRequest request, List<(string[] Pieces, string Finish)> choices, bool logprobs, string id, long created, TokenUsage usage)
    {
        StartSse(ctx);
        ChatCompletionChunk Chunk(int index, string text, string? finish, JsonElement? probs) => new()
        {
            Id = id,
            Created = created,
            Model = request.Model,
            Choices = [new ChunkChoice { Index = index, Delta = new ChatCompletionDelta { Content = text }, FinishReason = finish, Logprobs = probs }],
        };

        var events = new List<byte[]>();
        for (var i = 0; i < choices.Count; i++)
        {
            var offset = 0;
            foreach (var piece in choices[i].Pieces)
            {
                events.Add(TextCompletions.WriteEvent(Chunk(i, piece, null, logprobs ? Logprobs([piece], offset) : null), null)!);
                offset += piece.Length;
            }

            events.Add(TextCompletions.WriteEvent(Chunk(i, string.Empty, choices[i].Finish, null), null)!);
        }

        if (plan.StreamError is { } streamError)
        {
            await WriteSseAsync(ctx, null, events[0]).ConfigureAwait(false);
            await WriteSseAsync(ctx, null, JsonSerializer.SerializeToUtf8Bytes(new { error = new { message = plan.Message ?? "The server is overloaded.", type = streamError, param = (string?)null, code = (string?)null } })).ConfigureAwait(false);
            return;
        }

        if (request.StreamOptions?.IncludeUsage == true)
        {
            events.Add(TextCompletions.WriteEvent(new ChatCompletionChunk { Id = id, Created = created, Model = request.Model, Choices = [] }, usage)!);
        }

        for (var i = 0; i < events.Count; i++)
        {
            if (await FaultMidStreamAsync(ctx, plan, i).ConfigureAwait(false))
            {
                return;
            }

            await WriteSseAsync(ctx, null, events[i]).ConfigureAwait(false);
        }

        await WriteSseAsync(ctx, null, "[DONE]"u8.ToArray()).ConfigureAwait(false);
    }

    /// <summary>The prompts' texts (token ids as how many there are).</summary>
    private static List<string> Prompts(JsonElement prompt) =>
        prompt.ValueKind == JsonValueKind.String ? [prompt.GetString()!]
        : prompt[0].ValueKind == JsonValueKind.Number ? [$"[{prompt.GetArrayLength()} token ids]"]
        : [.. prompt.EnumerateArray().Select(static p => p.ValueKind == JsonValueKind.String ? p.GetString()! : $"[{p.GetArrayLength()} token ids]")];

    /// <summary>The Completions API's log probabilities of pieces starting at <paramref name="offset"/>: made up, deterministic.</summary>
    private static JsonElement Logprobs(IReadOnlyList<string> pieces, int offset)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("tokens");
            foreach (var piece in pieces)
            {
                w.WriteStringValue(piece);
            }

            w.WriteEndArray();
            w.WriteStartArray("token_logprobs");
            foreach (var piece in pieces)
            {
                w.WriteNumberValue(-(SimulatedText.StableHash(piece) & 1023) / 1024.0);
            }

            w.WriteEndArray();
            w.WriteNull("top_logprobs");
            w.WriteStartArray("text_offset");
            foreach (var piece in pieces)
            {
                w.WriteNumberValue(offset);
                offset += piece.Length;
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
    }

    /// <summary>
    /// The multipart routes — <c>POST /v1/audio/transcriptions</c>, <c>/v1/audio/translations</c>, <c>/v1/images/edits</c>
    /// (and Azure's) — the form read by the gateway's own checks: a transcript made up from the audio
    /// (<see cref="SimulatedTranscripts"/>) in the format asked, or images (<see cref="SimulatedImages"/>), with the chat
    /// route's faults and latency.
    /// </summary>
    private async Task OpenAIFormAsync(HttpContext ctx, OperationKind kind)
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _inFlight);
        try
        {
            if (!await OpenAIKeyAcceptedAsync(ctx).ConfigureAwait(false))
            {
                return;
            }

            ChatCompletionRequest request;
            try
            {
                var form = await ctx.Request.ReadFormAsync(ctx.RequestAborted).ConfigureAwait(false);
                var files = new List<FilePart>();
                foreach (var file in form.Files)
                {
                    using var bytes = new MemoryStream();
                    await file.CopyToAsync(bytes, ctx.RequestAborted).ConfigureAwait(false);
                    files.Add(new FilePart(file.Name, new Upload(bytes.ToArray(), Upload.SafeName(file.FileName), file.ContentType)));
                }

                List<KeyValuePair<string, string>> fields = [.. form.SelectMany(static f => f.Value.Select(v => new KeyValuePair<string, string>(f.Key, v ?? string.Empty)))];
                request = kind == OperationKind.ImageEdit
                    ? Images.EditRequest(fields, files)
                    : Transcriptions.ToRequest(kind, fields, files.FirstOrDefault(static f => f.Field == "file")?.File);
            }
            catch (Exception ex) when (ex is InvalidDataException or InvalidOperationException or IOException && !ctx.RequestAborted.IsCancellationRequested)
            {
                await OpenAIError(ctx, 400, "invalid_request_error", null, $"Could not parse multipart form. ({ex.Message})").ConfigureAwait(false);
                return;
            }
            catch (InvalidRequestException ex)
            {
                await OpenAIError(ctx, 400, "invalid_request_error", null, ex.Message, ex.Param).ConfigureAwait(false);
                return;
            }

            var plan = Plan(ctx);
            if (!await PrepareAsync(ctx, plan, request, anthropic: false).ConfigureAwait(false))
            {
                return;
            }

            if (request.Stream == true && !request.Model.StartsWith("whisper", StringComparison.OrdinalIgnoreCase))
            {
                // gpt-4o-transcribe's stream (whisper-1 ignores stream and answers whole, as OpenAI documents).
                StartSse(ctx);
                var events = SimulatedTranscripts.Events(request.Operation!, request.Model);
                for (var i = 0; i < events.Count; i++)
                {
                    if (await FaultMidStreamAsync(ctx, plan, i).ConfigureAwait(false))
                    {
                        return; // cut (a reset) or ended early without transcript.text.done, as the plan drew
                    }

                    await ctx.Response.Body.WriteAsync("data: "u8.ToArray(), ctx.RequestAborted).ConfigureAwait(false);
                    await ctx.Response.Body.WriteAsync(events[i], ctx.RequestAborted).ConfigureAwait(false);
                    await ctx.Response.Body.WriteAsync("\n\n"u8.ToArray(), ctx.RequestAborted).ConfigureAwait(false);
                    await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
                }

                return;
            }

            byte[] answer;
            string mediaType;
            if (kind == OperationKind.ImageEdit && Images.Streams(request.Operation!))
            {
                // A streamed edit (gpt-image models): its partial images, then the image, as OpenAI's events.
                List<byte[]> events;
                try
                {
                    events = Images.Events(SimulatedImages.Data(request.Operation!, request.Model), request.Operation!, DateTimeOffset.UtcNow.ToUnixTimeSeconds());
                }
                catch (ProviderException ex)
                {
                    await OpenAIError(ctx, 400, "invalid_request_error", null, ex.Message, ex.Param).ConfigureAwait(false);
                    return;
                }

                StartSse(ctx);
                foreach (var e in events)
                {
                    await WriteSseAsync(ctx, null, e).ConfigureAwait(false);
                }

                return;
            }

            if (kind == OperationKind.ImageEdit)
            {
                var images = SimulatedImages.Data(request.Operation!, request.Model);
                answer = Operations.ToJson(new ChatCompletionResponse { Model = request.Model, Created = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Operation = images });
                mediaType = images.MediaType;
            }
            else
            {
                var transcript = SimulatedTranscripts.Answer(request.Operation!, request.Model);
                (answer, mediaType) = (transcript.List.ToArray(), transcript.MediaType);
            }

            SetRateLimitHeaders(ctx);
            ctx.Response.ContentType = mediaType;
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

    /// <summary>Reads a body the gateway's own checks read (<paramref name="read"/>), answering 400 as OpenAI would when it is not one; null then.</summary>
    private static async Task<ChatCompletionRequest?> ReadCheckedAsync(HttpContext ctx, Func<byte[], ChatCompletionRequest> read)
    {
        var body = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(body, ctx.RequestAborted).ConfigureAwait(false);
        try
        {
            return read(body.ToArray());
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            await OpenAIError(ctx, 400, "invalid_request_error", null, $"We could not parse the JSON body of your request. ({ex.Message})").ConfigureAwait(false);
            return null;
        }
        catch (InvalidRequestException ex)
        {
            await OpenAIError(ctx, 400, "invalid_request_error", null, ex.Message, ex.Param).ConfigureAwait(false);
            return null;
        }
    }
}
