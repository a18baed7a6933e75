using System.Collections.Concurrent;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// OpenAI's background responses (<c>POST /v1/responses</c> with <c>background: true</c>): the request is answered at
/// once with the response <c>queued</c>, then made apart from any connection — through the same pipeline, waiting for
/// room as a batch does rather than being shed, streamed from the upstream whatever the caller asked (so its progress is
/// known: <c>in_progress</c> at the first chunk, and a long answer is bounded by the stream's idle timeout, not the whole
/// answer's) — its state kept in <see cref="ResponsesStore"/> as it changes: <c>queued</c>, <c>in_progress</c>, then
/// <c>completed</c>/<c>incomplete</c> (continued with <c>previous_response_id</c> like any stored response),
/// <c>failed</c> (with the error its answer would have had) or <c>cancelled</c>. While it runs its events are kept in
/// order (their index is their <c>sequence_number</c>), so any number of callers may stream it — the creating request
/// with <c>stream: true</c>, <c>GET /v1/responses/{id}?stream=true&amp;starting_after=N</c> to resume, for a while after it
/// ended too (<see cref="ReplayWindow"/>) — and a caller going away cancels nothing; <c>POST /v1/responses/{id}/cancel</c> does. Runs are this instance's (the store may be Redis:
/// docs/server.md says what a fleet sees).
/// </summary>
internal sealed partial class BackgroundResponses(IGatewayQueue queue, ResponsesStore store, ServerOptions options, TimeProvider time, ILogger<BackgroundResponses> logger) : IHostedService
{
    /// <summary>How often a run looks for a cancel asked of another instance (a fleet sharing the store in Redis).</summary>
    internal static readonly TimeSpan CancelPoll = TimeSpan.FromSeconds(1);

    /// <summary>
    /// A run's lease in a fleet's shared store: renewed every <see cref="LeaseRenewal"/> while it runs, so a run whose
    /// instance stopped without ending it (killed) is known as such within this (<see cref="LeaseLapsed"/>).
    /// </summary>
    internal static readonly TimeSpan Lease = TimeSpan.FromSeconds(30);

    internal static readonly TimeSpan LeaseRenewal = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How often a run in a fleet shares its new events through the store, and a stream of it asked of another instance
    /// looks for them (<see cref="ResponsesStore.ShareEventsAsync"/>).
    /// </summary>
    internal static readonly TimeSpan SharePoll = TimeSpan.FromMilliseconds(500);

    /// <summary>How long each batch of shared events is kept in the fleet's store (from when it was written; not longer than the response itself).</summary>
    internal static readonly TimeSpan SharedEventsKept = TimeSpan.FromHours(1);

    /// <summary>
    /// How long a run's lease must have stayed missing — seen missing, and still missing this much later — before it is
    /// settled as left by a stopped instance: a renewal period and some, so a run whose instance lost Redis longer than the
    /// lease (a partition) renews it first.
    /// </summary>
    internal static readonly TimeSpan LeaseGrace = TimeSpan.FromSeconds(15);

    /// <summary>What a run left by a stopped instance is kept as: failed, with this.</summary>
    internal const string LeaseLapsed = "The gateway instance making this background response stopped before it was done; send it again.";

    private readonly ConcurrentDictionary<(string Scope, string Id), Run> _runs = new();
    internal static readonly byte[] KeepAlive = ": keep-alive\n\n"u8.ToArray();
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<string, int> _perKey = new(StringComparer.Ordinal);
    private int _count;

    /// <summary>Background responses queued or in progress here.</summary>
    public int Running => Volatile.Read(ref _count);

    /// <summary>One background response being made: its events so far, and what cancels it.</summary>
    internal sealed class Run
    {
        private readonly Lock _gate = new();
        private readonly List<(string Name, byte[] Json)> _events = [];
        private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private bool _ended;
        private long _bytes;

        public CancellationTokenSource Cancel { get; } = new();

        /// <summary>What its events hold.</summary>
        public long Bytes => Interlocked.Read(ref _bytes);

        /// <summary>The run's task: never faults (every end is a state kept in the store).</summary>
        public Task Completion { get; set; } = Task.CompletedTask;

        public void Append(IEnumerable<(string Name, byte[] Json)> events)
        {
            TaskCompletionSource changed;
            lock (_gate)
            {
                var before = _events.Count;
                _events.AddRange(events);
                if (_events.Count == before)
                {
                    return;
                }

                var bytes = 0L;
                for (var i = before; i < _events.Count; i++)
                {
                    bytes += _events[i].Json.Length + 64; // and the list's slot, the tuple, the array's header
                }

                Interlocked.Add(ref _bytes, bytes);

                changed = _changed;
                _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            changed.TrySetResult();
        }

        public void End()
        {
            TaskCompletionSource changed;
            lock (_gate)
            {
                _ended = true;
                changed = _changed;
            }

            changed.TrySetResult();
        }

        /// <summary>The events from sequence number <paramref name="from"/> on, whether the run has ended, and what completes at its next change.</summary>
        public (List<(string Name, byte[] Json)> Events, bool Ended, Task Changed) Read(int from)
        {
            lock (_gate)
            {
                var start = Math.Clamp(from, 0, _events.Count);
                return (_events.GetRange(start, _events.Count - start), _ended, _changed.Task);
            }
        }
    }

    /// <summary>
    /// How long a run's events are kept once it ended, for a caller resuming its stream (within
    /// <see cref="ReplayBytes"/> for all ended runs together; the oldest leave first). After that a stream of it is the
    /// one event that ended it.
    /// </summary>
    internal static readonly TimeSpan ReplayWindow = TimeSpan.FromMinutes(5);

    /// <summary>What the events of ended runs kept for <see cref="ReplayWindow"/> may add up to.</summary>
    internal const long ReplayBytes = 16L * 1024 * 1024;

    private readonly Queue<(DateTimeOffset Ended, (string, string) Key, Run Run)> _ended = new();
    private long _endedBytes;

    /// <summary>The run of a caller's response, when this instance is making it or made it within <see cref="ReplayWindow"/>.</summary>
    public Run? Find(string scope, string id)
    {
        Forget(time.GetUtcNow());
        return _runs.TryGetValue((scope, id), out var run) ? run : null;
    }

    /// <summary>A run's events forgotten at once (its response deleted).</summary>
    public void Forget(string scope, string id) => _runs.TryRemove((scope, id), out _);

    /// <summary>An ended run kept for its replay; the oldest leave once past the window or the bytes.</summary>
    private void KeepEnded((string, string) key, Run run)
    {
        var now = time.GetUtcNow();
        lock (_ended)
        {
            _ended.Enqueue((now, key, run));
            _endedBytes += run.Bytes;
        }

        Forget(now);
    }

    private void Forget(DateTimeOffset now)
    {
        lock (_ended)
        {
            while (_ended.TryPeek(out var oldest) && (now - oldest.Ended >= ReplayWindow || _endedBytes > ReplayBytes))
            {
                _ended.Dequeue();
                _endedBytes -= oldest.Run.Bytes;
                _runs.TryRemove(new KeyValuePair<(string, string), Run>(oldest.Key, oldest.Run));
            }
        }
    }

    /// <summary>A background response accepted (its queued JSON and its run), or why not: this instance's bound or the key's share of it.</summary>
    public readonly record struct Started(byte[]? Json, Run? Run, bool InstanceFull, bool KeyFull);

    /// <summary>
    /// Accepts a background response: kept as <c>queued</c> (before the caller can ask for it), then made apart from the
    /// request — unless this instance already makes <see cref="ServerOptions.MaxBackgroundResponses"/> of them, or the
    /// caller's key <see cref="ServerOptions.MaxBackgroundResponsesPerKey"/> (one key cannot take every other key's room).
    /// </summary>
    public async Task<Started> StartAsync(string scope, ResponsesCodec.Input input, ResponsesWriter writer)
    {
        if (Interlocked.Increment(ref _count) > options.MaxBackgroundResponses)
        {
            Interlocked.Decrement(ref _count);
            return new Started(null, null, InstanceFull: true, KeyFull: false);
        }

        if (_perKey.AddOrUpdate(scope, 1, static (_, n) => n + 1) > options.MaxBackgroundResponsesPerKey)
        {
            Leave(scope);
            return new Started(null, null, InstanceFull: false, KeyFull: true);
        }

        var run = new Run();
        try
        {
            run.Append(writer.Queued());
            var json = writer.Snapshot("queued");
            if (store.Shared)
            {
                await store.RenewLeaseAsync(scope, writer.Id, Lease).ConfigureAwait(false);
            }

            await store.SaveAsync(scope, writer.Id, json, input.Earlier, input.Items, output: null, writer.LastSequence).ConfigureAwait(false);
            _runs[(scope, writer.Id)] = run;
            run.Completion = Task.Run(() => RunAsync(scope, input, writer, run));
            return new Started(json, run, false, false);
        }
        catch
        {
            Leave(scope);
            throw;
        }
    }

    /// <summary>A run's room given back: the instance's, and its key's (the key's count forgotten at zero).</summary>
    private void Leave(string scope)
    {
        Interlocked.Decrement(ref _count);
        if (_perKey.AddOrUpdate(scope, 0, static (_, n) => n - 1) == 0)
        {
            _perKey.TryRemove(new KeyValuePair<string, int>(scope, 0));
        }
    }

    /// <summary>Cancels a run of this instance and waits for its end (its state is then kept); false when none is running here.</summary>
    public async Task<bool> CancelAsync(string scope, string id, CancellationToken cancellationToken)
    {
        if (Find(scope, id) is not { } run)
        {
            return false;
        }

        await run.Cancel.CancelAsync().ConfigureAwait(false);
        await run.Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        return true;
    }

    private async Task RunAsync(string scope, ResponsesCodec.Input input, ResponsesWriter writer, Run run)
    {
        var request = input.Request;
        request.Stream = true; // whatever the caller asked: its progress is known, and its events can be streamed to anyone
        request.StreamOptions = new StreamOptions { IncludeUsage = true };
        using var either = CancellationTokenSource.CreateLinkedTokenSource(run.Cancel.Token, _stopping.Token);
        var sharing = new Sharing(scope, writer.Id, run);
        var watching = store.Shared ? WatchAsync(sharing, either.Token) : Task.CompletedTask;
        try
        {
            var started = false;
            var calls = ToolCallRecall.Gather(store, scope, request);
            await foreach (var chunk in queue.StreamAsync(request, SubmitMode.Wait, either.Token).ConfigureAwait(false))
            {
                if (ReferenceEquals(chunk, WorkItem.BurstEnd))
                {
                    continue;
                }

                if (!started)
                {
                    // Kept as in progress before anyone sees it said (as each state is).
                    started = true;
                    var opening = writer.Start().ToList();
                    await store.SaveAsync(scope, writer.Id, writer.Snapshot("in_progress"), input.Earlier, input.Items, output: null, writer.LastSequence).ConfigureAwait(false);
                    run.Append(opening);
                }

                calls?.Add(chunk);
                run.Append(writer.OnChunk(chunk));
            }

            if (calls is not null)
            {
                await calls.RememberAsync().ConfigureAwait(false);
            }

            var closing = (started ? writer.Finish() : writer.Start().Concat(writer.Finish())).ToList();
            await writer.FinishedAsync().ConfigureAwait(false); // kept as done before anyone sees its last event
            closing.AddRange(writer.Last());
            run.Append(closing);
        }
        catch (OperationCanceledException) when (run.Cancel.IsCancellationRequested)
        {
            await store.SaveAsync(scope, writer.Id, writer.Snapshot("cancelled"), input.Earlier, input.Items, output: null, writer.LastSequence).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            var error = _stopping.IsCancellationRequested && ex is OperationCanceledException
                ? new GatewayUnavailableException("The gateway stopped before this background response was done; send it again.")
                : ex;
            if (error is not GatewayException and not OperationCanceledException)
            {
                LogFailed(logger, writer.Id, ex);
            }

            var (json, failed) = writer.Failed(error);
            await store.SaveAsync(scope, writer.Id, json, input.Earlier, input.Items, output: null, writer.LastSequence).ConfigureAwait(false);
            run.Append([failed]);
        }
        finally
        {
            await either.CancelAsync().ConfigureAwait(false); // the watch ends with the run
            await watching.ConfigureAwait(false);
            if (store.Shared)
            {
                await ShareAsync(sharing).ConfigureAwait(false); // its last events, the one that ended it among them
            }

            run.End();
            KeepEnded((scope, writer.Id), run); // its events, for a caller resuming after its end
            Leave(scope);
        }
    }

    /// <summary>A run's events shared with a fleet so far: how many, and the next batch's number.</summary>
    private sealed class Sharing(string scope, string id, Run run)
    {
        public string Scope { get; } = scope;

        public string Id { get; } = id;

        public Run Run { get; } = run;

        public int Shared { get; set; }

        public int Batch { get; set; }
    }

    /// <summary>Shares the run's events not yet shared, as the next batch (kept for the next turn when the store cannot be written).</summary>
    private async Task ShareAsync(Sharing sharing)
    {
        var (events, _, _) = sharing.Run.Read(sharing.Shared);
        if (events.Count > 0 && await store.ShareEventsAsync(sharing.Scope, sharing.Id, sharing.Batch, sharing.Shared, events, (SharedEventsKept < options.StoredResponsesTtl ? SharedEventsKept : options.StoredResponsesTtl)).ConfigureAwait(false))
        {
            sharing.Shared += events.Count;
            sharing.Batch++;
        }
    }

    /// <summary>
    /// A run's watch in a fleet: its new events shared every <see cref="SharePoll"/>, its lease renewed every
    /// <see cref="LeaseRenewal"/>, and a cancel asked of another instance looked for every <see cref="CancelPoll"/>, until
    /// the run ends.
    /// </summary>
    private async Task WatchAsync(Sharing sharing, CancellationToken ended)
    {
        try
        {
            var renewed = time.GetUtcNow();
            var looked = renewed;
            while (true)
            {
                await Task.Delay(SharePoll, time, ended).ConfigureAwait(false);
                await ShareAsync(sharing).ConfigureAwait(false);
                var now = time.GetUtcNow();
                if (now - renewed >= LeaseRenewal)
                {
                    renewed = now;
                    await store.RenewLeaseAsync(sharing.Scope, sharing.Id, Lease).ConfigureAwait(false);
                    await store.LeaseSeenAsync(sharing.Scope, sharing.Id).ConfigureAwait(false); // a partition's sighting forgotten
                }

                if (now - looked >= CancelPoll)
                {
                    looked = now;
                    if (await store.CancelRequestedAsync(sharing.Scope, sharing.Id, ended).ConfigureAwait(false))
                    {
                        await sharing.Run.Cancel.CancelAsync().ConfigureAwait(false);
                        return;
                    }
                }
            }
        }
        catch (OperationCanceledException) when (ended.IsCancellationRequested)
        {
            // The run ended.
        }
    }

    /// <summary>
    /// Writes a run's events after <paramref name="after"/> as server-sent events, then each as it comes, until the run
    /// ends or the caller goes away (which leaves the run going); a keep-alive comment while nothing comes.
    /// </summary>
    public async Task StreamAsync(HttpContext ctx, Run run, int after, TimeProvider time)
    {
        var aborted = ctx.RequestAborted;
        StartStream(ctx);
        var next = after + 1;
        try
        {
            while (true)
            {
                var (events, ended, changed) = run.Read(next);
                foreach (var e in events)
                {
                    Providers.Anthropic.AnthropicStreamWriter.Write(ctx.Response.BodyWriter, e);
                }

                next += events.Count;
                await ctx.Response.BodyWriter.FlushAsync(aborted);
                if (ended)
                {
                    return;
                }

                try
                {
                    await changed.WaitAsync(options.StreamKeepAlive, time, aborted);
                }
                catch (TimeoutException)
                {
                    await ctx.Response.BodyWriter.WriteAsync(KeepAlive, aborted);
                }
            }
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            // The caller went away: the response goes on being made.
        }
    }

    /// <summary>A stream's headers (server-sent events, not to be buffered on the way).</summary>
    public static void StartStream(HttpContext ctx)
    {
        if (!ctx.Response.HasStarted)
        {
            ctx.Response.ContentType = "text/event-stream";
            ctx.Response.Headers.CacheControl = "no-cache";
            ctx.Response.Headers["x-accel-buffering"] = "no";
        }
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>
    /// At shutdown (after the pipeline drained: runs in flight had its grace period): waits for the runs still going, and
    /// when the host's own time is up ends them as failed ("send it again") — each state kept.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        var runs = _runs.Values.Select(static r => r.Completion).ToArray();
        try
        {
            await Task.WhenAll(runs).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            await _stopping.CancelAsync().ConfigureAwait(false);
            try
            {
                await Task.WhenAll(runs).WaitAsync(TimeSpan.FromSeconds(5), CancellationToken.None).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // A store write that hangs (Redis gone): the process stops regardless.
            }
        }
    }

    [LoggerMessage(EventId = 131, Level = LogLevel.Error, Message = "The background response {ResponseId} failed unexpectedly.")]
    private static partial void LogFailed(ILogger logger, string responseId, Exception error);
}
