using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using PipelineGateway.Admission;
using PipelineGateway.Routing;

namespace PipelineGateway.Server;

/// <summary><c>POST /v1/chat/completions</c>: OpenAI format in and out, SSE when <c>stream: true</c>.</summary>
internal sealed class ChatCompletionsEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, ModelCatalog catalog, AdmissionRateLimiter limiter)
{
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();
    private static readonly byte[] KeepAlive = ": keep-alive\n\n"u8.ToArray();
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();

    public async Task HandleAsync(HttpContext ctx)
    {
        var key = keys.Authenticate(ctx.Request);
        if (keys.Required && key is null)
        {
            await OpenAIErrors.WriteAsync(ctx, new UnauthorizedException("Missing or invalid gateway key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."));
            return;
        }

        if (ctx.Request.ContentLength > options.MaxRequestBodyBytes)
        {
            await WriteTooLargeAsync(ctx);
            return;
        }

        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ChatCompletionRequest? request;
        try
        {
            request = await JsonBody.ReadAsync(ctx.Request.BodyReader, GatewayJsonContext.Default.ChatCompletionRequest, ctx.RequestAborted);
        }
        catch (JsonException ex)
        {
            await OpenAIErrors.WriteAsync(ctx, new InvalidRequestException(ex.Path?.TrimStart('$', '.'), $"The request body is not valid JSON for a chat completion{(ex.Path is null ? string.Empty : $" (at {ex.Path})")}: {ex.Message}"));
            return;
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == 413)
        {
            await WriteTooLargeAsync(ctx);
            return;
        }

        if (request is null)
        {
            await OpenAIErrors.WriteAsync(ctx, new InvalidRequestException(null, "The request body is empty."));
            return;
        }

        if (key is { AllowedModels.Count: > 0 } && catalog.TryResolve(request.Model ?? string.Empty, out var group)
            && !key.AllowedModels.Any(m => catalog.TryResolve(m, out var allowed) && ReferenceEquals(allowed, group)))
        {
            await OpenAIErrors.WriteAsync(ctx, 403, new OpenAIError { Message = $"This key may not use the model '{request.Model}'.", Type = "permission_error", Param = "model", Code = "model_not_allowed" });
            return;
        }

        if (!ApplyHeaders(ctx.Request, request, key, out var headerError))
        {
            await OpenAIErrors.WriteAsync(ctx, headerError!);
            return;
        }

        ctx.Response.Headers["x-request-id"] = ctx.TraceIdentifier;
        if (request.Stream == true)
        {
            await StreamAsync(ctx, request);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, ctx.RequestAborted);
            WriteGatewayHeaders(ctx, request, response.Gateway);
            await JsonBody.WriteAsync(ctx.Response, response, GatewayJsonContext.Default.ChatCompletionResponse, ctx.RequestAborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            WriteRateLimitHeaders(ctx, request, ex);
            await OpenAIErrors.WriteAsync(ctx, ex);
        }
    }

    private Task WriteTooLargeAsync(HttpContext ctx) =>
        OpenAIErrors.WriteAsync(ctx, 413, new OpenAIError { Message = $"The request body is larger than {options.MaxRequestBodyBytes} bytes.", Type = "invalid_request_error", Code = "request_too_large" });

    private async Task StreamAsync(HttpContext ctx, ChatCompletionRequest request)
    {
        var includeUsage = request.StreamOptions?.IncludeUsage == true;
        await using var chunks = queue.StreamAsync(request, SubmitMode.FailFast, ctx.RequestAborted).GetAsyncEnumerator(ctx.RequestAborted);
        var started = false;
        try
        {
            while (true)
            {
                var next = chunks.MoveNextAsync().AsTask();
                if (!started)
                {
                    // Comment keep-alives until the first token: long-thinking models otherwise trip idle timeouts.
                    while (await Task.WhenAny(next, Task.Delay(options.StreamKeepAlive, ctx.RequestAborted)) != next)
                    {
                        StartSse(ctx, request, null);
                        started = true;
                        await ctx.Response.Body.WriteAsync(KeepAlive, ctx.RequestAborted);
                        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
                    }
                }

                if (!await next)
                {
                    break;
                }

                var chunk = chunks.Current;
                if (!started || chunk.Gateway is not null)
                {
                    StartSse(ctx, request, chunk.Gateway);
                    started = true;
                }

                if (chunk.Usage is not null && !includeUsage)
                {
                    if (chunk.Choices.Count == 0)
                    {
                        continue; // the usage-only chunk the caller did not ask for
                    }

                    chunk.Usage = null;
                }

                await WriteDataAsync(ctx, JsonSerializer.SerializeToUtf8Bytes(chunk, GatewayJsonContext.Default.ChatCompletionChunk));
            }

            await ctx.Response.Body.WriteAsync(Done, ctx.RequestAborted);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            if (ctx.RequestAborted.IsCancellationRequested)
            {
                return; // the client went away; the upstream call was cancelled with it
            }

            if (!ctx.Response.HasStarted)
            {
                WriteRateLimitHeaders(ctx, request, ex);
                await OpenAIErrors.WriteAsync(ctx, ex);
                return;
            }

            // Output already went out: the error travels in the stream, as OpenAI does.
            var (_, error, _) = OpenAIErrors.Map(ex);
            await WriteDataAsync(ctx, JsonSerializer.SerializeToUtf8Bytes(new OpenAIErrorBody { Error = error }, ServerJsonContext.Default.OpenAIErrorBody));
        }
    }

    private void StartSse(HttpContext ctx, ChatCompletionRequest request, GatewayResponseInfo? info)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["x-accel-buffering"] = "no";
        WriteGatewayHeaders(ctx, request, info);
    }

    private static async Task WriteDataAsync(HttpContext ctx, byte[] json)
    {
        await ctx.Response.Body.WriteAsync(DataPrefix, ctx.RequestAborted);
        await ctx.Response.Body.WriteAsync(json, ctx.RequestAborted);
        await ctx.Response.Body.WriteAsync(EventEnd, ctx.RequestAborted);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
    }

    private void WriteGatewayHeaders(HttpContext ctx, ChatCompletionRequest request, GatewayResponseInfo? info)
    {
        if (info is not null)
        {
            var h = ctx.Response.Headers;
            h["x-gateway-provider"] = info.Provider;
            h["x-gateway-cache"] = info.Cached ? "hit" : "miss";
            h["x-gateway-attempts"] = Math.Max(1, info.Attempts.Count).ToString(CultureInfo.InvariantCulture);
            h["x-gateway-cost-usd"] = info.Cost.ToString("0.##########", CultureInfo.InvariantCulture);
        }

        WriteRateLimitHeaders(ctx, request);
    }

    /// <summary>
    /// x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the tightest rule of each unit; when every deployment
    /// is rate-limited by its provider, nothing is left until the first is free again, whatever the gateway's own rules say.
    /// </summary>
    private void WriteRateLimitHeaders(HttpContext ctx, ChatCompletionRequest request, Exception? error = null)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }

        if (error is RateLimitedException { Attempts.Count: > 0 } providers)
        {
            ctx.Response.Headers["x-ratelimit-remaining-requests"] = "0";
            ctx.Response.Headers["x-ratelimit-reset-requests"] = Duration(providers.RetryAfter);
            return;
        }

        if (!limiter.IsEnabled)
        {
            return;
        }

        // One status read (it takes the partition's lock) serves both units.
        var statuses = limiter.GetStatus(request);
        WriteTightest(ctx.Response.Headers, statuses, RateLimitUnit.Requests, "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests");
        WriteTightest(ctx.Response.Headers, statuses, RateLimitUnit.Tokens, "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens");
    }

    private static void WriteTightest(IHeaderDictionary headers, IReadOnlyList<RateLimitStatus> statuses, RateLimitUnit unit, string limit, string remaining, string reset)
    {
        RateLimitStatus? tightest = null;
        foreach (var s in statuses)
        {
            if (s.Unit == unit && (tightest is null || s.Remaining < tightest.Value.Remaining))
            {
                tightest = s;
            }
        }

        if (tightest is { } t)
        {
            headers[limit] = t.Limit.ToString(CultureInfo.InvariantCulture);
            headers[remaining] = t.Remaining.ToString(CultureInfo.InvariantCulture);
            headers[reset] = Duration(t.ResetAfter);
        }
    }

    /// <summary>Per-request controls from headers; the key's id scopes rate limits, budgets and the cache.</summary>
    private static bool ApplyHeaders(HttpRequest http, ChatCompletionRequest request, GatewayKeyOptions? key, out GatewayException? error)
    {
        error = null;
        var options = request.Gateway ?? new GatewayRequestOptions();
        options.RateLimitKey = key?.Id;
        options.CacheNamespace = key?.Id;
        switch (http.Headers["x-gateway-cache"].ToString().ToLowerInvariant())
        {
            case "":
                break;
            case "no-cache":
                options.NoCache = true;
                break;
            case "no-store":
                options.NoStore = true;
                break;
            default:
                error = new InvalidRequestException("x-gateway-cache", "The header 'x-gateway-cache' must be 'no-cache' or 'no-store'.");
                return false;
        }

        if (http.Headers["x-gateway-cache-ttl"].ToString() is { Length: > 0 } ttl)
        {
            if (!double.TryParse(ttl, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) || seconds <= 0)
            {
                error = new InvalidRequestException("x-gateway-cache-ttl", "The header 'x-gateway-cache-ttl' must be a positive number of seconds.");
                return false;
            }

            options.CacheTtl = TimeSpan.FromSeconds(seconds);
        }

        if (http.Headers["x-gateway-timeout-ms"].ToString() is { Length: > 0 } timeout)
        {
            if (!double.TryParse(timeout, NumberStyles.Float, CultureInfo.InvariantCulture, out var ms) || ms <= 0)
            {
                error = new InvalidRequestException("x-gateway-timeout-ms", "The header 'x-gateway-timeout-ms' must be a positive number of milliseconds.");
                return false;
            }

            options.Timeout = TimeSpan.FromMilliseconds(ms);
        }

        switch (http.Headers["x-gateway-priority"].ToString().ToLowerInvariant())
        {
            case "" or "interactive":
                break;
            case "batch":
                options.Priority = RequestPriority.Batch;
                break;
            default:
                error = new InvalidRequestException("x-gateway-priority", "The header 'x-gateway-priority' must be 'interactive' or 'batch'.");
                return false;
        }

        request.Gateway = options;
        return true;
    }

    private static string Duration(TimeSpan t) => t.TotalSeconds >= 1
        ? $"{Math.Ceiling(t.TotalSeconds).ToString(CultureInfo.InvariantCulture)}s"
        : $"{Math.Ceiling(t.TotalMilliseconds).ToString(CultureInfo.InvariantCulture)}ms";
}
