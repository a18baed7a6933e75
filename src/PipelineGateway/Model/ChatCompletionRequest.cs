using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway;

/// <summary>
/// A chat request in the OpenAI Chat Completions schema, the gateway's canonical model.
/// Fields the gateway does not know are kept in <see cref="AdditionalProperties"/> and carried
/// through to OpenAI-compatible upstreams untouched.
/// </summary>
public sealed class ChatCompletionRequest
{
    /// <summary>The requested model: a model group name or alias from the gateway's configuration.</summary>
    public string Model { get; set; } = string.Empty;

    public List<ChatCompletionMessage> Messages { get; set; } = [];

    public double? Temperature { get; set; }

    public double? TopP { get; set; }

    public int? MaxTokens { get; set; }

    public int? MaxCompletionTokens { get; set; }

    public StopSequences? Stop { get; set; }

    public int? N { get; set; }

    public long? Seed { get; set; }

    public List<ToolDefinition>? Tools { get; set; }

    /// <summary>"none", "auto", "required" or an object naming a function; kept as JSON.</summary>
    public JsonElement? ToolChoice { get; set; }

    /// <summary>{"type":"text"|"json_object"|"json_schema", ...}; kept as JSON.</summary>
    public JsonElement? ResponseFormat { get; set; }

    public string? User { get; set; }

    /// <summary>
    /// The end user the request names: <c>user</c> (Anthropic's <c>metadata.user_id</c> and the Responses API's
    /// <c>safety_identifier</c> are read into it), else a chat request's <c>safety_identifier</c> (OpenAI's newer name).
    /// What the request log records and per-user budgets account to.
    /// </summary>
    internal string? EndUser =>
        User ?? (AdditionalProperties?.TryGetValue("safety_identifier", out var id) == true && id.ValueKind == JsonValueKind.String ? id.GetString() : null);

    /// <summary>
    /// The end user the request is accounted to — per-user budgets and rate limits: <see cref="EndUser"/> cut to 256
    /// characters (as the request log keeps it), or null when it names none. One rule for the request and for the
    /// restore of budgets from the log (<see cref="AccountedAs"/>).
    /// </summary>
    internal string? AccountedUser => AccountedAs(EndUser);

    internal static string? AccountedAs(string? user) => string.IsNullOrEmpty(user) ? null : user.Length <= MaxAccountedUserChars ? user : user[..MaxAccountedUserChars];

    internal const int MaxAccountedUserChars = 256;

    /// <summary>
    /// The model group the request resolved to, by its name (as configured, whatever the caller's case or alias; as a
    /// wildcard made it): what rate limits partitioned by model count. Set when the request is submitted.
    /// </summary>
    internal string? RoutedModel { get; set; }

    public bool? Stream { get; set; }

    public StreamOptions? StreamOptions { get; set; }

    /// <summary>Unknown fields, carried through to OpenAI-compatible upstreams.</summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }

    /// <summary>Per-request gateway controls (deadline, cache). Never serialized upstream.</summary>
    [JsonIgnore]
    public GatewayRequestOptions? Gateway { get; set; }

    /// <summary>
    /// Set for another API's request (<c>/v1/embeddings</c>, <c>/v1/moderations</c>): its kind and body as the caller sent
    /// it, which the upstream gets (with the deployment's model) instead of a chat request; the messages then hold its
    /// inputs' text for the log (<see cref="Providers.Operations"/>). Never serialized.
    /// </summary>
    [JsonIgnore]
    internal Providers.OperationRequest? Operation { get; set; }

    /// <summary>
    /// Set for a legacy text completion (<c>/v1/completions</c>): its body as the caller sent it, which a deployment with
    /// the native route gets instead of a chat request; the messages then hold its prompt (<see cref="Providers.TextCompletions"/>).
    /// Never serialized.
    /// </summary>
    [JsonIgnore]
    internal Providers.TextCompletionRequest? TextCompletion { get; set; }

    /// <summary>
    /// A shallow copy for an upstream call: the deployment's model name and the stream flags set, everything
    /// else (messages, unknown fields) shared with the original, which is never modified.
    /// </summary>
    public ChatCompletionRequest ForUpstream(string model, bool stream)
    {
        var copy = (ChatCompletionRequest)MemberwiseClone();
        copy.Model = model;
        copy.Stream = stream ? true : null;
        if (stream)
        {
            // Ask for usage in the last chunk so streamed token counts are known.
            copy.StreamOptions = new StreamOptions { IncludeUsage = true, AdditionalProperties = StreamOptions?.AdditionalProperties };
        }
        else
        {
            copy.StreamOptions = null;
        }

        return copy;
    }

    /// <summary>The completion budget the caller asked for: <c>max_completion_tokens</c>, else <c>max_tokens</c>.</summary>
    [JsonIgnore]
    public int? RequestedCompletionTokens => MaxCompletionTokens ?? MaxTokens;

    /// <summary>
    /// The completion tokens the request may cost: the budget asked (else <paramref name="expected"/>, the group's usual
    /// answer) for every completion the upstream writes and bills — <c>n</c> choices (a text completion's <c>best_of</c>
    /// for each prompt, when more). What the token limiter and the budgets hold back before the answer says.
    /// </summary>
    internal long CompletionTokensAsked(int expected) =>
        (long)(RequestedCompletionTokens ?? expected) * Math.Max(1, Math.Max(N ?? 1, TextCompletion?.Generated ?? 1));
}

public sealed class StreamOptions
{
    public bool? IncludeUsage { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }
}

/// <summary>Per-request controls that belong to the gateway, not to the upstream.</summary>
public sealed class GatewayRequestOptions
{
    /// <summary>Overrides the configured request timeout; the deadline is stamped at admission.</summary>
    public TimeSpan? Timeout { get; set; }

    /// <summary>Skip the cache read (a fresh answer is still stored).</summary>
    public bool NoCache { get; set; }

    /// <summary>Neither read nor write the cache.</summary>
    public bool NoStore { get; set; }

    /// <summary>Overrides the configured cache TTL for the stored answer.</summary>
    public TimeSpan? CacheTtl { get; set; }

    /// <summary>Cache namespace (for example the gateway key), so tenants never share entries.</summary>
    public string? CacheNamespace { get; set; }

    /// <summary>
    /// The tenant: the partition key for rate limits, budgets and fair sharing (the HTTP front door sets the gateway
    /// key's id). Requests without one share the tenant <c>""</c>.
    /// </summary>
    public string? RateLimitKey { get; set; }

    /// <summary>Interactive (the default) or batch: under contention batch work yields to interactive work, and still progresses.</summary>
    public RequestPriority Priority { get; set; }

    /// <summary>
    /// The request's id, drawn by the HTTP front door before it submits (0: drawn at submission), so the answer's
    /// headers carry the request log's <c>request_id</c> whatever happens next — a refusal or an upstream error too.
    /// </summary>
    internal long RequestSequence { get; set; }

    /// <summary>
    /// Set by the OpenAI chat endpoint, which can write an upstream's bytes as they came: the OpenAI adapter then keeps
    /// them on each streamed chunk (<see cref="ChatCompletionChunk.EventJson"/>) and on a whole answer
    /// (<see cref="ChatCompletionResponse.UpstreamJson"/>) in the gateway's own shape. Nobody else pays the copy.
    /// </summary>
    internal bool KeepsUpstreamJson { get; set; }

    /// <summary>
    /// Set by the <c>/v1/messages</c> SSE endpoint: an Anthropic deployment's content events are kept on the chunks as they
    /// came (<see cref="ChatCompletionChunk.AnthropicEvent"/>) and written as they came.
    /// </summary>
    internal bool KeepsAnthropicEvents { get; set; }

    /// <summary>
    /// The <c>anthropic-beta</c> header of a <c>/v1/messages</c> caller (checked: comma-separated feature names), sent on
    /// to an Anthropic deployment — Claude Code asks for betas (a 1M-token context, web fetch…) that Claude serves only
    /// with it. Other deployments do not get it.
    /// </summary>
    internal string? AnthropicBeta { get; set; }
}

/// <summary>The priority class of a request; see docs/rate-limiting.md (fairness and priority).</summary>
public enum RequestPriority
{
    /// <summary>A caller is waiting for the answer (the default).</summary>
    Interactive = 0,

    /// <summary>Background work (<c>pgw batch</c>): yields to interactive work under contention, but keeps a share.</summary>
    Batch = 1,
}
