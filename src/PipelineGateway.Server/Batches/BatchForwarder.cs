using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server.Batches;

/// <summary>
/// The Batch API in a fleet (<see cref="ServerOptions.BatchInstanceUrl"/>): one instance holds the fleet's files and
/// batches, and every other instance passes each Batch API request (OpenAI's files and batches, Anthropic's message
/// batches) to it as it came — method, path, query, headers, the body streamed — and the answer back as it comes. So a
/// file uploaded through one instance behind a load balancer is there for a batch created through another, and every
/// list is whole (each instance's own directory made them 404s and partial lists).
/// <para>
/// A request is passed on only once the caller's key is checked here (the front door runs first: a bad key is this
/// instance's 401 and never reaches the holder). A passed request carries <see cref="Header"/>, a value made from the
/// fleet's key configuration (the keys' ids and hashes, which every instance shares and no caller knows): the holder
/// serves a request bearing it, and a caller cannot send it to make an instance keep its files where the fleet does not
/// look. An instance given a request bearing another value passes it on with its own, so a holder whose setting names
/// itself serves on the second hop, never loops.
/// </para>
/// Not pooled YARP: one route set, no load balancing, no transforms — a few lines over <see cref="HttpMessageInvoker"/>.
/// </summary>
internal sealed partial class BatchForwarder : IDisposable
{
    /// <summary>The header a passed request carries.</summary>
    internal const string Header = "x-pgw-batch-forwarded";

    /// <summary>
    /// Headers that belong to one connection, not to the request or answer (RFC 9110 §7.6.1), and those Kestrel writes
    /// itself. <c>Host</c> is passed as the caller sent it: what the holder writes of its own address (a message
    /// batch's <c>results_url</c>) is then the address the caller used, not an instance's inside the fleet.
    /// </summary>
    private static readonly HashSet<string> NotPassed = new(StringComparer.OrdinalIgnoreCase)
    {
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Date", "Server", "Alt-Svc", Header,
    };

    private readonly ServerOptions _options;
    private readonly Uri? _instance;
    private readonly GatewayKeys _keys;
    private volatile MarkerOf _marker;
    private readonly HttpMessageInvoker _http;
    private readonly ILogger<BatchForwarder> _logger;

    public BatchForwarder(ServerOptions options, GatewayKeys keys, ILogger<BatchForwarder> logger)
    {
        _options = options;
        _keys = keys;
        _logger = logger;
        _instance = Instance(options.BatchInstanceUrl);
        _marker = new MarkerOf(keys.Table);
        _http = new HttpMessageInvoker(new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            UseCookies = false,
            UseProxy = false,
            AutomaticDecompression = DecompressionMethods.None, // the answer is passed as it came, its Content-Encoding with it
            ConnectTimeout = TimeSpan.FromSeconds(5),
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
        });
    }

    /// <summary>The holder's base URL, or null when this instance serves the Batch API itself.</summary>
    internal static Uri? Instance(string? setting) =>
        string.IsNullOrWhiteSpace(setting) ? null : new Uri(setting.EndsWith('/') ? setting : setting + "/", UriKind.Absolute);

    /// <summary>Whether this request is passed on to the holder (else it is served here).</summary>
    public bool Passes(HttpContext ctx)
    {
        if (_instance is null)
        {
            return false;
        }

        var sent = ctx.Request.Headers[Header];
        if (sent.Count != 1 || sent[0] is not { } value)
        {
            return true;
        }

        var marker = Current().Bytes;
        Span<byte> bytes = stackalloc byte[64];
        return value.Length != marker.Length || Encoding.ASCII.GetBytes(value, bytes) != marker.Length || !CryptographicOperations.FixedTimeEquals(bytes[..marker.Length], marker);
    }

    /// <summary>The value for the keys as they now stand (made again once after the keys are reloaded).</summary>
    private MarkerOf Current()
    {
        var marker = _marker;
        if (!ReferenceEquals(marker.Table, _keys.Table))
        {
            _marker = marker = new MarkerOf(_keys.Table);
        }

        return marker;
    }

    /// <summary>The value a passed request carries, made from one set of keys.</summary>
    private sealed class MarkerOf
    {
        public MarkerOf(KeyTable table)
        {
            Table = table;
            Text = Marker(table.Keys);
            Bytes = Encoding.ASCII.GetBytes(Text);
        }

        public KeyTable Table { get; }

        public string Text { get; }

        public byte[] Bytes { get; }
    }

    /// <summary>
    /// Passes the request to the holder and its answer back. The holder cannot be reached (or fails before answering): a
    /// 503 <c>batch_instance_unavailable</c> in the route's shape, its address only in this instance's log. The answer
    /// cut once started: the connection is aborted, so the caller sees a broken transfer, never a short body as whole.
    /// </summary>
    public async Task PassAsync(HttpContext ctx)
    {
        var request = ctx.Request;
        var target = new Uri(_instance!, request.Path.ToUriComponent().TrimStart('/') + request.QueryString.ToUriComponent());
        using var message = new HttpRequestMessage(new HttpMethod(request.Method), target);
        var hasBody = request.ContentLength > 0 || (request.ContentLength is null && request.Headers.TransferEncoding.Count > 0);
        if (hasBody)
        {
            // The route's own bound, as its handler sets it here alone (Kestrel's default is MaxRequestBodyBytes: a
            // 200 MB batch file passed on was refused at 32 MiB).
            if (ctx.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
            {
                size.MaxRequestBodySize = FrontDoor.BodyBound(request.Path, _options);
            }

            message.Content = new StreamContent(request.Body, 64 * 1024);
        }

        foreach (var (name, values) in request.Headers)
        {
            if (NotPassed.Contains(name))
            {
                continue;
            }

            if (name.StartsWith("Content-", StringComparison.OrdinalIgnoreCase))
            {
                message.Content?.Headers.TryAddWithoutValidation(name, (IEnumerable<string?>)values);
            }
            else
            {
                message.Headers.TryAddWithoutValidation(name, (IEnumerable<string?>)values);
            }
        }

        message.Headers.TryAddWithoutValidation(Header, Current().Text);
        if (ctx.Connection.RemoteIpAddress is { } caller)
        {
            message.Headers.TryAddWithoutValidation("X-Forwarded-For", caller.ToString());
        }

        HttpResponseMessage answer;
        try
        {
            answer = await _http.SendAsync(message, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (HttpRequestException ex) when (Inner<BadHttpRequestException>(ex) is { } bad)
        {
            // The caller's body broke off or passed this route's bound while it was passed on: the caller's error, not the holder's.
            await JsonBody.WriteBodyFailureAsync(ctx, bad, _options, _logger).ConfigureAwait(false);
            return;
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException || (ex is OperationCanceledException && !ctx.RequestAborted.IsCancellationRequested))
        {
            LogUnreachable(_logger, _instance!, ex.Message);
            await RouteErrors.WriteAsync(ctx, 503, "server_error", "batch_instance_unavailable",
                "The gateway instance that holds this fleet's files and batches cannot be reached; try again shortly.", retryAfter: TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            return;
        }

        using (answer)
        {
            var response = ctx.Response;
            response.StatusCode = (int)answer.StatusCode;
            foreach (var (name, values) in answer.Headers.Concat(answer.Content.Headers))
            {
                if (!NotPassed.Contains(name))
                {
                    response.Headers[name] = values.ToArray();
                }
            }

            try
            {
                ctx.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
                await answer.Content.CopyToAsync(response.Body, ctx.RequestAborted).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is HttpRequestException or IOException && !ctx.RequestAborted.IsCancellationRequested)
            {
                LogCut(_logger, _instance!, ex.Message);
                if (response.HasStarted)
                {
                    ctx.Abort(); // part of the answer went out: only a broken transfer says it is not whole
                    return;
                }

                // Nothing reached the caller yet (the holder's answer broke before its first byte): a 502 in the API's
                // shape, which the SDKs retry, instead of a connection reset.
                response.Clear();
                await RouteErrors.WriteAsync(ctx, 502, "server_error", "batch_instance_unavailable",
                    "The gateway instance that holds this fleet's files and batches broke off its answer; try again shortly.", retryAfter: TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// The value a passed request carries: a hash of the fleet's key configuration (ids and hashes, in order of id), so
    /// every instance configured alike makes the same one and a caller, who knows at most its own key, none.
    /// </summary>
    internal static string Marker(IEnumerable<GatewayKeyOptions> keys)
    {
        var text = new StringBuilder("pgw-batch-forward");
        foreach (var key in keys.OrderBy(static k => k.Id, StringComparer.Ordinal))
        {
            text.Append('\n').Append(key.Id).Append(':').Append(key.Sha256.ToLowerInvariant());
        }

        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    private static T? Inner<T>(Exception ex)
        where T : Exception
    {
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            if (e is T found)
            {
                return found;
            }
        }

        return null;
    }

    public void Dispose() => _http.Dispose();

    [LoggerMessage(EventId = 140, Level = LogLevel.Warning, Message = "The Batch API instance {Instance} could not be reached: {Reason}")]
    private static partial void LogUnreachable(ILogger logger, Uri instance, string reason);

    [LoggerMessage(EventId = 141, Level = LogLevel.Warning, Message = "The Batch API instance {Instance}'s answer was cut: {Reason}")]
    private static partial void LogCut(ILogger logger, Uri instance, string reason);
}
