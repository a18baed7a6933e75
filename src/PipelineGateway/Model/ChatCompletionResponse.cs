using System.Text.Json;
using System.Text.Json.Serialization;

namespace PipelineGateway;

/// <summary>A whole chat completion in the OpenAI schema, plus what the gateway knows about how it was served.</summary>
public sealed class ChatCompletionResponse
{
    public string Id { get; set; } = string.Empty;

    /// <summary>The schema's object name of a whole answer.</summary>
    internal const string ObjectName = "chat.completion";

    public string Object { get; set; } = ObjectName;

    public long Created { get; set; }

    public string Model { get; set; } = string.Empty;

    public List<ChatChoice> Choices { get; set; } = [];

    public TokenUsage? Usage { get; set; }

    public string? SystemFingerprint { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }

    /// <summary>Another API's answer (embeddings, moderations): its list as bytes; the response then has no choices.</summary>
    [JsonIgnore]
    internal Providers.OperationAnswer? Operation { get; set; }

    /// <summary>How the gateway served this response (provider, attempts, latency, cache, cost).</summary>
    [JsonIgnore]
    public GatewayResponseInfo? Gateway { get; set; }

    /// <summary>The text of the first choice, or an empty string.</summary>
    [JsonIgnore]
    public string Content => Choices.Count > 0 ? Choices[0].Message?.Content?.GetText() ?? string.Empty : string.Empty;

    /// <summary>The finish reason of the first choice.</summary>
    [JsonIgnore]
    public string? FinishReason => Choices.Count > 0 ? Choices[0].FinishReason : null;

    /// <summary>
    /// The upstream's answer exactly as received, when writing those bytes says what writing this response would: the
    /// answer was in the shape the gateway writes (<see cref="AnswerJson.ReadAnswer"/>) — the chat endpoint then writes
    /// them instead of serializing the response again (issue 21; docs/benchmarks.md). Only for a request whose endpoint
    /// asked (<see cref="GatewayRequestOptions.KeepsUpstreamJson"/>); dropped by anything in the gateway that changes the
    /// answer before it is written (<see cref="Providers.ProviderAnswer"/>'s checks and fills, an estimated usage). Held
    /// in a pooled buffer the response owns until <see cref="TakeUpstreamJson"/> hands it to the one writer
    /// (<see cref="Serialization.KeptJson"/>). The response itself is always read in full: everything after the worker
    /// (cache, accounting, the request log) reads the object.
    /// </summary>
    internal ReadOnlySpan<byte> UpstreamJson => _upstreamJson.Span;

    /// <summary>True while the response holds its upstream bytes (<see cref="UpstreamJson"/>).</summary>
    internal bool HasUpstreamJson => _upstreamJson.IsHeld;

    private Serialization.KeptJson _upstreamJson;

    internal void KeepUpstreamJson(ReadOnlySpan<byte> json) => _upstreamJson.Keep(json);

    /// <summary>The response no longer writes as its upstream bytes (it was or is about to be changed).</summary>
    internal void DropUpstreamJson() => _upstreamJson.Drop();

    /// <summary>Hands the bytes' buffer to the one writer, which returns it to the pool (<see cref="Serialization.KeptJson.Take"/>).</summary>
    internal bool TakeUpstreamJson([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out byte[]? buffer, out int length) =>
        _upstreamJson.Take(out buffer, out length);
}

public sealed class ChatChoice
{
    public int Index { get; set; }

    /// <summary>Written with <c>content</c> and <c>refusal</c> always present (null when absent), as the OpenAI schema has them.</summary>
    [JsonConverter(typeof(ResponseMessageConverter))]
    public ChatCompletionMessage? Message { get; set; }

    public string? FinishReason { get; set; }

    /// <summary>Always written (null when the upstream sent none), as the OpenAI schema has it.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.Never)]
    public JsonElement? Logprobs { get; set; }

    /// <summary>
    /// Members of the choice the gateway does not model, kept and written back — Azure OpenAI's
    /// <c>content_filter_results</c>, say — so an answer says the same whether it is written as the upstream's bytes, by
    /// the gateway, or from the cache.
    /// </summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }
}

public sealed class TokenUsage
{
    public int PromptTokens { get; set; }

    public int CompletionTokens { get; set; }

    public int TotalTokens { get; set; }

    [JsonExtensionData]
    public Dictionary<string, JsonElement>? AdditionalProperties { get; set; }

    public static TokenUsage Of(int prompt, int completion) =>
        new() { PromptTokens = prompt, CompletionTokens = completion, TotalTokens = prompt + completion };
}

public static class FinishReasons
{
    public const string Stop = "stop";
    public const string Length = "length";
    public const string ToolCalls = "tool_calls";
    public const string ContentFilter = "content_filter";
}

/// <summary>What the gateway adds to every response: who served it, how, and at what cost.</summary>
public sealed class GatewayResponseInfo
{
    /// <summary>The provider that produced the answer (for a cache hit: the one that produced the cached answer).</summary>
    public required string Provider { get; init; }

    /// <summary>The upstream model name the provider was asked for.</summary>
    public required string ProviderModel { get; init; }

    /// <summary>Every attempt made for this request, in order; empty for a cache hit.</summary>
    public required IReadOnlyList<GatewayAttempt> Attempts { get; init; }

    /// <summary>Time from admission to completion.</summary>
    public TimeSpan Latency { get; init; }

    /// <summary>True when the answer came from the response cache.</summary>
    public bool Cached { get; init; }

    /// <summary>True when the answer is a copy of an identical request's, which was in flight (single-flight).</summary>
    public bool Coalesced { get; init; }

    /// <summary>
    /// What this request is charged, in USD, priced from the upstream usage: 0 for a cache hit, a coalesced request or
    /// an unpriced model. The sum over requests is the metrics' <c>total_cost</c> and what budgets were charged.
    /// </summary>
    public decimal Cost { get; init; }

    /// <summary>What the upstream call this answer was served from cost (a cache hit or a coalesced request avoided it); 0 otherwise.</summary>
    public decimal CostSaved { get; init; }

    /// <summary>True when this request made the upstream call its answer came from (not a hit, not coalesced): what is billed.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool Billed => !Cached && !Coalesced;

    private string? _requestId;

    /// <summary>The gateway's id for the request.</summary>
    public string RequestId
    {
        // Formatted on first read: most callers never look at it, and the hot path stays allocation-lean.
        get => _requestId ??= Pipeline.RequestIds.Format(RequestSequence);
        init => _requestId = value;
    }

    internal long RequestSequence { get; init; }
}
