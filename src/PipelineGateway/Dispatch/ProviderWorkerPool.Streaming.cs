using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Dispatch;

/// <summary>A streamed attempt: chunks held until the first content (so a failure before it can still fall back), then passed through.</summary>
internal sealed partial class ProviderWorkerPool
{
    /// <summary>
    /// Streams one attempt to the caller. Chunks that carry no content (the role-only opening, an empty delta, usage)
    /// are held back until the first content-bearing one (text, a tool call, a refusal): until then nothing reached the
    /// caller and a failure — an upstream's error event right after its opening, say — can still fall back to another
    /// deployment. The attempt is recorded when it ends, with its real outcome.
    /// </summary>
    private async ValueTask StreamAttemptAsync(WorkItem item, Deployment deployment, long started)
    {
        var services = _services!;
        var writer = item.Chunks!.Writer;
        List<ChatCompletionChunk>? held = null;
        var any = false;
        var firstToken = TimeSpan.Zero;
        var replay = item.CacheKey is not null ? new Caching.StreamReplay() : null; // a finished stream is cached whole
        var storable = true; // false once a chunk says the whole answer cannot be rebuilt from the chunks (Claude's server tools)
        ChatCompletionChunk? usageChunk = null;
        ChatCompletionChunk? pendingLast = null;
        string? filledId = null; // what the upstream left out is filled the same way in every chunk
        long filledCreated = 0;
        var handedOver = false; // chunks handed to the caller since the last burst end
        var outputEstimate = 0;
        StreamToolCalls? toolCalls = null; // made at the first tool call: indexes given, the finishing reason said
        (string? Id, long Created, string? Model) first = default;
        var request = new ProviderRequest(item.Request, deployment.Model) { ChoicesMayStayUnread = replay is null };
        if (TextCompletions.Refusal(Provider, item.Request, deployment.Model) is { } refusal)
        {
            throw refusal; // a text completion only a native route can serve
        }

        if (item.Request.Operation is { } operation && Provider is not IStreamedOperationProvider)
        {
            // Passed over: another deployment may stream it (when none can, the caller's 400 says why).
            throw operation.Kind == OperationKind.Transcription
                ? ProviderException.Unsupported("stream", $"The model '{ProviderException.Quoted(item.Request.Model)}' is served by '{Name}', which does not stream transcriptions: ask without 'stream'.")
                : Operations.NotServed(Name, operation, item.Request.Model);
        }

        var upstream = Provider.StreamAsync(request, item.Token).GetAsyncEnumerator(item.Token);
        await using var upstreamDisposal = upstream.ConfigureAwait(false);
        while (true)
        {
            var next = upstream.MoveNextAsync();
            if (handedOver && !next.IsCompleted)
            {
                // The next event is not buffered yet: what was handed over is a burst, flushed once (EndBurst never throws).
                handedOver = false;
                item.EndBurst();
            }

            if (!await next.ConfigureAwait(false))
            {
                break;
            }

            var chunk = ProviderAnswer.Accept(upstream.Current, Name);
            ProviderAnswer.Fill(chunk, ref filledId, ref filledCreated, item, deployment.Model, _time);
            if (toolCalls is not null || !chunk.ChoicesUnread)
            {
                StreamToolCalls.Normalize(ref toolCalls, chunk); // a skimmed chunk of a stream without tool calls: nothing to do
            }

            if (!any)
            {
                // What a closing chunk of the gateway's own says it belongs to (the stream's first chunk's words).
                first = (chunk.Id, chunk.Created, chunk.Model);
            }

            any = true;
            if (chunk.EstimatedOutputTokens is > 0 and var tokens)
            {
                // What the answer is billed, should the upstream report no usage (or the stream be cut: the request's
                // end reads the item's count, GatewayPipeline.Consumed).
                item.StreamOutputEstimate = outputEstimate += tokens;
            }

            if (chunk.Usage is { } usage)
            {
                item.StreamUsage = usage;
            }

            replay?.Add(chunk);
            storable &= !chunk.Uncacheable;
            if (chunk.Usage is not null && chunk.HasNoChoices)
            {
                // The usage-only chunk (the stream's last): held, to go out last with the request's cost on it.
                usageChunk = chunk;
                continue;
            }

            if (!item.StreamStarted)
            {
                if (!chunk.CarriesContent)
                {
                    (held ??= new List<ChatCompletionChunk>(2)).Add(chunk);
                    continue;
                }

                // From here on the caller has seen output: no fallback can be invisible any more.
                firstToken = _time.GetElapsedTime(started);
                item.TimeToFirstToken = _time.GetElapsedTime(item.StartTimestamp);
                services.Metrics.OnFirstToken(item.TimeToFirstToken.Value);
                if (chunk.Finishes)
                {
                    // The whole answer in one chunk: it is the finishing chunk too, held as every finishing chunk is to
                    // go out last with the request's cost — not sent now and followed by a closing chunk of the gateway's
                    // own, which said the usage a second time (a client adding up usage chunks counted it twice).
                    await ReleaseHeldAsync(item, deployment, held, null, firstToken).ConfigureAwait(false);
                    pendingLast = chunk;
                }
                else
                {
                    await ReleaseHeldAsync(item, deployment, held, chunk, firstToken).ConfigureAwait(false);
                    handedOver = true;
                }

                held = null;
                continue;
            }

            if (pendingLast is not null)
            {
                await WriteAsync(writer, pendingLast, item.Token).ConfigureAwait(false);
                pendingLast = null;
                handedOver = true;
            }

            if (chunk.Finishes)
            {
                // The finishing chunk: held until the stream ends (nothing is delayed by it), to carry the cost.
                pendingLast = chunk;
                continue;
            }

            await WriteAsync(writer, chunk, item.Token).ConfigureAwait(false);
            handedOver = true;
        }

        if (!any)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, "The provider ended the stream without any chunk.");
        }

        if (!item.StreamStarted)
        {
            // A whole answer without content (an empty completion): what was held is the answer, its finishing chunk
            // the last (as above: the one to carry the cost, with no closing chunk after it).
            firstToken = _time.GetElapsedTime(started);
            if (pendingLast is null && held is [.., { Finishes: true } finishing])
            {
                held.RemoveAt(held.Count - 1);
                pendingLast = finishing;
            }

            await ReleaseHeldAsync(item, deployment, held, null, firstToken).ConfigureAwait(false);
        }

        // Recorded now that it ended well; its latency is the time to the first token (what LowestLatency ranks).
        Record(item, deployment, new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, firstToken), null);

        // The caller has had the chunks; this whole answer carries the usage and cost for metrics (and the cache).
        var whole = replay?.ToResponse() ?? new ChatCompletionResponse { Model = deployment.Model, Usage = item.StreamUsage, Operation = Streamed(item.Request) };
        if (whole.Usage is null)
        {
            // The upstream counted nothing (it ignored include_usage): the gateway's estimate, marked as one, is billed
            // and goes out on the finishing chunk (no chunk is added for it), or on a closing chunk of its own.
            whole.Usage = item.StreamUsage = Admission.TokenCounter.EstimateUsage(item.Request, replay is null ? null : whole, outputEstimate, deployment.Model, item.PromptTokensIfCounted);
            pendingLast?.Usage = whole.Usage;
        }

        whole.Gateway = ResponseInfo.Answered(item, deployment, whole.Usage, services.Pricing, _time);
        if (replay is not null && storable)
        {
            // Only a stream that ended normally is stored; a broken one never reaches here.
            services.Cache.Store(item, whole);
        }

        // The last chunk the caller gets carries the usage and what the request cost (the opening chunk could not):
        // the upstream's usage chunk, else its finishing chunk, else (a stream that ended without either) a closing one.
        if (usageChunk is not null && pendingLast is not null)
        {
            await WriteAsync(writer, pendingLast, item.Token).ConfigureAwait(false);
            pendingLast = null;
        }

        var last = usageChunk ?? pendingLast ?? new ChatCompletionChunk
        {
            Id = first.Id ?? whole.Id,
            Created = first.Created > 0 ? first.Created : whole.Created,
            Model = string.IsNullOrEmpty(first.Model) ? whole.Model : first.Model,
            Choices = [],
            Usage = whole.Usage,
        };
        if (last.Usage is null && item.Request.Operation is null)
        {
            // The upstream said its usage on a chunk before the last (in the middle of the stream): the last says it, with
            // the cost. A chat chunk only: an operation's event is its upstream's bytes (audio, an image's or a
            // transcript's event), which must go out as they came — and it says its usage on its last event anyway.
            last.Usage = whole.Usage;
            last.DropEventJson();
        }

        last.Gateway = whole.Gateway;
        await WriteAsync(writer, last, item.Token).ConfigureAwait(false);

        item.TryComplete(whole);
        services.Lifecycle.Retire(item);
    }

    /// <summary>
    /// The stream starts for the caller: the held chunks, then <paramref name="first"/>. The opening chunk carries the
    /// gateway's info, listing the attempts so far and this one as answering (its final outcome is recorded at the end).
    /// </summary>
    private async ValueTask ReleaseHeldAsync(WorkItem item, Deployment deployment, List<ChatCompletionChunk>? held, ChatCompletionChunk? first, TimeSpan firstToken)
    {
        item.StartStream(deployment);
        var writer = item.Chunks!.Writer;
        if ((held is { Count: > 0 } ? held[0] : first) is { } opening)
        {
            // Speech's cost is known before its audio (its characters): the opening says it, the headers can carry it.
            // (An opening that is the whole answer — an image stream's one completed event, a one-chunk completion — is
            // not released here: it goes out last, as every finishing chunk, with the request's cost.)
            var known = item.Request.Operation is { Kind: OperationKind.Speech } speech ? Speech.Usage(speech) : null;
            opening.Gateway = ResponseInfo.Answered(item, deployment, known, _services!.Pricing, _time, [.. item.SnapshotAttempts(), new GatewayAttempt(Name, deployment.Model, AttemptOutcome.Success, firstToken)]);
        }

        foreach (var chunk in held ?? [])
        {
            if (!writer.TryWrite(chunk))
            {
                await writer.WriteAsync(chunk, item.Token).ConfigureAwait(false);
            }
        }

        if (first is not null && !writer.TryWrite(first))
        {
            await writer.WriteAsync(first, item.Token).ConfigureAwait(false);
        }
    }

    /// <summary>What a streamed operation's whole answer says of it (its kind and media type, no bytes: they went out as they came); null for chat.</summary>
    private static OperationAnswer? Streamed(ChatCompletionRequest request) => request.Operation is not { } operation ? null
        : new OperationAnswer(operation.Kind, ReadOnlyMemory<byte>.Empty, 1) { MediaType = operation.Kind == OperationKind.Speech ? Speech.MediaType(Speech.Format(operation.Body)) : "text/event-stream" };

    private static ValueTask WriteAsync(System.Threading.Channels.ChannelWriter<ChatCompletionChunk> writer, ChatCompletionChunk chunk, CancellationToken token) =>
        writer.TryWrite(chunk) ? ValueTask.CompletedTask : writer.WriteAsync(chunk, token);

}
