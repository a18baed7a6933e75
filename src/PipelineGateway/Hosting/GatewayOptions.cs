using System.ComponentModel.DataAnnotations;
using PipelineGateway.Admission;
using PipelineGateway.Caching;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Routing;

namespace PipelineGateway.Hosting;

/// <summary>The whole gateway configuration (section <c>Gateway</c>), validated at start.</summary>
public sealed class GatewayOptions
{
    public const string SectionName = "Gateway";

    public PipelineOptions Pipeline { get; set; } = new();

    public List<ProviderOptions> Providers { get; set; } = [];

    public List<ModelGroupOptions> Models { get; set; } = [];

    public AdmissionOptions Admission { get; set; } = new();

    public CacheOptions Cache { get; set; } = new();

    public Routing.Health.HealthOptions Health { get; set; } = new();

    /// <summary>Prices by upstream model name (USD per million tokens), over the shipped defaults.</summary>
    public Dictionary<string, Cost.ModelPrice> Pricing { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Spending limits per day or month, global or per gateway key.</summary>
    public List<Cost.BudgetOptions> Budgets { get; set; } = [];

    /// <summary>How tenants share the gateway's waiting rooms and capacity.</summary>
    public FairnessOptions Fairness { get; set; } = new();

    /// <summary>The per-request log (written when a store is registered: SQLite in <c>pgw serve</c> and <c>pgw batch</c>).</summary>
    public RequestLog.RequestLogOptions RequestLog { get; set; } = new();

    /// <summary>Settings the configuration gave that nothing reads (<see cref="Hosting.UnknownSettings"/>): start-up errors.</summary>
    internal List<string> UnknownSettings { get; } = [];
}

/// <summary>
/// Sharing between tenants (section <c>Gateway:Fairness</c>). A tenant is the request's
/// <see cref="GatewayRequestOptions.RateLimitKey"/> (the gateway key's id over HTTP). Every waiting room is drained
/// by weighted fair sharing, so one tenant's flood cannot starve another (docs/rate-limiting.md).
/// </summary>
public sealed class FairnessOptions
{
    /// <summary>Weight per tenant key (default 1): a tenant of weight 3 gets three times the share of a tenant of weight 1.</summary>
    public Dictionary<string, double> Weights { get; set; } = new(StringComparer.Ordinal);

    /// <summary>
    /// A tenant's share of admission's waiting room (queued, waiting for a rate-limit permit or for an in-flight slot):
    /// always available to it. Past it a tenant may use more of the room only while more than this many places stay
    /// free, so a burst into a quiet gateway is not refused and other tenants keep their share;
    /// <c>Pipeline:AdmissionQueueCapacity</c> bounds all tenants together.
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxQueuedPerKey { get; set; } = 256;

    /// <summary>While interactive and batch work both wait, the part of the grants batch work gets (0.1: one in ten).</summary>
    [Range(0.0, 1.0)]
    public double BatchShare { get; set; } = 0.1;

    /// <summary>Tenants tracked at the door at once, at most (idle ones are forgotten); past it new tenants are refused. Also the number of keys the metrics count one by one (later keys are counted together).</summary>
    [Range(1, 10_000_000)]
    public int MaxTenants { get; set; } = 100_000;

    /// <summary>The weight of a tenant key.</summary>
    public double WeightOf(string key) => Weights.TryGetValue(key, out var w) && w > 0 ? w : 1;
}

/// <summary>Sizes and timings of the pipeline engine. See docs/architecture.md for why each bound is where it is.</summary>
public sealed class PipelineOptions
{
    /// <summary>Requests admitted and not yet finished, at most. Bounds everything downstream of admission.</summary>
    [Range(1, 1_000_000)]
    public int MaxInFlight { get; set; } = 1024;

    /// <summary>Requests waiting for admission, at most. Past it, SubmitAsync waits and fail-fast callers get queue-full.</summary>
    [Range(1, 1_000_000)]
    public int AdmissionQueueCapacity { get; set; } = 1024;

    /// <summary>Not used any more: the admission → cache channel holds <see cref="MaxInFlight"/> (it can never be full). Kept so old files bind.</summary>
    [Range(1, 1_000_000)]
    public int CacheQueueCapacity { get; set; } = 256;

    /// <summary>
    /// The longest a fail-fast request (the HTTP front door) may be expected to wait in a deployment's queue: a
    /// request whose expected wait there (queue ahead of it ÷ the provider's measured drain rate) is longer, or longer
    /// than its remaining deadline, goes to another deployment with room or is refused at once with a Retry-After.
    /// Waiting callers (<see cref="SubmitMode.Wait"/>) are refused only when the wait would pass their deadline.
    /// </summary>
    public TimeSpan MaxQueueWait { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a request may take from submission to answer, unless it sets its own timeout.</summary>
    public TimeSpan DefaultTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Attempts per request across all providers, the first included.</summary>
    [Range(1, 20)]
    public int MaxAttempts { get; set; } = 3;

    /// <summary>First backoff before re-trying a deployment already tried; doubles each time, with jitter.</summary>
    public TimeSpan RetryBaseDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>The longest backoff before a retry.</summary>
    public TimeSpan RetryMaxDelay { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>On shutdown, how long in-flight work may take to finish before it is failed explicitly.</summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The retry-after suggested to callers refused because the queue is full.</summary>
    public TimeSpan QueueFullRetryAfter { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// A request written to an idle stage whose channel is empty is handled by that stage on the writer's thread
    /// instead of waking the stage's loop (one thread-pool hand-off fewer per stage; the admission, cache and router
    /// handlers never wait). Busy stages queue as before. Off: every request crosses every channel (for comparison).
    /// </summary>
    public bool PassThroughIdleStages { get; set; } = true;

    /// <summary>
    /// A request's work item is reused for a later request once its caller has its answer and the pipeline let go of it
    /// (not when anything else may still reach it: a cancellation, a stream, a shared cache call, a hedge, a retry).
    /// Saves ~430 B per request in process. Off: every request gets a new one (for comparison, or to rule it out).
    /// </summary>
    public bool ReuseWorkItems { get; set; } = true;
}

/// <summary>One provider: a backend with its own worker pool.</summary>
public sealed class ProviderOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Name { get; set; } = string.Empty;

    /// <summary>The adapter: <c>Simulated</c>, or <c>Custom</c> for a provider registered in code.</summary>
    [Required(AllowEmptyStrings = false)]
    public string Type { get; set; } = ProviderTypes.Simulated;

    /// <summary>Workers calling this provider concurrently (its max concurrency).</summary>
    [Range(1, 10_000)]
    public int Workers { get; set; } = 16;

    /// <summary>Requests per minute the upstream allows; the pool never sends more in any 60-second window.</summary>
    [Range(1, 100_000_000)]
    public int? RequestsPerMinute { get; set; }

    /// <summary>Tokens per minute the upstream allows (estimated at send, corrected to actual usage).</summary>
    [Range(1, 1_000_000_000)]
    public int? TokensPerMinute { get; set; }

    /// <summary>Capacity of this provider's queue.</summary>
    [Range(1, 1_000_000)]
    public int QueueCapacity { get; set; } = 256;

    public SimulatedProviderOptions? Simulated { get; set; }

    /// <summary>
    /// The API's base URL, for example <c>https://api.openai.com/v1</c>, <c>https://api.anthropic.com/v1</c>,
    /// <c>http://localhost:11434/v1</c> (Ollama) or an Azure resource endpoint. Overridable by environment
    /// variable through normal configuration binding (<c>PGW_Gateway__Providers__0__BaseUrl</c>).
    /// </summary>
    public string? BaseUrl { get; set; }

    /// <summary>
    /// The name of the environment variable holding the API key (for example <c>OPENAI_API_KEY</c>).
    /// Keys are never read from configuration files, and never logged or echoed.
    /// </summary>
    public string? ApiKeyEnvironmentVariable { get; set; }

    /// <summary>Per-attempt timeout: until the whole answer is read, or for a stream until its response headers (then <see cref="StreamIdleTimeout"/> applies).</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>A stream that sends nothing for this long is treated as stalled (a timeout failure).</summary>
    public TimeSpan StreamIdleTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Pooled connections to this provider, at most.</summary>
    [Range(1, 100_000)]
    public int MaxConnections { get; set; } = 256;

    /// <summary>
    /// A whole (non-streamed) answer's body, decompressed, is read up to this many bytes (default 64 MiB); a longer one
    /// fails the attempt as a retryable error — a runaway upstream or a decompression bomb (the gateway asks for gzip
    /// and Brotli) never grows the gateway's memory past it. A stream is bounded per event instead (4 MiB a line).
    /// </summary>
    [Range(1024, int.MaxValue - 1)]
    public int MaxAnswerBytes { get; set; } = 64 * 1024 * 1024;

    /// <summary>Azure OpenAI: the api-version query parameter.</summary>
    public string AzureApiVersion { get; set; } = "2024-10-21";

    /// <summary>Anthropic: the anthropic-version header.</summary>
    public string AnthropicVersion { get; set; } = "2023-06-01";

    /// <summary>
    /// OpenAI-format adapters: leave out Anthropic's own members (<c>cache_control</c>, a tool result's <c>is_error</c>,
    /// Claude's <c>thinking_blocks</c>, the <c>thinking</c> parameter) that Anthropic-format clients and Claude-minded
    /// callers send. Null (the default): left out for <c>OpenAI</c> and <c>AzureOpenAI</c>, whose strict schemas refuse
    /// them, and sent to <c>OpenAICompatible</c> endpoints (routers in front of Claude read them); set true for a strict
    /// OpenAI-compatible endpoint that answers 400 to them.
    /// </summary>
    public bool? StripAnthropicMembers { get; set; }

    /// <summary>
    /// OpenAI-format adapters: how tool-call ids from other models (in a conversation's earlier steps) are written for
    /// this upstream, whose rules may refuse them. Null (the default): <see cref="ToolCallIdRule.OpenAI"/> for
    /// <c>OpenAI</c> and <c>AzureOpenAI</c>, <see cref="ToolCallIdRule.Mistral"/> for a base URL on
    /// <c>api.mistral.ai</c>, else <see cref="ToolCallIdRule.AsSent"/>.
    /// </summary>
    public ToolCallIdRule? ToolCallIds { get; set; }

    /// <summary>
    /// OpenAI-format adapters: a text completion (<c>/v1/completions</c>) goes to the upstream's own <c>/completions</c>
    /// route, the caller's body as sent (suffix, echo, log probabilities, token ids and the server's own members such as
    /// vLLM's <c>top_k</c> all kept). False: it is asked as a chat completion, the prompt its one user message. Null (the
    /// default): native for <c>OpenAICompatible</c> endpoints (vLLM, Ollama, llama.cpp and TGI serve the route for every
    /// model), and for <c>OpenAI</c> and <c>AzureOpenAI</c> only for the models that have it (<c>gpt-3.5-turbo-instruct</c>,
    /// <c>davinci-002</c>, <c>babbage-002</c>) — their chat models are asked as chat.
    /// </summary>
    public bool? NativeTextCompletions { get; set; }

    /// <summary>Anthropic requires max_tokens; this is sent when the request sets none.</summary>
    [Range(1, 1_000_000)]
    public int DefaultMaxTokens { get; set; } = 4096;

    /// <summary>Extra headers sent with every request (never secrets: use <see cref="ApiKeyEnvironmentVariable"/>).</summary>
    public Dictionary<string, string> Headers { get; set; } = [];
}

/// <summary>
/// How an OpenAI-format upstream takes tool-call ids that another model made (<see cref="ProviderOptions.ToolCallIds"/>).
/// An id that does not fit is rewritten the same way every time (a call and its result still pair); callers always get
/// the ids their upstream gave.
/// </summary>
public enum ToolCallIdRule
{
    /// <summary>Every id as it came (Kimi needs its own back as they were).</summary>
    AsSent,

    /// <summary>At most 40 characters (OpenAI's limit: a longer id is a 400).</summary>
    OpenAI,

    /// <summary>Exactly 9 letters and digits (Mistral's rule: any other id is a 400).</summary>
    Mistral,
}

public static class ProviderTypes
{
    public const string Simulated = "Simulated";
    public const string Custom = "Custom";
    public const string OpenAI = "OpenAI";
    public const string OpenAICompatible = "OpenAICompatible";
    public const string AzureOpenAI = "AzureOpenAI";
    public const string Anthropic = "Anthropic";
}
