using System.Threading.Channels;
using System.Threading.Tasks.Sources;
using PipelineGateway.Routing;

namespace PipelineGateway.Pipeline;

/// <summary>
/// One request on its way through the pipeline. Exactly one stage owns it at a time (the one that read
/// it from its channel). Two lifetimes are kept apart on purpose:
/// <list type="bullet">
/// <item><b>Completion</b> answers the caller, exactly once (<see cref="TryComplete"/>, <see cref="TryFail"/>);
/// it may happen on any thread (a cancelled caller, a passed deadline, shutdown) while a stage still holds the item.</item>
/// <item><b>Retirement</b> is the owning stage letting go of the item; only then is its in-flight slot
/// returned, so the number of items inside the pipeline never exceeds <c>MaxInFlight</c> — the bound
/// the deadlock-freedom argument rests on (docs/architecture.md).</item>
/// </list>
/// The caller awaits the item itself (<see cref="Response"/>, an <see cref="IValueTaskSource{TResult}"/>): no task
/// completion source and no task are allocated per request, and each completion chooses whether the caller's
/// continuation runs on the completing thread (see <see cref="TryComplete"/>).
/// </summary>
internal sealed partial class WorkItem : IValueTaskSource<ChatCompletionResponse>
{
    private ManualResetValueTaskSourceCore<ChatCompletionResponse> _response;
    private CancellationTokenSource _cts = null!;
    private CancellationTokenRegistration _callerRegistration;
    private GatewayAttempt[]? _attempts;
    private int _completed;
    private int _cancelReason;

    public WorkItem(ChatCompletionRequest request, ModelGroup group, bool stream, TimeSpan timeout, Deadlines deadlines, CancellationToken callerToken, GatewayPipeline? observer = null, long sequence = 0, long? submittedTimestamp = null, WorkItemPool? pool = null)
    {
        _pool = pool;
        Initialize(request, group, stream, timeout, deadlines, observer, sequence, submittedTimestamp, callerToken);
    }

    /// <summary>
    /// Sets the item up for a request: a new item, or one back from <see cref="WorkItemPool"/> (whose every field
    /// <see cref="Clear"/> put back as a new item has it; <c>WorkItemPoolTests</c> checks that field by field).
    /// </summary>
    internal void Initialize(ChatCompletionRequest request, ModelGroup group, bool stream, TimeSpan timeout, Deadlines deadlines, GatewayPipeline? observer, long sequence, long? submittedTimestamp, CancellationToken callerToken)
    {
        // The caller (until it has read its answer) and the pipeline (until it lets go of the item) hold it; a stream's
        // item is read by its caller chunk by chunk, a life the pool does not follow: never reused.
        _holds = 2;
        _reusable = !stream && _pool is not null;
        Sequence = sequence;
        Request = request;
        Group = group;
        RootGroup = group;
        Timeout = timeout;
        CallerToken = callerToken;
        var time = deadlines.Time;

        // A caller that waited at admission's door was submitted earlier: its deadline counts from then.
        StartTimestamp = submittedTimestamp ?? time.GetTimestamp();
        var remaining = submittedTimestamp is { } at ? timeout - time.GetElapsedTime(at) : timeout;
        if (remaining <= TimeSpan.Zero)
        {
            remaining = TimeSpan.FromTicks(1);
        }

        Deadline = time.GetUtcNow() + remaining;
        if (stream)
        {
            // Bounded: a slow reader slows the upstream read instead of buffering the whole answer.
            _stream = new StreamState { Chunks = ChunkChannel(synchronousContinuations: false) };
        }

        // Counted before any callback can complete it: a caller token that fires during construction
        // must still be seen ending exactly once.
        observer?.OnCreated(this);

        // One token for everything that can end the request early: the deadline (Deadlines, on the injected
        // TimeProvider), the caller's token and gateway shutdown. It is what the upstream call receives. Each of them
        // goes through Cancel, which then answers the caller: the source needs no timer and no callback of its own.
        _cts ??= new CancellationTokenSource();
        deadlines.Add(this, StartTimestamp + Deadlines.ToTimestampTicks(Timeout, time.TimestampFrequency));
        if (callerToken.CanBeCanceled)
        {
            _callerRegistration = callerToken.UnsafeRegister(static s => ((WorkItem)s!).Cancel(CancelReason.Caller), this);
        }
    }

    public ChatCompletionRequest Request
    {
        get
        {
            Live();
            return field;
        }

        private set;
    } = null!;

    /// <summary>Told exactly once when the item completes (metrics, failure logs).</summary>
    public GatewayPipeline? Observer { get; set; }

    /// <summary>The failure the caller was given, if any (streams read it after the last chunk).</summary>
    public Exception? Failure { get; private set; }

    /// <summary>The group now serving the request (changes along fallback chains).</summary>
    public ModelGroup Group
    {
        get
        {
            Live();
            return field;
        }

        private set;
    } = null!;

    /// <summary>The group the caller's model name resolved to.</summary>
    public ModelGroup RootGroup { get; private set; } = null!;

    public TimeSpan Timeout { get; private set; }

    public DateTimeOffset Deadline { get; private set; }

    public long StartTimestamp { get; private set; }

    public CancellationToken CallerToken { get; private set; }

    /// <summary>Fires on deadline, caller cancellation or shutdown; passed to the upstream call.</summary>
    public CancellationToken Token
    {
        get
        {
            Live();
            return _cts.Token;
        }
    }

    public bool IsStream => _stream is not null;

    /// <summary>A stream's own state, apart so that a non-streamed request (most of them) carries none of it.</summary>
    private StreamState? _stream;

    public Channel<ChatCompletionChunk>? Chunks => _stream?.Chunks;

    /// <summary>
    /// For a reader whose code is the gateway's own short, non-blocking front door (an SSE endpoint writing each chunk
    /// into Kestrel's buffer): chunks are handed to it on the worker's thread as they arrive, saving a thread-pool
    /// hand-off per chunk (issue 21's streaming mode). Called before the item enters the pipeline; a failure still
    /// reaches the reader on the thread pool (see <see cref="TryFail"/>). Library callers never get this.
    /// </summary>
    internal void DeliverChunksInline()
    {
        if (_stream is not null && !IsCompleted)
        {
            _stream.Chunks = ChunkChannel(synchronousContinuations: true);
            _stream.ChunksInline = true;
        }
    }

    /// <summary>
    /// Handed to an inline reader (the SSE endpoints) where a burst of chunks ends — the provider's next event is not
    /// already buffered, so the worker is about to wait for the upstream: the endpoint flushes there, once per burst,
    /// instead of once per chunk (measured: Kestrel's socket writes 3.6 → 1.4 per 50-chunk stream from an instant
    /// upstream; CPU per event unchanged, docs/benchmarks.md). Never reaches a library caller.
    /// </summary>
    internal static readonly ChatCompletionChunk BurstEnd = new();

    /// <summary>
    /// The worker is about to wait for the upstream after handing over chunks: an inline reader gets
    /// <see cref="BurstEnd"/> once it has read everything queued. The debt is recorded before the marker (which only
    /// wakes a waiting reader) is offered, so a full channel (the reader behind, not waiting) loses nothing: the reader
    /// pays it when it has caught up (<see cref="TakeFlushOwed"/>).
    /// </summary>
    internal void EndBurst()
    {
        if (_stream is not { ChunksInline: true } stream)
        {
            return;
        }

        Volatile.Write(ref stream.FlushOwed, 1);
        stream.Chunks.Writer.TryWrite(BurstEnd);
    }

    /// <summary>True once per recorded burst end (the reader's side of <see cref="EndBurst"/>).</summary>
    internal bool TakeFlushOwed() => _stream is { } stream && Interlocked.Exchange(ref stream.FlushOwed, 0) == 1;

    // Bounded: a slow reader slows the upstream read instead of buffering the whole answer.
    private static Channel<ChatCompletionChunk> ChunkChannel(bool synchronousContinuations) =>
        Channel.CreateBounded<ChatCompletionChunk>(new BoundedChannelOptions(64)
        {
            SingleReader = true,
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
            AllowSynchronousContinuations = synchronousContinuations,
        });

    /// <summary>Set once the first chunk reached the caller: from then on no fallback is possible.</summary>
    public bool StreamStarted
    {
        get => _stream?.Started ?? false;
        set => StreamOnly.Started = value;
    }

    private StreamState StreamOnly => _stream ?? throw new InvalidOperationException("Only a streamed request has a stream's state.");

    /// <summary>The request's number in this process; <see cref="RequestId"/> is formatted from it on demand.</summary>
    public long Sequence { get; set; }

    public string RequestId => RequestIds.Format(Sequence);

    public bool IsCompleted
    {
        get
        {
            Live();
            return Volatile.Read(ref _completed) != 0;
        }
    }

    /// <summary>The caller's answer (a non-streamed request); awaited once, as every <see cref="ValueTask{TResult}"/> is.</summary>
    public ValueTask<ChatCompletionResponse> Response => new(this, _response.Version);

    /// <summary>
    /// Set by a caller whose continuation is short and never blocks (the HTTP front door writing its answer): a
    /// provider worker's success then runs it on the worker's thread instead of queueing it to the thread pool.
    /// </summary>
    public bool InlineSuccessContinuation { get; set; }

    /// <summary>
    /// Answers the caller, once. The caller's continuation is queued to the thread pool, so no caller code runs on a
    /// stage's thread — except when <paramref name="fromWorker"/> (a provider worker, one of many, holding nothing:
    /// its concurrency permit is already released) and the caller asked for <see cref="InlineSuccessContinuation"/>:
    /// then it runs here, which saves a thread-pool hand-off (a wake-up of another thread) per request.
    /// </summary>
    public bool TryComplete(ChatCompletionResponse response, bool fromWorker = false)
    {
        Live();
        if (Interlocked.Exchange(ref _completed, 1) != 0)
        {
            return false;
        }

        ReleaseRegistrations();
        Observer?.OnCompleted(this, response, null);
        if (Chunks is null)
        {
            _response.RunContinuationsAsynchronously = !(fromWorker && InlineSuccessContinuation);
            _response.SetResult(response);
        }
        else
        {
            Chunks.Writer.TryComplete();
        }

        return true;
    }

    public bool TryFail(Exception error)
    {
        Live();
        if (Interlocked.Exchange(ref _completed, 1) != 0)
        {
            return false;
        }

        ReleaseRegistrations();
        Failure = error;
        Observer?.OnCompleted(this, null, error);
        if (Chunks is null)
        {
            // Failures may come from a stage's loop or a cancellation callback: the caller never runs there.
            _response.RunContinuationsAsynchronously = true;
            _response.SetException(error);
        }
        else
        {
            // The stream reader sees the end of the channel, then rethrows Failure as it is
            // (a channel completed with an OperationCanceledException would lose its type). A reader taking chunks
            // inline is resumed on the thread pool here: failures come from stage loops and cancellation callbacks.
            if (_stream!.ChunksInline)
            {
                ThreadPool.UnsafeQueueUserWorkItem(static c => c.Writer.TryComplete(), Chunks!, preferLocal: false);
            }
            else
            {
                Chunks!.Writer.TryComplete();
            }
        }

        return true;
    }

    /// <summary>Ends the request early: the upstream call (if any) is cancelled and the caller answered.</summary>
    public void Cancel(CancelReason reason)
    {
        // Cancellations come from other threads (a deadline's timer, the caller's token, shutdown), which may still hold
        // the item after its owner let go of it: an item ever cancelled is never reused.
        Live();
        NeverReuse();
        Interlocked.CompareExchange(ref _cancelReason, (int)reason, 0);
        try
        {
            // The upstream call's callbacks run first (as when the token's own timer fired them), then the caller is
            // answered, even if one of those callbacks threw.
            _cts.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Completed and cleaned up concurrently: nothing left to cancel.
        }
        finally
        {
            if (!IsCompleted)
            {
                TryFail(CancellationError());
            }
        }
    }

    /// <summary>Why the token fired (deadline when nothing else said).</summary>
    public CancelReason Reason => (CancelReason)Volatile.Read(ref _cancelReason) is var r && r != CancelReason.None ? r : CancelReason.Deadline;

    /// <summary>The typed failure matching why the request was cancelled.</summary>
    public Exception CancellationError() => Reason switch
    {
        CancelReason.Caller => new RequestCancelledException(SnapshotAttempts(), CallerToken),
        CancelReason.Shutdown => new GatewayUnavailableException("The gateway shut down before the request completed."),
        _ => new DeadlineExceededException(Timeout, SnapshotAttempts()),
    };

    private void ReleaseRegistrations()
    {
        // Unregister without waiting: we may be running inside its callback.
        _callerRegistration.Unregister();
    }

    ChatCompletionResponse IValueTaskSource<ChatCompletionResponse>.GetResult(short token)
    {
        // The caller is done with the item once it has its answer (a ValueTask is awaited once): its hold is released.
        // A stale token (a ValueTask kept past that) throws here, as the core's own check says, before anything else.
        var answered = token == _response.Version && _response.GetStatus(token) != ValueTaskSourceStatus.Pending;
        try
        {
            return _response.GetResult(token);
        }
        finally
        {
            if (answered && Interlocked.Exchange(ref _callerDone, 1) == 0)
            {
                Release();
            }
        }
    }

    ValueTaskSourceStatus IValueTaskSource<ChatCompletionResponse>.GetStatus(short token) => _response.GetStatus(token);

    void IValueTaskSource<ChatCompletionResponse>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _response.OnCompleted(continuation, state, token, flags);

    private ITimer? _retryTimer;

    /// <summary>Runs <paramref name="requeue"/> after <paramref name="delay"/> on the injected clock (a backoff).</summary>
    public void ScheduleRetry(TimeProvider time, TimeSpan delay, Action<WorkItem> requeue)
    {
        NeverReuse(); // a timer's callback holds it
        _retryTimer?.Dispose();
        _retryTimer = time.CreateTimer(
            static s =>
            {
                var (item, action) = ((WorkItem, Action<WorkItem>))s!;
                action(item);
            },
            (this, requeue),
            delay,
            System.Threading.Timeout.InfiniteTimeSpan);
    }

    /// <summary>Called by the owning stage when it lets go of the item for good.</summary>
    public void DisposeResources()
    {
        _retryTimer?.Dispose();
        Deadlines.Remove(this);

        // Waits for a caller-token callback running on another thread: none runs past this point.
        _callerRegistration.Dispose();
        if (!Volatile.Read(ref _reusable))
        {
            _cts.Dispose();
        }
    }
}
