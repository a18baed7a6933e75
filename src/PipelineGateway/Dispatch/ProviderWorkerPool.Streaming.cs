using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Dispatch;

/// <summary>A streamed attempt: chunks held until the first content (so a failure before it can still fall back), then passed through.</summary>
internal sealed partial class ProviderWorkerPool
{
    /// <summary>Streams one attempt to the caller; the attempt is recorded when it ends, with its real outcome.</summary>
    private ValueTask StreamAttemptAsync(WorkItem item, Deployment deployment, long started) =>
        new StreamAttempt(this, item, deployment, started).RunAsync();

    /// <summary>
    /// One streamed attempt's state. Its chunks come either from the provider's enumerator (each one the worker's await
    /// resumed for) or, from the HTTP adapters, pushed by the adapter's own read loop (<see cref="ProviderRequest.Sink"/>):
    /// then the worker is not resumed per event — one asynchronous layer fewer on every streamed event, as the SSE
    /// endpoints' <see cref="ChunkFeed"/> (docs/benchmarks.md, "The worker's layer").
    /// </summary>
    private sealed class StreamAttempt(ProviderWorkerPool pool, WorkItem item, Deployment deployment, long started) : IChunkSink
    {
        private readonly System.Threading.Channels.ChannelWriter<ChatCompletionChunk> _writer = item.Chunks!.Writer;
        private readonly Caching.StreamReplay? _replay = item.CacheKey is not null ? new Caching.StreamReplay() : null; // a finished stream is cached whole
        private List<ChatCompletionChunk>? _held;
        private bool _any;
        private TimeSpan _firstToken;
        private bool _storable = true; // false once a chunk says the whole answer cannot be rebuilt from the chunks (Claude's server tools)
        private ChatCompletionChunk? _usageChunk;
        private ChatCompletionChunk? _pendingLast;
        private string? _filledId; // what the upstream left out is filled the same way in every chunk
        private long _filledCreated;
        private bool _handedOver; // chunks handed to the caller since the last burst end
        private int _outputEstimate;
        private (string? Id, long Created, string? Model) _first;

        public async ValueTask RunAsync()
        {
            var services = pool._services!;
            var request = new ProviderRequest(item.Request, deployment.Model) { ChoicesMayStayUnread = _replay is null, Sink = this };
            if (TextCompletions.Refusal(pool.Provider, item.Request, deployment.Model) is { } refusal)
            {
                throw refusal; // a text completion only a native route can serve
            }

            if (item.Request.Operation is { } operation && pool.Provider is not IStreamedOperationProvider)
            {
                // Passed over: another deployment may stream it (when none can, the caller's 400 says why).
                throw operation.Kind == OperationKind.Transcription
                    ? ProviderException.Unsupported("stream", $"The model '{ProviderException.Quoted(item.Request.Model)}' is served by '{pool.Name}', which does not stream transcriptions: ask without 'stream'.")
                    : Operations.NotServed(pool.Name, operation, item.Request.Model);
            }

            var upstream = pool.Provider.StreamAsync(request, item.Token).GetAsyncEnumerator(item.Token);
            await using (upstream.ConfigureAwait(false))
            {
                while (true)
                {
                    var next = upstream.MoveNextAsync();
                    if (!next.IsCompleted)
                    {
                        Waiting();
                    }

                    if (!await next.ConfigureAwait(false))
                    {
                        break;
                    }

                    await TakeAsync(upstream.Current).ConfigureAwait(false);
                }
            }

            if (!_any)
            {
                throw new ProviderException(AttemptOutcome.RetryableError, "The provider ended the stream without any chunk.");
            }

            if (!item.StreamStarted)
            {
                // A whole answer without content (an empty completion): what was held is the answer, its finishing chunk
                // the last (as above: the one to carry the cost, with no closing chunk after it).
                _firstToken = pool._time.GetElapsedTime(started);
                if (_pendingLast is null && _held is [.., { Finishes: true } finishing])
                {
                    _held.RemoveAt(_held.Count - 1);
                    _pendingLast = finishing;
                }

                await pool.ReleaseHeldAsync(item, deployment, _held, null, _firstToken).ConfigureAwait(false);
            }

            // Recorded now that it ended well; its latency is the time to the first token (what LowestLatency ranks).
            pool.Record(item, deployment, new GatewayAttempt(pool.Name, deployment.Model, AttemptOutcome.Success, _firstToken), null);

            // The caller has had the chunks; this whole answer carries the usage and cost for metrics (and the cache).
            var whole = _replay?.ToResponse() ?? new ChatCompletionResponse { Model = deployment.Model, Usage = item.StreamUsage, Operation = Streamed(item.Request) };
            if (whole.Usage is null)
            {
                // The upstream counted nothing (it ignored include_usage): the gateway's estimate, marked as one, is billed
                // and goes out on the finishing chunk (no chunk is added for it), or on a closing chunk of its own.
                whole.Usage = item.StreamUsage = Admission.TokenCounter.EstimateUsage(item.Request, _replay is null ? null : whole, _outputEstimate, deployment.Model, item.PromptTokensIfCounted);
                _pendingLast?.Usage = whole.Usage;
            }

            whole.Gateway = ResponseInfo.Answered(item, deployment, whole.Usage, services.Pricing, pool._time);
            if (_replay is not null && _storable)
            {
                // Only a stream that ended normally is stored; a broken one never reaches here.
                services.Cache.Store(item, whole);
            }

            // The last chunk the caller gets carries the usage and what the request cost (the opening chunk could not):
            // the upstream's usage chunk, else its finishing chunk, else (a stream that ended without either) a closing one.
            if (_usageChunk is not null && _pendingLast is not null)
            {
                await WriteAsync(_writer, _pendingLast, item.Token).ConfigureAwait(false);
                _pendingLast = null;
            }

            var last = _usageChunk ?? _pendingLast ?? new ChatCompletionChunk
            {
                Id = _first.Id ?? whole.Id,
                Created = _first.Created > 0 ? _first.Created : whole.Created,
                Model = string.IsNullOrEmpty(_first.Model) ? whole.Model : _first.Model,
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
            await WriteAsync(_writer, last, item.Token).ConfigureAwait(false);

            item.TryComplete(whole);
            services.Lifecycle.Retire(item);
        }

        /// <summary>The upstream's next event is not buffered: what was handed over is a burst, flushed once (EndBurst never throws).</summary>
        public void Waiting()
        {
            if (_handedOver)
            {
                _handedOver = false;
                item.EndBurst();
            }
        }

        /// <summary>
        /// One chunk. Chunks that carry no content (the role-only opening, an empty delta, usage) are held back until the
        /// first content-bearing one (text, a tool call, a refusal): until then nothing reached the caller and a failure —
        /// an upstream's error event right after its opening, say — can still fall back to another deployment. Completes
        /// at once unless the caller's channel is full.
        /// </summary>
        [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
        public async ValueTask TakeAsync(ChatCompletionChunk upstreamChunk)
        {
            var chunk = ProviderAnswer.Accept(upstreamChunk, pool.Name);
            ProviderAnswer.Fill(chunk, ref _filledId, ref _filledCreated, item, deployment.Model, pool._time);
            if (!_any)
            {
                // What a closing chunk of the gateway's own says it belongs to (the stream's first chunk's words).
                _first = (chunk.Id, chunk.Created, chunk.Model);
            }

            _any = true;
            if (chunk.EstimatedOutputTokens is > 0 and var tokens)
            {
                // What the answer is billed, should the upstream report no usage (or the stream be cut: the request's
                // end reads the item's count, GatewayPipeline.Consumed).
                item.StreamOutputEstimate = _outputEstimate += tokens;
            }

            if (chunk.Usage is { } usage)
            {
                item.StreamUsage = usage;
            }

            _replay?.Add(chunk);
            _storable &= !chunk.Uncacheable;
            if (chunk.Usage is not null && chunk.HasNoChoices)
            {
                // The usage-only chunk (the stream's last): held, to go out last with the request's cost on it.
                _usageChunk = chunk;
                return;
            }

            if (!item.StreamStarted)
            {
                if (!chunk.CarriesContent)
                {
                    (_held ??= new List<ChatCompletionChunk>(2)).Add(chunk);
                    return;
                }

                // From here on the caller has seen output: no fallback can be invisible any more.
                _firstToken = pool._time.GetElapsedTime(started);
                item.TimeToFirstToken = pool._time.GetElapsedTime(item.StartTimestamp);
                pool._services!.Metrics.OnFirstToken(item.TimeToFirstToken.Value);
                if (chunk.Finishes)
                {
                    // The whole answer in one chunk: it is the finishing chunk too, held as every finishing chunk is to
                    // go out last with the request's cost — not sent now and followed by a closing chunk of the gateway's
                    // own, which said the usage a second time (a client adding up usage chunks counted it twice).
                    await pool.ReleaseHeldAsync(item, deployment, _held, null, _firstToken).ConfigureAwait(false);
                    _pendingLast = chunk;
                }
                else
                {
                    await pool.ReleaseHeldAsync(item, deployment, _held, chunk, _firstToken).ConfigureAwait(false);
                    _handedOver = true;
                }

                _held = null;
                return;
            }

            if (_pendingLast is not null)
            {
                await WriteAsync(_writer, _pendingLast, item.Token).ConfigureAwait(false);
                _pendingLast = null;
                _handedOver = true;
            }

            if (chunk.Finishes)
            {
                // The finishing chunk: held until the stream ends (nothing is delayed by it), to carry the cost.
                _pendingLast = chunk;
                return;
            }

            await WriteAsync(_writer, chunk, item.Token).ConfigureAwait(false);
            _handedOver = true;
        }
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
