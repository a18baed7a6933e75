namespace PipelineGateway.RequestLog;

/// <summary>One request as the log keeps it (docs/observability.md has the table's columns).</summary>
public sealed class RequestRecord
{
    /// <summary>When the request was submitted (UTC).</summary>
    public DateTimeOffset Timestamp { get; init; }

    private string? _requestId;
    private string? _attempts;

    /// <summary>The gateway's id for the request (<c>x-gateway-request-id</c>).</summary>
    public string RequestId
    {
        // Formatted when read: the row is built on the request's path, read on the writer's thread.
        get => _requestId ??= Pipeline.RequestIds.Format(RequestSequence);
        init => _requestId = value;
    }

    internal long RequestSequence { get; init; }

    /// <summary>The id when it was given as text (a row read back), else null: format <see cref="RequestSequence"/>.</summary>
    internal string? RequestIdText => _requestId;

    /// <summary>The gateway key's id (the request's rate-limit key); empty for none.</summary>
    public string KeyId { get; init; } = string.Empty;

    /// <summary>The model the caller asked for.</summary>
    public required string Model { get; init; }

    /// <summary>The provider that answered (null: none did).</summary>
    public string? Provider { get; init; }

    /// <summary>The upstream model that answered.</summary>
    public string? ProviderModel { get; init; }

    /// <summary>The HTTP status the request ended with (200, or its failure's status).</summary>
    public int Status { get; init; }

    /// <summary>The failure's error code (OpenAI shape: <c>rate_limit_exceeded</c>, <c>provider_overloaded</c>…), null on success.</summary>
    public string? ErrorCode { get; init; }

    /// <summary>The failure's error type (<c>invalid_request_error</c>, <c>api_error</c>…), null on success.</summary>
    public string? ErrorType { get; init; }

    public long PromptTokens { get; init; }

    public long CompletionTokens { get; init; }

    /// <summary>What the request cost (0 for failures, cache hits and coalesced requests).</summary>
    public decimal Cost { get; init; }

    /// <summary>What a cache hit or a coalesced request saved.</summary>
    public decimal CostSaved { get; init; }

    public bool Cached { get; init; }

    public bool Coalesced { get; init; }

    public bool Stream { get; init; }

    public double LatencyMs { get; init; }

    /// <summary>
    /// True when the tokens (and so the cost) are the gateway's estimate: the upstream reported no usage, or one no
    /// upstream could have used (docs/metrics.md, "Accounting").
    /// </summary>
    public bool UsageEstimated { get; init; }

    /// <summary>Time to the first token of a stream (null for whole answers).</summary>
    public double? TimeToFirstTokenMs { get; init; }

    /// <summary><c>interactive</c> or <c>batch</c>.</summary>
    public string Priority { get; init; } = "interactive";

    /// <summary>Every attempt: provider, model, outcome, status and latency, as JSON.</summary>
    public string Attempts
    {
        get => _attempts ??= AttemptsJson.Format(AttemptList);
        init => _attempts = value;
    }

    /// <summary>The attempts themselves, turned into JSON on the writer's thread (or when <see cref="Attempts"/> is read).</summary>
    internal IReadOnlyList<GatewayAttempt>? AttemptList { get; init; }

    /// <summary>The attempts' JSON when it was given as text (a row read back), else null: write <see cref="AttemptList"/>.</summary>
    internal string? AttemptsText => _attempts;

    /// <summary>Most characters of <see cref="User"/> kept.</summary>
    public const int MaxUserChars = 256;

    private string? _user;
    private bool _userChecked;

    /// <summary>
    /// The end user the caller named for the request — OpenAI's <c>user</c> (or <c>safety_identifier</c>), Anthropic's
    /// <c>metadata.user_id</c> — for spend per user; null when none was named. Redacted (a key pasted into it is not
    /// kept) and cut to <see cref="MaxUserChars"/> when first read (the writer's thread, not the request's).
    /// </summary>
    public string? User
    {
        get
        {
            if (!_userChecked && _user is not null)
            {
                var safe = Providers.SecretRedactor.Redact(_user); // before the cut: a cut could leave a fragment unrecognised
                _user = safe.Length > MaxUserChars ? safe[..MaxUserChars] : safe;
            }

            _userChecked = true;

            return _user;
        }

        init => _user = string.IsNullOrEmpty(value) ? null : value;
    }

    /// <summary>The prompt (only with <c>LogBodies</c>; redacted and capped).</summary>
    public string? Prompt { get; init; }

    /// <summary>The answer's text (only with <c>LogBodies</c>; redacted and capped).</summary>
    public string? Answer { get; init; }
}

/// <summary>A filter over the log: every set field must match; newest first, <see cref="Limit"/> rows after <see cref="Before"/>.</summary>
public sealed class RequestLogQuery
{
    public string? KeyId { get; init; }

    public string? Model { get; init; }

    public int? Status { get; init; }

    /// <summary>The end user the request named (<see cref="RequestRecord.User"/>).</summary>
    public string? User { get; init; }

    public DateTimeOffset? Since { get; init; }

    public DateTimeOffset? Until { get; init; }

    /// <summary>A page's cursor: rows older than this row id (the previous page's <c>NextCursor</c>).</summary>
    public long? Before { get; init; }

    public int Limit { get; init; } = 100;
}

/// <summary>One page of the log, newest first.</summary>
public sealed record RequestLogPage(IReadOnlyList<LoggedRequest> Rows, long? NextCursor);

/// <summary>A stored row and its id in the store.</summary>
public sealed record LoggedRequest(long Id, RequestRecord Request);

/// <summary>What spend is grouped by.</summary>
public enum SpendGrouping
{
    Key,
    Model,
    Deployment,
    Day,

    /// <summary>The end user the request named (<see cref="RequestRecord.User"/>; requests that named none in one group, "").</summary>
    User,
}

/// <summary>Spend in one group: requests, tokens, cost.</summary>
public sealed record SpendRow(string Group, long Requests, long Failed, long PromptTokens, long CompletionTokens, decimal Cost, decimal CostSaved);

/// <summary>A key's spend on one UTC day (what budgets are restored from), per end user the requests named.</summary>
public sealed record DailySpend(string KeyId, DateOnly Day, decimal Cost)
{
    /// <summary>The end user the requests named (<see cref="RequestRecord.User"/>, as written); null: none (per-user budgets are restored from it).</summary>
    public string? User { get; init; }
}

/// <summary>
/// Where the request log is kept. The gateway's writer calls <see cref="WriteAsync"/> from one background loop (never
/// concurrently) with batches of rows; the other calls may come from any thread. An implementation throws when a write
/// fails: the writer keeps the rows, counts them, and retries (docs/observability.md).
/// </summary>
public interface IRequestLogStore
{
    /// <summary>Prepares the store (creates the schema); throws naming the setting when it cannot be used.</summary>
    ValueTask InitializeAsync(CancellationToken cancellationToken);

    /// <summary>Writes one batch, all or nothing.</summary>
    ValueTask WriteAsync(IReadOnlyList<RequestRecord> batch, CancellationToken cancellationToken);

    /// <summary>Deletes at most <paramref name="max"/> rows older than <paramref name="cutoff"/>; returns how many.</summary>
    ValueTask<int> DeleteOlderThanAsync(DateTimeOffset cutoff, int max, CancellationToken cancellationToken);

    ValueTask<RequestLogPage> QueryAsync(RequestLogQuery query, CancellationToken cancellationToken);

    ValueTask<IReadOnlyList<SpendRow>> SpendAsync(SpendGrouping groupBy, DateTimeOffset since, CancellationToken cancellationToken);

    /// <summary>Each key's billed cost per UTC day since <paramref name="since"/>.</summary>
    ValueTask<IReadOnlyList<DailySpend>> DailySpendAsync(DateTimeOffset since, CancellationToken cancellationToken);
}
