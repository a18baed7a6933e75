using System.Net;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Net.Http.Headers;

namespace PipelineGateway.Server;

/// <summary>Who is calling, and how: set by the <see cref="FrontDoor"/> for the endpoints behind it.</summary>
internal sealed record GatewayCaller(GatewayKeyOptions? Key, RequestHeaders Headers);

/// <summary>
/// The one request pipeline in front of every route, so no route can forget a check:
/// <list type="number">
/// <item><c>/healthz</c> and <c>/readyz</c> pass, open to all;</item>
/// <item>a client address with too many failed key checks in the last minute is refused (429, <c>Retry-After</c>);</item>
/// <item>with keys configured, every other route needs one (401 otherwise, counted as a failure); the admin surface
/// (<c>/v1/gateway/*</c>, <c>/metrics</c>, <c>/dashboard/events</c>; the <c>/dashboard</c> page is a data-free shell) needs an admin key (403 otherwise);</item>
/// <item>a body must be JSON (415 otherwise), uncompressed (415) and within the size limit (413);</item>
/// <item>every <c>x-gateway-*</c> header is parsed, a bad one answered 400 naming it.</item>
/// </list>
/// Errors are written in the route's own shape (<see cref="RouteErrors"/>). The model a key may use is checked by the
/// endpoints once the body is read (<see cref="GatewayKeys.MayUse"/>).
/// </summary>
internal sealed partial class FrontDoor(RequestDelegate next, GatewayKeys keys, ServerOptions options, AuthThrottle throttle, LargeBodies largeBodies, ILogger<FrontDoor> logger)
{
    /// <remarks>Not an async method: every branch hands back the task of what it calls (no state machine per request).</remarks>
    public Task InvokeAsync(HttpContext ctx)
    {
        // Every answer says what it is and may not be sniffed as anything else: error bodies echo what the client sent
        // (a path, a model name), and JSON is written with HTML characters unescaped (Serialization/WireJson.cs).
        ctx.Response.Headers.XContentTypeOptions = "nosniff";
        var path = ctx.Request.Path;
        // The dashboard's page is a static shell holding no data (it asks for the admin key when keys are configured and
        // sends it on its data stream, /dashboard/events, which is admin-only like the rest of the admin surface).
        if (path.Equals("/healthz", StringComparison.OrdinalIgnoreCase) || path.Equals("/readyz", StringComparison.OrdinalIgnoreCase)
            || (path.Equals("/dashboard", StringComparison.OrdinalIgnoreCase) && HttpMethods.IsGet(ctx.Request.Method)))
        {
            return next(ctx);
        }

        var address = ctx.Connection.RemoteIpAddress ?? IPAddress.None;
        if (throttle.BlockedFor(address) is { } wait)
        {
            return RouteErrors.WriteAsync(ctx, 429, "rate_limit_error", "too_many_auth_failures",
                $"Too many failed key checks from this address; retry after {Math.Ceiling(wait.TotalSeconds)} s.", retryAfter: wait);
        }

        GatewayKeyOptions? key = null;
        if (keys.Required)
        {
            key = keys.Authenticate(ctx.Request);
            if (key is null)
            {
                throttle.Failed(address);
                LogRejectedKey(logger, address, path.Value ?? string.Empty);
                return RouteErrors.WriteAsync(ctx, 401, "authentication_error", "invalid_api_key",
                    "Missing or invalid gateway key: send it as 'Authorization: Bearer <key>', 'x-api-key: <key>' or 'api-key: <key>'.");
            }

            if (IsAdminSurface(path) && !key.Admin)
            {
                return RouteErrors.WriteAsync(ctx, 403, "permission_error", "admin_key_required", "This endpoint needs an admin gateway key (Gateway:Server:Keys[].Admin).");
            }
        }

        var large = 0L; // a POST's body counted toward MaxBodyBytesInFlight (0: small, or none)
        if (HttpMethods.IsPost(ctx.Request.Method))
        {
            if (!IsJson(ctx.Request.ContentType) && !(IsUpload(path) && IsMultipart(ctx.Request.ContentType)) && !IsBodilessAction(ctx.Request))
            {
                return RouteErrors.WriteAsync(ctx, 415, "invalid_request_error", "unsupported_media_type", IsUpload(path)
                    ? $"The request body must be a multipart form (Content-Type: multipart/form-data) with its files; got '{Shorten(ctx.Request.ContentType ?? "none")}'."
                    : $"The request body must be JSON (Content-Type: application/json); got '{Shorten(ctx.Request.ContentType ?? "none")}'.");
            }

            if (ctx.Request.ContentLength > options.MaxRequestBodyBytes && !(IsUpload(path) && ctx.Request.ContentLength <= UploadBound(path, options))
                && !(IsMessageBatch(path) && ctx.Request.ContentLength <= options.MaxBatchFileBytes))
            {
                return WriteTooLargeAsync(ctx, options);
            }

            // A compressed body is not read as JSON: its bytes were a misleading "not valid UTF-8 (at byte 1)". (Not
            // decompressed: no SDK compresses its requests, and a small gzip can hold a large body.)
            if (ctx.Request.Headers.ContentEncoding is { Count: > 0 } encoding && !IsIdentity(encoding))
            {
                return RouteErrors.WriteAsync(ctx, 415, "invalid_request_error", "unsupported_content_encoding",
                    $"A compressed request body is not accepted (Content-Encoding: '{Shorten(encoding.ToString())}'); send the JSON uncompressed.");
            }

            large = LargeBodyBytes(ctx.Request, path);
        }

        RequestHeaders headers;
        try
        {
            headers = RequestHeaders.Parse(ctx.Request.Headers);
        }
        catch (InvalidRequestException ex)
        {
            return RouteErrors.WriteAsync(ctx, ex);
        }

        ctx.Features.Set(new GatewayCaller(key, headers));
        return large > 0 ? ServeLargeAsync(ctx, large) : large < 0 ? ServeUnannouncedAsync(ctx) : next(ctx);
    }

    /// <summary>
    /// What a request's body counts toward the large bodies' bound: its length when announced and large, -1 when sent
    /// without one (chunked: counted as it arrives, <see cref="ServeUnannouncedAsync"/>), else nothing.
    /// </summary>
    private static long LargeBodyBytes(HttpRequest request, PathString path)
    {
        if (IsBatchFile(path) || IsMessageBatch(path))
        {
            return 0; // batch bodies go to disk as they are read
        }

        return request.ContentLength is { } length ? (length < LargeBodies.From ? 0 : length) : request.Headers.ContainsKey("Transfer-Encoding") ? -1 : 0;
    }

    /// <summary>
    /// A large body's request, served within <see cref="ServerOptions.MaxBodyBytesInFlight"/> (one alone always is),
    /// else a 503 with <c>Retry-After</c>: a flood of large bodies — each held in memory, parsed and sent on, a few times
    /// its size — cannot take the process's memory, and small requests are never refused for it.
    /// </summary>
    private async Task ServeLargeAsync(HttpContext ctx, long bytes)
    {
        if (!largeBodies.TryAdd(bytes))
        {
            await WriteBusyAsync(ctx, largeBodies.BusyMessage);
            return;
        }

        var counted = new CountedUntilAnswered(() => largeBodies.Release(bytes));
        counted.ReleaseWhenAnswered(ctx);
        try
        {
            await next(ctx);
        }
        finally
        {
            counted.Release();
        }
    }

    /// <summary>
    /// A body sent without a length (chunked: .NET's <c>PostAsJsonAsync</c>, a streamed upload) counts toward
    /// <see cref="ServerOptions.MaxBodyBytesInFlight"/> by what has arrived (<see cref="LargeBodies.Counting"/>): it was
    /// counted as its route's whole bound from its headers, so two small chunked requests at once took the default room
    /// and a third was a 503. One that outgrows the room left is refused as it is read, by its route like any refused body
    /// (<see cref="JsonBody.WriteBodyFailureAsync"/>).
    /// </summary>
    private async Task ServeUnannouncedAsync(HttpContext ctx)
    {
        var body = largeBodies.Counting(ctx.Request.Body);
        ctx.Request.Body = body; // Kestrel's BodyReader then reads through it too
        var counted = new CountedUntilAnswered(() => largeBodies.Release(body));
        counted.ReleaseWhenAnswered(ctx);
        try
        {
            await next(ctx);
        }
        finally
        {
            counted.Release();
        }
    }

    /// <summary>
    /// A large body's count, given back once: as its whole answer starts, or when its request ends. Given back only at
    /// the request's end, it was still counted when the client already had the answer — a client sending large bodies
    /// one after another found the last one's still there (a 503 when two do not fit in the bound). A stream's request
    /// is held while the stream runs, so its count stays until the stream ends.
    /// </summary>
    internal sealed class CountedUntilAnswered(Action release)
    {
        private int _released;

        public void ReleaseWhenAnswered(HttpContext ctx) => ctx.Response.OnStarting(static state =>
        {
            var (self, response) = ((CountedUntilAnswered, HttpResponse))state;
            if (response.ContentType?.StartsWith("text/event-stream", StringComparison.OrdinalIgnoreCase) != true)
            {
                self.Release();
            }

            return Task.CompletedTask;
        }, (this, ctx.Response));

        public void Release()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                release();
            }
        }
    }

    /// <summary>The 503 for a large body past <see cref="ServerOptions.MaxBodyBytesInFlight"/> (retried by the SDKs).</summary>
    internal static Task WriteBusyAsync(HttpContext ctx, string message) =>
        RouteErrors.WriteAsync(ctx, 503, "server_overloaded", "server_busy", message, retryAfter: TimeSpan.FromSeconds(1));

    public static Task WriteTooLargeAsync(HttpContext ctx, ServerOptions options)
    {
        var path = ctx.Request.Path;
        return IsBatchFile(path)
            ? RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "file_too_large", $"The file is larger than {options.MaxBatchFileBytes} bytes.", "file")
            : IsMessageBatch(path)
                ? RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "request_too_large", $"The batch is larger than {options.MaxBatchFileBytes} bytes (Gateway:Server:MaxBatchFileBytes).")
                : RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "request_too_large", $"The request body is larger than {(IsUpload(path) ? options.MaxUploadBytes : options.MaxRequestBodyBytes)} bytes.");
    }

    /// <summary>
    /// The most a route's body may be (Kestrel's bound, set per request): a batch file's upload or a message batch's
    /// create as <see cref="ServerOptions.MaxBatchFileBytes"/> says, another upload <see cref="ServerOptions.MaxUploadBytes"/>,
    /// anything else <see cref="ServerOptions.MaxRequestBodyBytes"/>.
    /// </summary>
    internal static long BodyBound(PathString path, ServerOptions options) =>
        IsUpload(path) ? UploadBound(path, options) : IsMessageBatch(path) ? options.MaxBatchFileBytes : options.MaxRequestBodyBytes;

    /// <summary>The routes that take a multipart upload (speech to text, image edits, batch files) rather than JSON.</summary>
    internal static bool IsUpload(PathString path) =>
        path.Value is { } p && (p.EndsWith("/audio/transcriptions", StringComparison.OrdinalIgnoreCase) || p.EndsWith("/audio/translations", StringComparison.OrdinalIgnoreCase)
            || p.EndsWith("/images/edits", StringComparison.OrdinalIgnoreCase) || IsBatchFile(path));

    /// <summary>The Files API's upload (<c>POST /v1/files</c>, Azure's <c>/openai/files</c>): its bound is <see cref="ServerOptions.MaxBatchFileBytes"/>.</summary>
    private static bool IsBatchFile(PathString path) => path.Equals("/v1/files", StringComparison.OrdinalIgnoreCase) || path.Equals("/openai/files", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Anthropic's message batch create (<c>POST /v1/messages/batches</c>): JSON, bound as a batch file is
    /// (<see cref="ServerOptions.MaxBatchFileBytes"/>: Anthropic's own bound is 256 MB), and read a request at a time.
    /// </summary>
    private static bool IsMessageBatch(PathString path) => path.Equals("/v1/messages/batches", StringComparison.OrdinalIgnoreCase);

    private static long UploadBound(PathString path, ServerOptions options) =>
        IsBatchFile(path) ? options.MaxBatchFileBytes + Batches.BatchApi.FormSlack : options.MaxUploadBytes;

    /// <summary>A POST that is an action on an object and carries nothing (<c>/v1/batches/{id}/cancel</c>, as the SDKs send it: no body, no type).</summary>
    private static bool IsBodilessAction(HttpRequest request) =>
        request.ContentLength is null or 0 && !request.Headers.ContainsKey("Transfer-Encoding") && request.Path.Value is { } p && p.EndsWith("/cancel", StringComparison.OrdinalIgnoreCase);

    private static bool IsMultipart(string? contentType) =>
        MediaTypeHeaderValue.TryParse(contentType, out var media) && media.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase) && media.Boundary.Length > 0;

    private static bool IsAdminSurface(PathString path) =>
        path.StartsWithSegments("/v1/gateway", StringComparison.OrdinalIgnoreCase)
        || path.StartsWithSegments("/metrics", StringComparison.OrdinalIgnoreCase)
        || path.StartsWithSegments("/dashboard", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// JSON or a <c>+json</c> type. What SDKs send (<c>application/json</c>, with or without <c>; charset=utf-8</c>) is
    /// recognised without parsing: the parse allocated a header value object per request (~90 B, docs/benchmarks.md).
    /// </summary>
    internal static bool IsJson(string? contentType) =>
        contentType is not null && (contentType.Equals("application/json", StringComparison.OrdinalIgnoreCase)
            || contentType.Equals("application/json; charset=utf-8", StringComparison.OrdinalIgnoreCase))
        || IsJsonParsed(contentType);

    /// <summary>The full check, by the media type's own parser.</summary>
    internal static bool IsJsonParsed(string? contentType) =>
        MediaTypeHeaderValue.TryParse(contentType, out var media)
        && media.MediaType.Value is { } type
        && (type.Equals("application/json", StringComparison.OrdinalIgnoreCase) || type.EndsWith("+json", StringComparison.OrdinalIgnoreCase));

    private static bool IsIdentity(Microsoft.Extensions.Primitives.StringValues encoding) =>
        encoding.All(static v => string.IsNullOrWhiteSpace(v) || v.Trim().Equals("identity", StringComparison.OrdinalIgnoreCase));

    private static string Shorten(string text) => text.Length <= 64 ? text : text[..64] + "…";

    [LoggerMessage(EventId = 110, Level = LogLevel.Information, Message = "Rejected a missing or invalid gateway key from {Address} for {Path}.")]
    private static partial void LogRejectedKey(ILogger logger, IPAddress address, string path);
}

/// <summary>
/// Failed key checks per client address over the last minute (<c>Gateway:Server:MaxAuthFailuresPerMinute</c>); an
/// address past the limit is refused until its oldest failure is a minute old. Memory is bounded: at most
/// <see cref="MaxAddresses"/> addresses are tracked (the least recently failing are forgotten first).
/// </summary>
internal sealed class AuthThrottle(ServerOptions options, TimeProvider time)
{
    public const int MaxAddresses = 10_000;
    private static readonly TimeSpan Window = TimeSpan.FromMinutes(1);
    private readonly object _lock = new();
    private readonly Dictionary<IPAddress, Failures> _failures = [];
    private readonly LinkedList<IPAddress> _recent = new();

    /// <summary>How long the address is still refused, or null when it is not.</summary>
    public TimeSpan? BlockedFor(IPAddress address)
    {
        lock (_lock)
        {
            if (!_failures.TryGetValue(address, out var entry))
            {
                return null;
            }

            var failures = entry.Times;
            var now = time.GetTimestamp();
            Expire(failures, now);
            if (failures.Count < options.MaxAuthFailuresPerMinute)
            {
                return null;
            }

            return Window - time.GetElapsedTime(failures.Peek(), now);
        }
    }

    public void Failed(IPAddress address)
    {
        lock (_lock)
        {
            var now = time.GetTimestamp();
            if (!_failures.TryGetValue(address, out var entry))
            {
                if (_failures.Count >= MaxAddresses)
                {
                    _failures.Remove(_recent.First!.Value);
                    _recent.RemoveFirst();
                }

                _failures[address] = entry = new Failures(new Queue<long>(), _recent.AddLast(address));
            }
            else
            {
                // O(1): the entry holds its own node in the recency list.
                _recent.Remove(entry.Node);
                _recent.AddLast(entry.Node);
            }

            var failures = entry.Times;
            Expire(failures, now);
            failures.Enqueue(now);
            while (failures.Count > options.MaxAuthFailuresPerMinute)
            {
                failures.Dequeue(); // only the newest MaxAuthFailuresPerMinute matter
            }
        }
    }

    private sealed record Failures(Queue<long> Times, LinkedListNode<IPAddress> Node);

    private void Expire(Queue<long> failures, long now)
    {
        while (failures.Count > 0 && time.GetElapsedTime(failures.Peek(), now) >= Window)
        {
            failures.Dequeue();
        }
    }
}
