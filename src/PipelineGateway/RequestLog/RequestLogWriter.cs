using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;

namespace PipelineGateway.RequestLog;

/// <summary>
/// Writes one row per ended request to the <see cref="IRequestLogStore"/> from a background loop. Ending a request only
/// builds the row and offers it to a bounded channel (never a database call); the loop commits a batch when
/// <see cref="RequestLogOptions.MaxBatch"/> rows wait or <see cref="RequestLogOptions.FlushInterval"/> has passed since
/// the first, so a SIGKILL loses at most that interval. A store that fails (locked, read-only, corrupt, disk full)
/// never stops the gateway: rows are kept up to the capacity and retried with backoff, overflow is counted as lost, and
/// one message is logged per outage. Registered before the stages, so it stops after the drain: after SIGTERM every
/// answered request is in the log.
/// </summary>
internal sealed partial class RequestLogWriter : ICompletionListener, IHostedService, IDisposable
{
    private const int CleanupChunk = 5_000;
    private readonly RequestLogOptions _options;
    private readonly IRequestLogStore? _store;
    private readonly Cost.BudgetTracker _budgets;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Channel<RequestRecord> _channel;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<RequestRecord> _pending = [];
    private TaskCompletionSource _full = NewSignal();
    private TaskCompletionSource _flushed = NewSignal();
    private Task _loop = Task.CompletedTask;
    private DateTimeOffset _nextCleanup;
    private long _queued;
    private int _pendingCount;
    private long _written;
    private long _dropped;
    private long _lost;
    private bool _failing;
    private volatile bool _active;
    private volatile bool _closing;

    public RequestLogWriter(IOptions<GatewayOptions> options, Cost.BudgetTracker budgets, TimeProvider time, ILogger<RequestLogWriter> logger, IRequestLogStore? store = null)
    {
        _options = options.Value.RequestLog;
        _store = _options.Enabled ? store : null;
        _budgets = budgets;
        _time = time;
        _logger = logger;
        _channel = Channel.CreateBounded<RequestRecord>(new BoundedChannelOptions(_options.Capacity)
        {
            FullMode = BoundedChannelFullMode.Wait,
            SingleReader = true,
            SingleWriter = false,
        });
    }

    /// <summary>True once a store is writing (a store is registered and the log is enabled).</summary>
    public bool IsEnabled => _store is not null;

    /// <summary>The store queries go to (null: no log).</summary>
    public IRequestLogStore? Store => _store;

    public RequestLogStats Stats => new()
    {
        Enabled = IsEnabled,
        Written = Interlocked.Read(ref _written),
        Dropped = Interlocked.Read(ref _dropped),
        Lost = Interlocked.Read(ref _lost),
        Queued = Math.Max(0, Interlocked.Read(ref _queued)),
        Failing = Volatile.Read(ref _failing),
    };

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_store is null)
        {
            return;
        }

        await _store.InitializeAsync(cancellationToken).ConfigureAwait(false);
        await RestoreBudgetsAsync(cancellationToken).ConfigureAwait(false);
        _nextCleanup = _time.GetUtcNow();
        _active = true;
        _loop = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
    }

    /// <summary>Stops after the pipeline drained (it was registered before the stages): everything queued is written.</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        _active = false;
        _closing = true;
        _channel.Writer.TryComplete();
        _full.TrySetResult();
        try
        {
            await _loop.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The host gave up waiting: stop retrying a failing store; what is left is counted as lost.
            await _stop.CancelAsync().ConfigureAwait(false);
            await _loop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    public void OnCompleted(in Completion completion)
    {
        if (!_active)
        {
            return;
        }

        var record = Build(completion);
        if (!_channel.Writer.TryWrite(record))
        {
            if (_options.WhenFull == RequestLogFullMode.Drop || !WaitToWrite(record))
            {
                Interlocked.Increment(ref _dropped);
                return;
            }
        }

        if (Interlocked.Increment(ref _queued) >= _options.MaxBatch)
        {
            _full.TrySetResult();
        }
    }

    /// <summary>Wait mode: the ending thread waits for room (false: the writer stopped).</summary>
    private bool WaitToWrite(RequestRecord record)
    {
        try
        {
            _full.TrySetResult();
            _channel.Writer.WriteAsync(record).AsTask().GetAwaiter().GetResult();
            return true;
        }
        catch (ChannelClosedException)
        {
            return false;
        }
    }

    /// <summary>Writes everything accepted so far (for tests and for a clean handover); returns when it is committed or counted lost.</summary>
    internal async Task FlushAsync(CancellationToken cancellationToken = default)
    {
        // Everything queued when this was called is written (or counted lost) once a flush round ends with nothing
        // queued or kept for a retry: wake the writer until then.
        while ((Interlocked.Read(ref _queued) > 0 || Volatile.Read(ref _pendingCount) > 0) && !_loop.IsCompleted)
        {
            var flushed = Volatile.Read(ref _flushed).Task;
            _full.TrySetResult();
            await flushed.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task RunAsync(CancellationToken stop)
    {
        var reader = _channel.Reader;
        var failures = 0;
        while (true)
        {
            var more = _pending.Count > 0 || await WaitToReadAsync(reader).ConfigureAwait(false);
            if (!more)
            {
                break;
            }

            // Wait for a full batch or the flush interval, whichever first (at shutdown: no wait).
            if (Interlocked.Read(ref _queued) < _options.MaxBatch && !_closing)
            {
                await WaitForBatchAsync(stop).ConfigureAwait(false);
            }

            _full = NewSignal();
            while (_pending.Count < _options.MaxBatch && reader.TryRead(out var record))
            {
                _pending.Add(record);
                Volatile.Write(ref _pendingCount, _pending.Count);
                Interlocked.Decrement(ref _queued);
            }

            if (_pending.Count > 0)
            {
                if (await TryWriteAsync(stop).ConfigureAwait(false))
                {
                    failures = 0;
                }
                else if (stop.IsCancellationRequested)
                {
                    Lose(_pending.Count);
                    _pending.Clear();
                }
                else
                {
                    // Backoff before the retry: 1 s, 2 s, 4 s … 30 s. Rows keep arriving meanwhile, up to the capacity.
                    failures++;
                    var backoff = TimeSpan.FromSeconds(Math.Min(30, Math.Pow(2, Math.Min(failures - 1, 5))));
                    await Delay(backoff, stop).ConfigureAwait(false);
                    if (_closing && failures > 3)
                    {
                        // Shutting down against a store that keeps failing: give up on what is left.
                        Lose(_pending.Count);
                        _pending.Clear();
                    }
                }
            }

            await CleanupIfDueAsync(stop).ConfigureAwait(false);
            Volatile.Write(ref _pendingCount, _pending.Count);
            Interlocked.Exchange(ref _flushed, NewSignal()).TrySetResult();
        }

        Volatile.Write(ref _pendingCount, _pending.Count);
        Interlocked.Exchange(ref _flushed, NewSignal()).TrySetResult();
    }

    private static async ValueTask<bool> WaitToReadAsync(ChannelReader<RequestRecord> reader)
    {
        try
        {
            return await reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            return false;
        }
    }

    private async Task WaitForBatchAsync(CancellationToken stop)
    {
        using var wake = CancellationTokenSource.CreateLinkedTokenSource(stop);
        var delay = Task.Delay(_options.FlushInterval, _time, wake.Token);
        await Task.WhenAny(delay, _full.Task).ConfigureAwait(false);
        await wake.CancelAsync().ConfigureAwait(false);
    }

    private async Task Delay(TimeSpan delay, CancellationToken stop)
    {
        try
        {
            await Task.WhenAny(Task.Delay(delay, _time, stop), _full.Task).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async ValueTask<bool> TryWriteAsync(CancellationToken stop)
    {
        try
        {
            await _store!.WriteAsync(_pending, stop).ConfigureAwait(false);
            Interlocked.Add(ref _written, _pending.Count);
            _pending.Clear();
            if (_failing)
            {
                Volatile.Write(ref _failing, false);
                var lost = Interlocked.Read(ref _lost);
                LogStoreRecovered(_logger, lost);
            }

            return true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !stop.IsCancellationRequested)
        {
            if (!_failing)
            {
                Volatile.Write(ref _failing, true);
                LogStoreFailing(_logger, SecretRedactor.RedactAndTrim(ex.Message, 300), _options.Path);
            }

            // Keep what fits in the capacity for the retry; the rest is lost (counted).
            var room = Math.Max(0, _options.Capacity - _channel.Reader.Count);
            if (_pending.Count > room)
            {
                Lose(_pending.Count - room);
                _pending.RemoveRange(0, _pending.Count - room);
            }

            return false;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    private void Lose(int rows) => Interlocked.Add(ref _lost, rows);

    /// <summary>Retention: rows past <see cref="RequestLogOptions.RetentionDays"/> go in small chunks, between writes.</summary>
    private async Task CleanupIfDueAsync(CancellationToken stop)
    {
        var now = _time.GetUtcNow();
        if (_options.RetentionDays <= 0 || now < _nextCleanup || _failing)
        {
            return;
        }

        _nextCleanup = now.AddHours(1);
        try
        {
            var cutoff = now.AddDays(-_options.RetentionDays);
            for (var i = 0; i < 20 && !stop.IsCancellationRequested; i++)
            {
                if (await _store!.DeleteOlderThanAsync(cutoff, CleanupChunk, stop).ConfigureAwait(false) < CleanupChunk)
                {
                    break;
                }

                if (_channel.Reader.Count >= _options.MaxBatch)
                {
                    _nextCleanup = now; // rows are waiting: write them first, go on deleting after
                    break;
                }
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            LogCleanupFailed(_logger, SecretRedactor.RedactAndTrim(ex.Message, 300));
        }
    }

    /// <summary>
    /// A restart changes no budget: each key's billed cost in the current day and month is read back from the log. With
    /// a shared store (Redis) the store is the truth and nothing is restored.
    /// </summary>
    private async Task RestoreBudgetsAsync(CancellationToken cancellationToken)
    {
        if (!_budgets.IsEnabled || _budgets.IsDistributed)
        {
            return;
        }

        var now = _time.GetUtcNow();
        var monthStart = new DateTimeOffset(now.Year, now.Month, 1, 0, 0, 0, TimeSpan.Zero);
        var spend = await _store!.DailySpendAsync(monthStart, cancellationToken).ConfigureAwait(false);
        _budgets.Restore(spend, now);
        var total = spend.Sum(s => s.Cost);
        LogRestored(_logger, spend.Count, total);
    }

    private RequestRecord Build(in Completion c)
    {
        var item = c.Item;
        var info = c.Response?.Gateway;
        int status = 200;
        string? code = null, type = null;
        if (c.Error is { } error)
        {
            var (s, e, _) = OpenAIErrorMapping.Map(error);
            (status, code, type) = (s, e.Code, e.Type);
        }

        var usage = c.BilledUsage;
        // A request cancelled before its worker recorded the attempt in flight lists that one too (WorkItem.AttemptsWithUnrecorded).
        var attempts = c.Error is null ? info?.Attempts ?? item.FinalAttempts : item.AttemptsWithUnrecorded(_time) ?? item.SnapshotAttempts();

        string? prompt = null, answer = null;
        if (_options.LogBodies)
        {
            var messages = LoggedPrompt.Trim(item.Request.Messages, _options.MaxBodyChars + HeadMargin);
            prompt = Cap(SecretRedactor.Redact(Head(JsonSerializer.Serialize(messages, GatewayJsonContext.Default.ListChatCompletionMessage))));
            answer = c.Response is not { } r ? null
                : r.Operation is { } operation ? operation.Kind switch // not a text to keep
                {
                    Providers.OperationKind.Speech => $"[{operation.MediaType}, {Size(operation)}]",
                    Providers.OperationKind.Transcription or Providers.OperationKind.Translation => $"[{operation.Kind.ToString().ToLowerInvariant()}, {Size(operation)}]",
                    var kind => $"[{operation.Count} {kind switch { Providers.OperationKind.Embeddings => "embeddings", Providers.OperationKind.Moderations => "moderation results", Providers.OperationKind.Rerank => "ranked documents", _ => "images" }}]",
                }
                : Cap(SecretRedactor.Redact(Head(r.Content)));
        }

        return new RequestRecord
        {
            Timestamp = _time.GetUtcNow() - c.Latency,
            RequestSequence = item.Sequence,
            KeyId = item.TenantKey,
            Model = item.RootGroup.Spelling(item.Request.Model), // as configured, whatever the caller's case
            // A failure names no deployment, unless it is a stream cut after its content went out: it was billed there.
            Provider = c.Error is null ? info?.Provider : c.Consumed?.Deployment.ProviderName,
            ProviderModel = c.Error is null ? info?.ProviderModel : c.Consumed?.Deployment.Model,
            Status = status,
            ErrorCode = code,
            ErrorType = type,
            PromptTokens = usage?.PromptTokens ?? 0,
            CompletionTokens = usage?.CompletionTokens ?? 0,
            UsageEstimated = Admission.TokenCounter.IsEstimated(usage),
            Cost = c.BilledCost,
            CostSaved = c.Error is null ? info?.CostSaved ?? 0 : 0,
            Cached = info?.Cached == true,
            Coalesced = info?.Coalesced == true,
            Stream = item.IsStream,
            LatencyMs = c.Latency.TotalMilliseconds,
            TimeToFirstTokenMs = item.TimeToFirstToken?.TotalMilliseconds,
            Priority = item.Priority == RequestPriority.Batch ? "batch" : "interactive",
            User = item.Request.EndUser,
            AttemptList = attempts,
            Prompt = prompt,
            Answer = answer,
        };
    }

    /// <summary>An answer's size for the log; a streamed one's bytes went out as they came (<c>streamed</c>).</summary>
    private static string Size(Providers.OperationAnswer operation) => operation.List.IsEmpty ? "streamed" : $"{operation.List.Length} bytes";

    private string Cap(string text) => text.Length <= _options.MaxBodyChars ? text : string.Concat(text.AsSpan(0, _options.MaxBodyChars), "…[truncated]");

    /// <summary>
    /// What redaction needs to look at before the cap: the kept part and 1,024 characters after it (a secret across the cap
    /// is whole in it, so redacted, never cut into a fragment). A prompt with an image inline is megabytes of base64: the
    /// redaction's patterns ran over all of it, on the completing request's thread (and the prompt is cut to it before it
    /// is serialized, <see cref="LoggedPrompt"/>).
    /// </summary>
    private string? Head(string? text) => text is null || text.Length <= _options.MaxBodyChars + HeadMargin ? text : text[..(_options.MaxBodyChars + HeadMargin)];

    /// <summary>What redaction looks at past the cap (<see cref="Head"/>).</summary>
    private const int HeadMargin = 1024;

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Dispose() => _stop.Dispose();

    [LoggerMessage(EventId = 70, Level = LogLevel.Error, Message = "The request log cannot be written ({Reason}; Gateway:RequestLog:Path = {Path}). The gateway keeps answering; rows are kept up to Gateway:RequestLog:Capacity and retried, the rest are counted as lost (request_log.lost in the metrics).")]
    private static partial void LogStoreFailing(ILogger logger, string reason, string path);

    [LoggerMessage(EventId = 71, Level = LogLevel.Information, Message = "The request log is written again ({Lost} row(s) lost in all so far).")]
    private static partial void LogStoreRecovered(ILogger logger, long lost);

    [LoggerMessage(EventId = 72, Level = LogLevel.Warning, Message = "Request log retention cleanup failed ({Reason}); it is tried again in an hour.")]
    private static partial void LogCleanupFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 73, Level = LogLevel.Information, Message = "Budgets restored from the request log: {Rows} key-day total(s), {Cost} USD this month.")]
    private static partial void LogRestored(ILogger logger, int rows, decimal cost);
}

/// <summary>The request log's counters (in the metrics snapshot as <c>request_log</c>).</summary>
public sealed class RequestLogStats
{
    public bool Enabled { get; init; }

    /// <summary>Rows committed to the store.</summary>
    public long Written { get; init; }

    /// <summary>Rows dropped because the writer's queue was full (WhenFull: Drop).</summary>
    public long Dropped { get; init; }

    /// <summary>Rows lost because the store kept failing past the capacity, or at shutdown.</summary>
    public long Lost { get; init; }

    /// <summary>Rows waiting for the writer.</summary>
    public long Queued { get; init; }

    /// <summary>True while the store fails (the log says why, once).</summary>
    public bool Failing { get; init; }
}
