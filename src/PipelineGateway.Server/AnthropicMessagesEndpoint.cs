using System.Text.Json;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server;

/// <summary>
/// <c>POST /v1/messages</c>: the Anthropic Messages format in and out (SSE events too), routed through the same
/// pipeline to any provider. The request is read by the one Anthropic codec (<see cref="AnthropicCodec"/>: every
/// malformed or unsupported field is a 400 in Anthropic's shape naming it) and translated to the canonical form; the
/// answer is translated back.
/// </summary>
internal sealed class AnthropicMessagesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, Routing.ModelCatalog catalog, Responses.ResponsesStore store, ILogger<AnthropicMessagesEndpoint> logger) : IDisposable
{
    /// <summary>
    /// Claude's counts each key may ask for (<see cref="ServerOptions.CountTokensPerMinute"/>): a token bucket per key
    /// id, from System.Threading.RateLimiting (idle buckets — full again — are dropped by the library; keys are the
    /// configured ones, so the partitions are bounded). Null when every count is the tokenizer's.
    /// </summary>
    private readonly PartitionedRateLimiter<string>? _upstreamCounts = options.CountTokensPerMinute <= 0 ? null : PartitionedRateLimiter.Create<string, string>(
        key => RateLimitPartition.GetTokenBucketLimiter(key, _ => new TokenBucketRateLimiterOptions
        {
            TokenLimit = options.CountTokensPerMinute,
            TokensPerPeriod = options.CountTokensPerMinute,
            ReplenishmentPeriod = TimeSpan.FromMinutes(1),
            QueueLimit = 0,
            AutoReplenishment = true,
        }),
        StringComparer.Ordinal);

    public void Dispose() => _upstreamCounts?.Dispose();

    public async Task HandleAsync(HttpContext ctx)
    {
        // Key, content type, size and x-gateway-* headers were checked by the front door.
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted; // read once: Kestrel takes a lock on every read of it
        if (await ReadAsync(ctx, caller, counting: false, aborted) is not { } request)
        {
            return;
        }

        ServerSubmit.Identify(ctx, request, "request-id");
        var scope = Responses.ResponsesStore.ScopeOf(caller.Key);
        await ToolCallRecall.RecallAsync(store, scope, request, aborted); // tool_use blocks have no place for a call's extra members
        if (request.Stream == true)
        {
            await StreamAsync(ctx, request, scope, aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            await ToolCallRecall.RememberAsync(store, scope, request, response);
            headers.WriteGatewayHeaders(ctx, request, response.Gateway);
            await JsonBody.WriteAsync(ctx.Response, AnthropicResponses.ToAnthropic(response), AnthropicJsonContext.Default.AnthropicMessage, aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await RouteErrors.WriteAsync(ctx, ex);
        }
    }

    /// <summary>
    /// <c>POST /v1/messages/count_tokens</c> (Claude Code asks it every turn, to manage its context): the request's input
    /// tokens as <c>{"input_tokens": N}</c>. Claude's own count when the model's group has an Anthropic deployment (exact,
    /// free, not a chat call: no worker, budget or log row), at most <see cref="ServerOptions.CountTokensPerMinute"/> a
    /// minute per key; else — past that rate, or when Claude cannot answer it — the gateway's tokenizer (an estimate). Never a made-up number: Claude Code falls back to its own estimate only on an error.
    /// <c>x-gateway-token-count</c> says which (<c>upstream</c>, <c>tokenizer</c>).
    /// </summary>
    public async Task HandleCountAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        if (await ReadAsync(ctx, caller, counting: true, aborted) is not { } request)
        {
            return;
        }

        if (!catalog.TryResolve(request.Model, out var group))
        {
            await RouteErrors.WriteAnthropicAsync(ctx, 404, "not_found_error", catalog.Knows(request.Model)
                ? "model: " + catalog.NotFound(request.Model).Message // a wildcard with no room left
                : $"model: the model '{ProviderException.Quoted(request.Model)}' is not a model group or alias of this gateway.");
            return;
        }

        ServerSubmit.Identify(ctx, request, "request-id");
        int? tokens = null;
        var claude = Array.Find(group.DeploymentArray, static d => d.Pool.Provider is AnthropicChatProvider);
        using var permit = claude is null ? null : _upstreamCounts?.AttemptAcquire(caller.Key?.Id ?? string.Empty);
        if (claude is not null && permit is { IsAcquired: true })
        {
            try
            {
                tokens = await ((AnthropicChatProvider)claude.Pool.Provider).CountTokensAsync(new ProviderRequest(request, claude.Model), aborted);
            }
            catch (ProviderException ex) when (ex.Outcome == AttemptOutcome.NonRetryableError && !ex.NotSent)
            {
                // Claude says the request is wrong: so is the caller's messages request; say so, in Claude's words.
                await RouteErrors.WriteAnthropicAsync(ctx, ex.StatusCode ?? 400, "invalid_request_error", ex.UpstreamMessage ?? ex.Message);
                return;
            }
            catch (ProviderException)
            {
                // Unreachable, overloaded, a key it refuses, a request it has no form for: the tokenizer's count instead.
            }
        }

        ctx.Response.Headers["x-gateway-token-count"] = tokens is null ? "tokenizer" : "upstream";
        tokens ??= Admission.TokenCounter.CountPrompt(request, (claude ?? group.DeploymentArray[0]).Model);
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync($$"""{"input_tokens":{{tokens}}}""", aborted);
    }

    /// <summary>The body read by the Anthropic codec and the key's model checked; null once the error is written.</summary>
    private async Task<ChatCompletionRequest?> ReadAsync(HttpContext ctx, GatewayCaller caller, bool counting, CancellationToken aborted)
    {
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ChatCompletionRequest request;
        try
        {
            var parsed = counting
                ? await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => AnthropicCodec.ParseCount(body), aborted)
                : await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => AnthropicCodec.Parse(body), aborted);
            request = AnthropicCodec.ToCanonical(parsed);
        }
        catch (AnthropicRequestException ex)
        {
            await RouteErrors.WriteAnthropicAsync(ctx, 400, "invalid_request_error", ex.Message);
            return null;
        }
        catch (BadHttpRequestException ex)
        {
            await JsonBody.WriteBodyFailureAsync(ctx, ex, options, logger);
            return null;
        }
        catch (InvalidRequestException ex)
        {
            await RouteErrors.WriteAsync(ctx, ex);
            return null;
        }

        if (!keys.MayUse(caller.Key, request.Model))
        {
            await RouteErrors.WriteAnthropicAsync(ctx, 403, "permission_error", $"This key may not use the model '{ProviderException.Quoted(request.Model)}'.");
            return null;
        }

        if (!TryBeta(ctx.Request.Headers["anthropic-beta"], out var beta))
        {
            await RouteErrors.WriteAnthropicAsync(ctx, 400, "invalid_request_error", "anthropic-beta: must be a comma-separated list of beta feature names (letters, digits, '-', '.'; at most 32 names of 64 characters).");
            return null;
        }

        request.Gateway = caller.Headers.ToOptions(caller.Key);
        request.Gateway.AnthropicBeta = beta;
        return request;
    }

    /// <summary>
    /// The caller's <c>anthropic-beta</c> header as one comma-separated list (null without one), or false when it is not
    /// a list of feature names: the names are Claude's to accept or refuse, their shape is checked here.
    /// </summary>
    internal static bool TryBeta(Microsoft.Extensions.Primitives.StringValues header, out string? beta)
    {
        beta = null;
        if (header.Count == 0)
        {
            return true;
        }

        var names = new List<string>();
        foreach (var value in header)
        {
            foreach (var part in (value ?? string.Empty).Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                if (part.Length > 64 || names.Count == 32 || !part.All(static c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.'))
                {
                    return false;
                }

                names.Add(part);
            }
        }

        beta = names.Count == 0 ? null : string.Join(',', names);
        return true;
    }

    private Task StreamAsync(HttpContext ctx, ChatCompletionRequest request, string scope, CancellationToken aborted)
    {
        // An Anthropic deployment's content events are written as they came (server tools' blocks, citations, indexes).
        request.Gateway!.KeepsAnthropicEvents = true;
        return NamedEventStream.WriteAsync(ctx, queue, request, new Events(request), options, time, headers, ToolCallRecall.Gather(store, scope, request), aborted);
    }

    /// <summary>The Anthropic stream writer as the named-event loop takes it.</summary>
    private sealed class Events(ChatCompletionRequest request) : INamedEventWriter
    {
        private readonly AnthropicStreamWriter _writer = new(request: request);

        public IEnumerable<(string Name, byte[] Json)> Start() => [];

        public IEnumerable<(string Name, byte[] Json)> OnChunk(ChatCompletionChunk chunk) => _writer.OnChunk(chunk);

        public IEnumerable<(string Name, byte[] Json)> Finish() => _writer.Finish();

        // As Anthropic does: an error event after the stream's start.
        public (string Name, byte[] Json) Error(int status, Exception error, string message) =>
            AnthropicStreamWriter.Error(RouteErrors.AnthropicType(status, error), message);
    }
}
