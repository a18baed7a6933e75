using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Server;

/// <summary>The HTTP front door (section <c>Gateway:Server</c>).</summary>
public sealed class ServerOptions
{
    public const string SectionName = "Gateway:Server";

    /// <summary>Gateway (virtual) keys, stored as SHA-256 hashes: never the keys themselves.</summary>
    public List<GatewayKeyOptions> Keys { get; set; } = [];

    /// <summary>
    /// Request bodies above this size get 413. 32 MiB, Anthropic's own bound for a request (OpenAI's is larger still): a
    /// photo sent inline as base64 is several megabytes (it was 4 MiB, and such requests were refused). What such bodies
    /// hold at once is bounded by <see cref="MaxBodyBytesInFlight"/>.
    /// </summary>
    [Range(1024, int.MaxValue)]
    public int MaxRequestBodyBytes { get; set; } = 32 * 1024 * 1024;

    /// <summary>
    /// What the large request bodies (64 KiB or more: long prompts, inline images, audio uploads) being served at once may
    /// add up to, by their announced length (a body sent without one, chunked, by what has arrived); past it another large
    /// one is a 503 <c>server_busy</c> with <c>Retry-After</c> — a request held in memory costs the process several times
    /// its body (measured ~7×, docs/server.md) — while smaller requests never count. Batch files and message batches,
    /// written to disk as they are read, do not count. At least the larger of <see cref="MaxRequestBodyBytes"/> and
    /// <see cref="MaxUploadBytes"/> (one largest body always fits).
    /// </summary>
    [Range(1024 * 1024, long.MaxValue)]
    public long MaxBodyBytesInFlight { get; set; } = 64L * 1024 * 1024;

    /// <summary>
    /// The bound of a multipart upload (<c>/v1/audio/transcriptions</c>, <c>/v1/audio/translations</c>: the audio and the
    /// form around it) instead of <see cref="MaxRequestBodyBytes"/>: OpenAI takes files of up to 25 MB.
    /// </summary>
    [Range(1024, int.MaxValue)]
    public int MaxUploadBytes { get; set; } = 26 * 1024 * 1024;

    /// <summary>SSE comment keep-alives while a stream waits for its first token.</summary>
    public TimeSpan StreamKeepAlive { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Failed key checks one client address may make in a minute; past it, every request from that address is answered
    /// 429 with a Retry-After until the minute has passed (keys cannot be guessed at speed).
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxAuthFailuresPerMinute { get; set; } = 20;

    /// <summary>
    /// Kestrel runs the gateway's request code on the thread that read the request from the socket, and writes the
    /// answer on the thread that produced it, instead of handing each to the thread pool
    /// (<c>SocketTransportOptions.UnsafePreferInlineScheduling</c>). Off by default, as in Kestrel: measured paired on
    /// two cores (docs/benchmarks.md, issue 21), whole answers were served ~11% more for ~3% more CPU per request,
    /// but streams cost ~6–7% more CPU per event (each flushed event is sent on the writing thread instead of
    /// Kestrel's I/O queue). Safe with the gateway's own code (nothing on the request path blocks a thread), not with
    /// middleware of yours that does.
    /// </summary>
    public bool InlineScheduling { get; set; }

    /// <summary>
    /// Asks the GC for a gen1 collection when, after a collection, gen1 holds more than this many MiB and more than twice
    /// what that collection promoted: under load from a cold start the runtime otherwise lets 15–25 MB of dead requests
    /// pile up in gen1 for its first seconds, and with a slow upstream far more (measured on two cores, docs/benchmarks.md,
    /// issue 21: warm-up peak ~5–15 MiB lower at 128 connections, ~70 MiB lower with 3,000 connections to a 1 s
    /// upstream; CPU per request unchanged). The same effect as <c>DOTNET_GCGen1MaxBudget</c>, which the runtime reads
    /// from the environment only. 0 turns it off.
    /// </summary>
    [Range(0, 1_000_000)]
    public int GcGen1GuardMiB { get; set; } = 4;

    /// <summary>
    /// How many <c>POST /v1/messages/count_tokens</c> calls one gateway key may pass on to Claude per minute (a token
    /// bucket holding this many). Claude's count is a call on the organisation's Anthropic quota (count_tokens has its own
    /// requests-per-minute limit there), and Claude Code asks it every turn: past this rate the key's counts come from the
    /// gateway's tokenizer (<c>x-gateway-token-count: tokenizer</c>) instead — never a refusal, since the caller only
    /// needs an estimate, and never one tenant spending every other tenant's count rate. 0: always the tokenizer.
    /// </summary>
    [Range(0, 1_000_000)]
    public int CountTokensPerMinute { get; set; } = 100;

    /// <summary>
    /// How long a <c>/v1/responses</c> answer asked with <c>store</c> (OpenAI's default: true) is kept — its output items
    /// for <c>item_reference</c> input items, the conversation for <c>previous_response_id</c>, the response for
    /// <c>GET /v1/responses/{id}</c>. Per gateway key; in the instance's memory, or in Redis in distributed mode
    /// (<c>Gateway:Redis:StoredResponses</c>). Zero: nothing is kept (a stored answer's reference is then a 400 naming it).
    /// </summary>
    public TimeSpan StoredResponsesTtl { get; set; } = TimeSpan.FromHours(24);

    /// <summary>
    /// What the stored responses may hold in the instance's memory, in bytes of their JSON (and their keys); past it the
    /// least recently used leave first. A store this full and churning (every request stored, thousands a second) costs
    /// the process several times this in resident memory — the GC's room for what was evicted (docs/server.md).
    /// </summary>
    [Range(0, long.MaxValue)]
    public long StoredResponsesMaxBytes { get; set; } = 32L * 1024 * 1024;

    /// <summary>
    /// Background responses (<c>/v1/responses</c> with <c>background: true</c>) this instance makes at once, queued or in
    /// progress; past it a new one is a 503 with <c>Retry-After</c> (docs/server.md, "Background responses").
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxBackgroundResponses { get; set; } = 1000;

    /// <summary>
    /// Background responses one gateway key may have queued or in progress on this instance (every caller is one key when
    /// no keys are configured); past it that key's next one is a 429 with <c>Retry-After</c>, so one key cannot take every
    /// other key's room.
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxBackgroundResponsesPerKey { get; set; } = 100;

    /// <summary>
    /// Where OpenAI's Batch API (<c>/v1/files</c>, <c>/v1/batches</c>) keeps its files and batches: a directory of this
    /// instance's own (one subdirectory per gateway key; an instance holds it locked), so uploads, results and batches
    /// in progress survive a restart. Empty: the Batch API is not served (404).
    /// </summary>
    public string BatchDirectory { get; set; } = "pgw-data/batches";

    /// <summary>
    /// A fleet's Batch API: the base URL (<c>http://pgw-0.pgw:8080</c>) of the one instance that holds the fleet's files and
    /// batches. Every instance passes each Batch API request (OpenAI's files and batches, Anthropic's message batches) to
    /// it once the caller's key is checked, and its answer back, so a file uploaded through one instance is there for a
    /// batch created through another and lists are whole. Give every instance the same value, the holder included (it
    /// serves what is passed to it; a request it is given directly takes one hop to itself) — or leave it empty on the
    /// holder. Empty (the default): this instance serves the Batch API from <see cref="BatchDirectory"/>.
    /// </summary>
    public string? BatchInstanceUrl { get; set; }

    /// <summary>The largest file <c>POST /v1/files</c> takes (OpenAI's batch input bound: 200 MB).</summary>
    [Range(1024, long.MaxValue)]
    public long MaxBatchFileBytes { get; set; } = 200L * 1024 * 1024;

    /// <summary>What one gateway key's files (uploads and results) may hold on disk altogether; past it an upload is a 413.</summary>
    [Range(1024, long.MaxValue)]
    public long BatchBytesPerKey { get; set; } = 2L * 1024 * 1024 * 1024;

    /// <summary>
    /// How many files (uploads and results) one gateway key may keep, counting two result files for each of its batches
    /// not ended; past it an upload (or a batch) is a 413 until files are deleted or expire.
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxBatchFilesPerKey { get; set; } = 1000;

    /// <summary>
    /// How long a Batch API file — an upload or a batch's results — is kept when its caller gives no <c>expires_after</c>
    /// (<c>output_expires_after</c> for results): OpenAI's default for batch files, 30 days. An expired file is gone for
    /// the API at once (404, not listed) and from disk at the next sweep (hourly, and a key's own at its next upload); the
    /// input of a batch still running stays on disk until the batch ends. Zero: kept until deleted.
    /// </summary>
    public TimeSpan BatchFileLifetime { get; set; } = TimeSpan.FromDays(30);

    /// <summary>How many batches one gateway key may have not ended (waiting or running); past it a create is a 429.</summary>
    [Range(1, 100_000)]
    public int MaxLiveBatchesPerKey { get; set; } = 100;

    /// <summary>Batches run at once (others wait their turn, <c>validating</c>); each with <see cref="BatchConcurrency"/> requests in flight.</summary>
    [Range(1, 64)]
    public int MaxRunningBatches { get; set; } = 2;

    /// <summary>Requests in flight per running batch (at the pipeline's batch priority: interactive requests go first).</summary>
    [Range(1, 10_000)]
    public int BatchConcurrency { get; set; } = 64;

    /// <summary>Checks the settings across fields; the messages name the setting and what is allowed.</summary>
    public IEnumerable<string> Validate()
    {
        var results = new List<ValidationResult>();
        Validator.TryValidateObject(this, new ValidationContext(this), results, validateAllProperties: true);
        foreach (var r in results)
        {
            yield return $"{SectionName}:{r.MemberNames.FirstOrDefault()}: {r.ErrorMessage}";
        }

        if (StoredResponsesTtl < TimeSpan.Zero)
        {
            yield return $"{SectionName}:StoredResponsesTtl must be zero (keep nothing) or a positive duration; got {StoredResponsesTtl}.";
        }

        if (BatchFileLifetime < TimeSpan.Zero)
        {
            yield return $"{SectionName}:BatchFileLifetime must be zero (files kept until deleted) or a positive duration; got {BatchFileLifetime}.";
        }

        if (!string.IsNullOrWhiteSpace(BatchInstanceUrl)
            && (!Uri.TryCreate(BatchInstanceUrl, UriKind.Absolute, out var instance) || instance.Scheme is not ("http" or "https") || instance.UserInfo.Length > 0 || instance.Query.Length > 0 || instance.Fragment.Length > 0))
        {
            yield return $"{SectionName}:BatchInstanceUrl must be an http or https base URL with no user, query or fragment (the instance holding the fleet's batches, e.g. http://pgw-0.pgw:8080); the value is not shown (it could hold a password).";
        }

        if (MaxBodyBytesInFlight < Math.Max(MaxRequestBodyBytes, MaxUploadBytes))
        {
            yield return $"{SectionName}:MaxBodyBytesInFlight ({MaxBodyBytesInFlight}) must be at least MaxRequestBodyBytes and MaxUploadBytes ({Math.Max(MaxRequestBodyBytes, MaxUploadBytes)}): one largest body must fit.";
        }

        if (StreamKeepAlive <= TimeSpan.Zero)
        {
            yield return $"{SectionName}:StreamKeepAlive must be a positive duration; got {StreamKeepAlive}.";
        }

        foreach (var problem in ValidateKeys(Keys))
        {
            yield return problem;
        }
    }

    /// <summary>
    /// The keys as configured, each bound on its own: the binder drops a list element it cannot read (an <c>Admin</c>
    /// that is not true or false) without a word, so a key would silently not be there. Each such key is a problem
    /// naming its place and the binder's reason.
    /// </summary>
    internal static List<GatewayKeyOptions> BindKeys(Microsoft.Extensions.Configuration.IConfigurationSection keys, List<string> problems)
    {
        var bound = new List<GatewayKeyOptions>();
        foreach (var key in keys.GetChildren())
        {
            try
            {
                bound.Add(Microsoft.Extensions.Configuration.ConfigurationBinder.Get<GatewayKeyOptions>(key) ?? new GatewayKeyOptions());
            }
            catch (InvalidOperationException ex)
            {
                problems.Add($"{key.Path}: {ex.Message}");
            }
        }

        return bound;
    }

    /// <summary>The keys' problems (as at start, and for a reload of them: <see cref="GatewayKeys.TryReload"/>); the messages name the key's place and setting, never its hash.</summary>
    internal static IEnumerable<string> ValidateKeys(IReadOnlyList<GatewayKeyOptions> keys)
    {
        var ids = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < keys.Count; i++)
        {
            var key = keys[i];
            var keyResults = new List<ValidationResult>();
            Validator.TryValidateObject(key, new ValidationContext(key), keyResults, validateAllProperties: true);
            foreach (var r in keyResults)
            {
                yield return $"{SectionName}:Keys:{i}:{r.MemberNames.FirstOrDefault()}: {r.ErrorMessage}";
            }

            if (!string.IsNullOrEmpty(key.Id) && !ids.Add(key.Id))
            {
                yield return $"{SectionName}:Keys:{i}:Id '{key.Id}' is used by more than one key.";
            }
        }
    }
}

/// <summary>One gateway key: its hash, its id (used for rate limits, budgets and the cache namespace) and what it may use.</summary>
public sealed class GatewayKeyOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Id { get; set; } = string.Empty;

    /// <summary>Lower-case hex SHA-256 of the key, e.g. from <c>printf %s "$KEY" | sha256sum</c>.</summary>
    [Required(AllowEmptyStrings = false)]
    [RegularExpression("^[0-9a-fA-F]{64}$", ErrorMessage = "Sha256 must be 64 hex characters (the SHA-256 of the key).")]
    public string Sha256 { get; set; } = string.Empty;

    /// <summary>Model names or aliases this key may use; empty means all.</summary>
    public List<string> AllowedModels { get; set; } = [];

    /// <summary>
    /// May read the admin surface (<c>/v1/gateway/*</c> metrics, <c>/metrics</c>, the dashboard) when keys are
    /// configured. Other keys get 403 there.
    /// </summary>
    public bool Admin { get; set; }
}
