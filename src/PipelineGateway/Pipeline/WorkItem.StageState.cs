using System.Threading.Channels;
using System.Threading.Tasks.Sources;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Pipeline;

/// <summary>What each folder keeps on the request while it holds it (slots and lanes, waiting rooms, charges and reservations, the flight): written by that folder only.</summary>
internal sealed partial class WorkItem
{
    public int Slot
    {
        get;
        set
        {
            Live();
            field = value;
        }
    } = -1;

    /// <summary>The tenant (fairness, rate-limit and budget partition): the request's key, or "" without one.</summary>
    public string TenantKey => Request.Gateway?.RateLimitKey ?? string.Empty;

    public RequestPriority Priority => Request.Gateway?.Priority ?? RequestPriority.Interactive;

    /// <summary>Set while the request is inside admission's waiting room (from acceptance until it holds a slot).</summary>
    public Admission.AdmissionGate.Tenant? GateTenant
    {
        get
        {
            Live();
            return field;
        }

        set;
    }

    /// <summary>The tenant's share of the in-flight slots this request counts in, while it holds a slot.</summary>
    public FairQueue<WorkItem>.Lane? SlotLane
    {
        get
        {
            Live();
            return field;
        }

        set;
    }

    /// <summary>The tenant's lane at the provider queue the request waits in or is served from.</summary>
    public FairQueue<WorkItem>.Lane? QueueLane
    {
        get
        {
            Live();
            return field;
        }

        set;
    }

    /// <summary>Set once the router has seen the request: a slot regained later sends it back to the router, not the cache.</summary>
    public bool Routed
    {
        get
        {
            Live();
            return field;
        }

        set;
    }

    /// <summary>The provider whose freed room this request was unparked for, until it is offered somewhere.</summary>
    public Dispatch.ProviderWorkerPool? ResumedFor { get; set; }

    /// <summary>The waiting room holding the request now, if any (set and cleared under that room's lock).</summary>
    public IWaitingRoom? WaitingIn
    {
        get => Volatile.Read(ref _waitingIn);
        set
        {
            Live();
            Volatile.Write(ref _waitingIn, value);
        }
    }

    private IWaitingRoom? _waitingIn;

    /// <summary>By when (a timestamp) a worker must take it from its provider's queue: the wait it was accepted for.</summary>
    public long TakeBy { get; set; } = long.MaxValue;

    /// <summary>When the request joined its provider's queue (for the queue-wait measurement).</summary>
    public long EnqueuedTimestamp { get; set; }

    /// <summary>Whether the caller waits for room and for rate-limit permits, or is refused at once.</summary>
    public SubmitMode Mode { get; set; }

    /// <summary>What admission charged the rate limits, for correction to actual usage.</summary>
    public Admission.RateLimitCharge? RateLimitCharge { get; set; }

    /// <summary>The charge a distributed rate-limit store took, kept for the correction to actual usage.</summary>
    public Admission.DistributedLimitCharge? DistributedCharge { get; set; }

    /// <summary>Usage reported by a stream's last chunk.</summary>
    public TokenUsage? StreamUsage
    {
        get => _stream?.Usage;
        set => StreamOnly.Usage = value;
    }

    private long _estimatedTokens = -1;
    private int _promptTokens = -1;

    /// <summary>The token estimate if something already counted it (no counting just to ask).</summary>
    public long? EstimatedTokensIfCounted => _estimatedTokens >= 0 ? _estimatedTokens : null;

    /// <summary>
    /// The prompt's tokens as the model's tokenizer counted them (approximated while it loads), if a token limit had them
    /// counted (no counting just to ask): the usage the gateway estimates later counts with the tokenizer only then
    /// (<see cref="Admission.TokenCounter.EstimateUsage"/>).
    /// </summary>
    public int? PromptTokensIfCounted => _promptTokens >= 0 ? _promptTokens : null;

    /// <summary>What admission reserved against budgets, settled with the actual cost.</summary>
    public Cost.BudgetTracker.Reservation? BudgetReservation { get; set; }

    /// <summary>A reservation in a shared budget store, settled with the actual cost.</summary>
    public Cost.BudgetTracker.SharedReservation? SharedBudgetReservation { get; set; }

    /// <summary>
    /// Prompt tokens (counted with the model's tokenizer: <see cref="Routing.ModelGroup.CountingModel"/>; approximated while
    /// it loads, <see cref="Admission.TokenCounter.CountPromptUnlessLoading"/>) plus the completion budget; computed once, on demand.
    /// </summary>
    public long EstimatedTokens
    {
        get
        {
            if (_estimatedTokens < 0)
            {
                var completion = Request.Operation is not null ? 0 : Request.CompletionTokensAsked(Group.ExpectedCompletionTokens); // embeddings, moderations: no completion
                _promptTokens = Admission.TokenCounter.CountPromptUnlessLoading(Request, Group.CountingModel(Request.Model));
                _estimatedTokens = _promptTokens + completion;
            }

            return _estimatedTokens;
        }
    }

    /// <summary>The single-flight group this request leads, if any.</summary>
    public Caching.Flights.Flight? Flight { get; set; }

    /// <summary>Set by the cache stage when the answer may be stored.</summary>
    public Caching.CacheKey? CacheKey { get; set; }

    /// <summary>This request's answer as the cache and its followers keep it (captured before its caller has it).</summary>
    public Caching.StoredAnswer? Stored { get; set; }

    /// <summary>
    /// The deployment whose stream reached the caller (set by <see cref="StartStream"/>): what an interrupted stream
    /// consumed is billed at its price.
    /// </summary>
    public Routing.Deployment? StreamAnswering => _stream?.Answering;

    /// <summary>
    /// The stream reaches the caller from <paramref name="deployment"/>'s attempt: no fallback from here on. Whose it is
    /// is set before <see cref="StreamStarted"/>, so whoever sees the stream started sees whose it is.
    /// </summary>
    public void StartStream(Routing.Deployment deployment)
    {
        var stream = StreamOnly;
        stream.Answering = deployment;
        Volatile.Write(ref stream.Started, true);
    }

    /// <summary>
    /// The output tokens the stream's events so far are estimated to carry (<see cref="ChatCompletionChunk.EstimatedOutputTokens"/>;
    /// written by the attempt, read when the request ends): what a stream's answer is billed when no usage came.
    /// </summary>
    public int StreamOutputEstimate
    {
        get => _stream is { } s ? Volatile.Read(ref s.OutputEstimate) : 0;
        set => Volatile.Write(ref StreamOnly.OutputEstimate, value);
    }

    /// <summary>When a stream's first content reached the caller, since submission (for the request log).</summary>
    public TimeSpan? TimeToFirstToken
    {
        get => _stream?.TimeToFirstToken;
        set => StreamOnly.TimeToFirstToken = value;
    }

    /// <summary>The request's trace span (null when nobody listens to the gateway's ActivitySource).</summary>
    public System.Diagnostics.Activity? Span { get; set; }

    /// <summary>Where the deadline's entry is (<see cref="Pipeline.Deadlines"/>, under its shard's lock; -1: none).</summary>
    internal Deadlines.Shard? DeadlineShard { get; set; }

    internal int DeadlineIndex { get; set; } = -1;

    internal long DeadlineDue { get; set; }

    private sealed class StreamState
    {
        public required Channel<ChatCompletionChunk> Chunks;
        public bool ChunksInline;
        public int FlushOwed;
        public bool Started;
        public TokenUsage? Usage;
        public Routing.Deployment? Answering;
        public int OutputEstimate;
        public TimeSpan? TimeToFirstToken;
    }
}
