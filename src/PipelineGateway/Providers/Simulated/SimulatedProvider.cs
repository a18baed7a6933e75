using System.Runtime.CompilerServices;

namespace PipelineGateway.Providers.Simulated;

/// <summary>
/// An in-process provider with a latency distribution and failure rates, deterministic by seed.
/// It powers the default configuration, the demo, tests and benchmarks, so everything runs with no keys.
/// The answer is derived from the request, with token counts of realistic size (about 4 characters a token).
/// </summary>
internal sealed class SimulatedProvider : ILlmProvider, IOperationProvider, IStreamedOperationProvider
{
    private readonly SimulatedProviderOptions _options;
    private readonly TimeProvider _time;
    private long _calls;

    public SimulatedProvider(string name, SimulatedProviderOptions options, TimeProvider? timeProvider = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Name = name;
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _time = timeProvider ?? TimeProvider.System;
    }

    public string Name { get; }

    /// <summary>How many calls reached this provider (whole and streamed).</summary>
    public long Calls => Interlocked.Read(ref _calls);

    public ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        var draw = NextDraw();
        var delay = Latency(draw);
        if (delay <= TimeSpan.Zero)
        {
            cancellationToken.ThrowIfCancellationRequested();
            FailIfDrawn(draw);
            return new ValueTask<ChatCompletionResponse>(BuildResponse(request, draw));
        }

        return CompleteSlowAsync(request, draw, delay, cancellationToken);
    }

    /// <summary>
    /// Embeddings (<see cref="SimulatedEmbeddings"/>), moderations (<see cref="SimulatedModerations"/>) and images
    /// (<see cref="SimulatedImages"/>) with the same latency and failure draws as a chat answer.
    /// </summary>
    public async ValueTask<ChatCompletionResponse> SendAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        var draw = await DrawAsync(cancellationToken).ConfigureAwait(false);
        var operation = request.Request.Operation!;
        if (operation.Kind == OperationKind.Moderations)
        {
            return new ChatCompletionResponse { Model = request.Model, Choices = [], Operation = SimulatedModerations.Results(operation, draw) };
        }

        if (operation.Kind is OperationKind.Transcription or OperationKind.Translation)
        {
            var transcript = SimulatedTranscripts.Answer(operation, request.Model);
            return Operations.ReadAnswer(operation, transcript.List, copy: false, Name, out _) is { Operation: not null } read ? read : throw new InvalidOperationException("The simulated transcript could not be read.");
        }

        if (operation.Kind == OperationKind.Rerank)
        {
            var (ranking, usage) = SimulatedRerank.Answer(operation, request.Model, "rerank-sim" + draw.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
            return new ChatCompletionResponse { Model = request.Model, Choices = [], Usage = usage, Operation = ranking };
        }

        if (operation.Kind == OperationKind.Speech)
        {
            return new ChatCompletionResponse { Model = request.Model, Choices = [], Operation = SimulatedSpeech.Audio(operation) };
        }

        if (operation.Kind is OperationKind.Images or OperationKind.ImageEdit)
        {
            var images = SimulatedImages.Data(operation, request.Model);
            return new ChatCompletionResponse { Model = request.Model, Created = _time.GetUtcNow().ToUnixTimeSeconds(), Choices = [], Usage = SimulatedImages.Usage(images), Operation = images };
        }

        var tokens = SimulatedEmbeddings.PromptTokens(operation);
        return new ChatCompletionResponse
        {
            Object = "list",
            Model = request.Model,
            Choices = [],
            Usage = new TokenUsage { PromptTokens = tokens, TotalTokens = tokens },
            Operation = SimulatedEmbeddings.Data(operation),
        };
    }

    private async ValueTask<ChatCompletionResponse> CompleteSlowAsync(ProviderRequest request, ulong draw, TimeSpan delay, CancellationToken cancellationToken)
    {
        await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
        FailIfDrawn(draw);
        return BuildResponse(request, draw);
    }

    /// <summary>This call's draw, after its latency, failing when the draw says so (a stream's or another API's call).</summary>
    private async ValueTask<ulong> DrawAsync(CancellationToken cancellationToken)
    {
        var draw = NextDraw();
        var delay = Latency(draw);
        if (delay > TimeSpan.Zero)
        {
            await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
        }

        cancellationToken.ThrowIfCancellationRequested();
        FailIfDrawn(draw);
        return draw;
    }

    /// <summary>An operation's events (OpenAI's, made up) read as an upstream's are, <paramref name="perToken"/> apart.</summary>
    private async IAsyncEnumerable<ChatCompletionChunk> PacedAsync(List<byte[]> events, Func<byte[], ChatCompletionChunk> read, TimeSpan perToken, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        for (var i = 0; i < events.Count; i++)
        {
            if (i > 0 && perToken > TimeSpan.Zero)
            {
                await Task.Delay(perToken, _time, cancellationToken).ConfigureAwait(false);
            }

            cancellationToken.ThrowIfCancellationRequested();
            yield return read(events[i]);
        }
    }

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var draw = await DrawAsync(cancellationToken).ConfigureAwait(false);

        var id = "chatcmpl-sim-" + draw.ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
        var created = _time.GetUtcNow().ToUnixTimeSeconds();
        var perToken = TimeSpan.FromMilliseconds(_options.PerTokenDelayMs);
        if (request.Request.Operation is { Kind: OperationKind.Images or OperationKind.ImageEdit } image)
        {
            // A streamed image generation or edit: its partial images, then the image, as OpenAI's events read as an upstream's are.
            await foreach (var chunk in PacedAsync(Images.Events(SimulatedImages.Data(image, request.Model), image, created), e => Images.ReadEvent(e, image, request.Model, created, out _, out _)!, perToken, cancellationToken).ConfigureAwait(false))
            {
                yield return chunk;
            }

            yield break;
        }

        if (request.Request.Operation is { Kind: OperationKind.Speech } speech)
        {
            // Speech: its audio in blocks, as an upstream's body comes, then the close with its usage — or, asked as
            // events, OpenAI's speech.audio.* events read as an upstream's are.
            var audio = SimulatedSpeech.Audio(speech).List;
            if (Speech.AsEvents(speech))
            {
                var events = Speech.Events(audio, Http.RawBodyEvents.BlockBytes, Speech.Characters(speech), audio.Length / 1024);
                await foreach (var chunk in PacedAsync(events, e => Speech.ReadEvent(e, speech, request.Model, created, out _, out _)!, perToken, cancellationToken).ConfigureAwait(false))
                {
                    yield return chunk;
                }

                yield break;
            }
            for (var at = 0; at < audio.Length; at += Http.RawBodyEvents.BlockBytes)
            {
                if (at > 0 && perToken > TimeSpan.Zero)
                {
                    await Task.Delay(perToken, _time, cancellationToken).ConfigureAwait(false);
                }

                cancellationToken.ThrowIfCancellationRequested();
                yield return Speech.Block(audio.Span.Slice(at, Math.Min(Http.RawBodyEvents.BlockBytes, audio.Length - at)), request.Model, created);
            }

            yield return Speech.Finish(speech, request.Model, created);
            yield break;
        }

        if (request.Request.Operation is { } operation)
        {
            // A streamed transcription: the transcript its whole answer has, a word at a time, then the finish with its usage.
            var whole = Transcriptions.AsStreamAnswer(operation, request.Model, SimulatedTranscripts.Answer(operation, request.Model).List.Span, out _)!;
            var words = whole.Choices[0].Message!.Content!.GetText()!.TrimEnd('\n').Split(' ');
            for (var i = 0; i < words.Length; i++)
            {
                if (i > 0 && perToken > TimeSpan.Zero)
                {
                    await Task.Delay(perToken, _time, cancellationToken).ConfigureAwait(false);
                }

                cancellationToken.ThrowIfCancellationRequested();
                yield return new ChatCompletionChunk { Id = id, Created = created, Model = request.Model, Choices = [new ChunkChoice { Delta = Text(i == 0 ? words[i] : " " + words[i], false) }] };
            }

            yield return new ChatCompletionChunk { Id = id, Created = created, Model = request.Model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta(), FinishReason = "stop" }], Usage = whole.Usage };
            yield break;
        }

        var tool = SimulatedTools.WantsTool(request.Request);
        var answers = Answers(request.Request);
        var first = true;
        for (var choice = 0; choice < answers.Length; choice++)
        {
            // One choice after the other (n > 1), each with its index, as OpenAI streams them.
            var words = answers[choice];
            var deltas = tool is not null ? ToolCallDeltas(request.Request, tool, words)
                : SimulatedTools.StructuredContent(request.Request, words) is { } json ? [Text(json[..(json.Length / 2)], true), Text(json[(json.Length / 2)..], false)]
                : words.Select((w, i) => Text(i == 0 ? w : " " + w, i == 0)).ToArray();
            foreach (var delta in deltas)
            {
                if (!first && perToken > TimeSpan.Zero)
                {
                    await Task.Delay(perToken, _time, cancellationToken).ConfigureAwait(false);
                }

                first = false;
                cancellationToken.ThrowIfCancellationRequested();
                var logprobs = delta.Content is { } text ? SimulatedText.Logprobs(request.Request, [text]) : null;
                yield return new ChatCompletionChunk { Id = id, Created = created, Model = request.Model, Choices = [new ChunkChoice { Index = choice, Delta = delta, Logprobs = logprobs }] };
            }

            yield return new ChatCompletionChunk
            {
                Id = id,
                Created = created,
                Model = request.Model,
                Choices = [new ChunkChoice { Index = choice, Delta = new ChatCompletionDelta(), FinishReason = SimulatedText.Finish(request.Request, _options.CompletionWords, tool, SimulatedTools.StructuredContent(request.Request, words) is not null) }],
                Usage = choice == answers.Length - 1 ? Usage(request.Request, answers) : null,
            };
        }
    }

    /// <summary>The answer's words for each choice asked for (<c>n</c>): the first as for one, the others from seeds of their own.</summary>
    private string[][] Answers(ChatCompletionRequest request)
    {
        var answers = new string[Math.Max(1, request.N ?? 1)][];
        for (var i = 0; i < answers.Length; i++)
        {
            answers[i] = SimulatedText.Answer(request, _options.Seed + i, _options.CompletionWords);
        }

        return answers;
    }

    private static ChatCompletionDelta Text(string text, bool first) => new() { Role = first ? ChatRoles.Assistant : null, Content = text };

    /// <summary>The answer's tokens as it streams them: its words (after the first, each with its space), or a JSON answer's two halves.</summary>
    internal static string[] Pieces(string content, string[] words) =>
        content == string.Join(' ', words) ? words.Select((w, i) => i == 0 ? w : " " + w).ToArray() : [content[..(content.Length / 2)], content[(content.Length / 2)..]];

    /// <summary>A streamed tool call as OpenAI sends one: the name first, then the arguments in two fragments.</summary>
    private static ChatCompletionDelta[] ToolCallDeltas(ChatCompletionRequest request, string tool, string[] words)
    {
        var args = SimulatedTools.ToolArguments(request, tool, words);
        var half = args.Length / 2;
        return
        [
            new() { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Index = 0, Id = ToolCallId, Type = "function", Function = new FunctionCall { Name = tool, Arguments = string.Empty } }] },
            new() { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = args[..half] } }] },
            new() { ToolCalls = [new ToolCall { Index = 0, Function = new FunctionCall { Arguments = args[half..] } }] },
        ];
    }

    private const string ToolCallId = "call_sim1";

    private ulong NextDraw() => Mix((ulong)_options.Seed, (ulong)Interlocked.Increment(ref _calls));

    private TimeSpan Latency(ulong draw)
    {
        if (_options.LatencyMs <= 0 && _options.JitterMs <= 0)
        {
            return TimeSpan.Zero;
        }

        var jitter = _options.JitterMs * ((Unit(Mix(draw, 0x5851F42D4C957F2D)) * 2) - 1);
        return TimeSpan.FromMilliseconds(Math.Max(0, _options.LatencyMs + jitter));
    }

    private void FailIfDrawn(ulong draw)
    {
        var roll = Unit(Mix(draw, 0x9E3779B97F4A7C15));
        if (roll < _options.FailureRate)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, $"Simulated provider '{Name}' failed (503 service unavailable).", 503);
        }

        if (roll < _options.FailureRate + _options.RateLimitRate)
        {
            throw new ProviderException(AttemptOutcome.RateLimited, $"Simulated provider '{Name}' is rate limited (429).", 429, TimeSpan.FromMilliseconds(_options.RetryAfterMs));
        }
    }

    private ChatCompletionResponse BuildResponse(ProviderRequest request, ulong draw)
    {
        var tool = SimulatedTools.WantsTool(request.Request);
        var answers = Answers(request.Request);
        var choices = new List<ChatChoice>(answers.Length);
        for (var i = 0; i < answers.Length; i++)
        {
            var words = answers[i];
            var message = tool is not null
                ? new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [new ToolCall { Id = ToolCallId, Type = "function", Function = new FunctionCall { Name = tool, Arguments = SimulatedTools.ToolArguments(request.Request, tool, words) } }] }
                : new ChatCompletionMessage { Role = ChatRoles.Assistant, Content = SimulatedTools.StructuredContent(request.Request, words) ?? string.Join(' ', words) };
            choices.Add(new ChatChoice
            {
                Index = i,
                Message = message,
                FinishReason = SimulatedText.Finish(request.Request, _options.CompletionWords, tool, tool is null && message.Content!.GetText() != string.Join(' ', words)),
                Logprobs = tool is null ? SimulatedText.Logprobs(request.Request, Pieces(message.Content!.GetText(), words)) : null,
            });
        }

        return new ChatCompletionResponse
        {
            Id = "chatcmpl-sim-" + draw.ToString("x16", System.Globalization.CultureInfo.InvariantCulture), // this call's own draw: unique per call
            Created = _time.GetUtcNow().ToUnixTimeSeconds(),
            Model = request.Model,
            Choices = choices,
            Usage = Usage(request.Request, answers),
        };
    }

    private static TokenUsage Usage(ChatCompletionRequest request, string[][] answers) =>
        TokenUsage.Of(SimulatedText.PromptTokens(request), answers.Sum(a => a.Length));

    private static double Unit(ulong x) => (x >> 11) * (1.0 / (1UL << 53));

    // SplitMix64 finalizer: cheap, stateless, good enough to spread seeds and counters.
    internal static ulong Mix(ulong a, ulong b)
    {
        var z = a + (b * 0x9E3779B97F4A7C15) + 0x9E3779B97F4A7C15;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return z ^ (z >> 31);
    }
}
