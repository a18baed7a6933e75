using System.Net;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;

namespace PipelineGateway.Providers.Http;

/// <summary>
/// What every HTTP adapter shares: one attempt per call (no retries here: they belong to the dead-letter
/// stage), errors turned into <see cref="ProviderException"/> with the failure class, Retry-After and
/// rate-limit headers read, secrets kept out of every message, and streams read as they arrive with an
/// idle timeout on the injected clock.
/// </summary>
internal abstract partial class HttpChatProvider : ILlmProvider, IDisposable
{
    private const int MaxErrorBodyBytes = 64 * 1024;

    /// <summary>
    /// How often a success's rate-limit headers are read, at most (a failure's always are). Six header lookups and a
    /// record on every response were ~2% of what a request allocated at saturation, for a reading that nothing needs
    /// fresher than this (docs/benchmarks.md, "Peak RSS at 128 connections, and less per request").
    /// </summary>
    internal static readonly TimeSpan RateLimitsReadInterval = TimeSpan.FromMilliseconds(100);

    private volatile UpstreamRateLimits? _rateLimits;
    private long _rateLimitsReadAt = long.MinValue;

    protected HttpChatProvider(string name, HttpMessageInvoker http, ProviderOptions options, string? apiKey, TimeProvider time, ILogger logger)
    {
        Name = name;
        Http = http;
        Options = options;
        ApiKey = apiKey;
        Time = time;
        Logger = logger;
        SecretRedactor.Register(apiKey);
    }

    public string Name { get; }

    /// <summary>The rate-limit state the upstream reported last, if it reports one.</summary>
    public UpstreamRateLimits? RateLimits => _rateLimits;

    /// <summary>The provider's own connection pool and nothing around it (see <see cref="ProviderHttp"/>); disposed with the provider.</summary>
    protected HttpMessageInvoker Http { get; }

    protected ProviderOptions Options { get; }

    /// <summary>The key, read once from the environment variable the configuration names. Never logged.</summary>
    protected string? ApiKey { get; }

    protected TimeProvider Time { get; }

    protected ILogger Logger { get; }

    protected abstract HttpRequestMessage CreateRequest(ProviderRequest request, bool stream);

    /// <summary>Parses a whole (non-streamed) answer, read into memory by the caller.</summary>
    protected abstract ChatCompletionResponse ParseResponse(ReadOnlySpan<byte> body, ProviderRequest request);

    /// <summary>
    /// A reader of one stream's events (<see cref="StreamEvents"/>). The reading loop is this class's, one level of
    /// asynchronous iteration per chunk: an adapter's own iterator over the events was one more per chunk (issue 21's
    /// streaming mode).
    /// </summary>
    protected abstract StreamEvents ReadStream(ProviderRequest request);

    /// <summary>The reader of a stream whose answer came as <paramref name="mediaType"/> (the same as <see cref="ReadStream(ProviderRequest)"/> unless the provider reads some media types otherwise).</summary>
    protected virtual StreamEvents ReadStream(ProviderRequest request, string mediaType) => ReadStream(request);

    /// <summary>What an upstream's error status means for the call <paramref name="message"/> made: as classified, unless the adapter knows better.</summary>
    protected virtual ProviderException Refused(HttpRequestMessage message, ProviderException refusal) => refusal;

    /// <summary>Turns an error body into the upstream's error: message, type, code, param, and whether it is a context-length error.</summary>
    protected abstract UpstreamError ParseError(int status, string body);

    /// <summary>Keeps the rate-limit state the upstream reported: from every failure, from a success at most every <see cref="RateLimitsReadInterval"/>.</summary>
    private void ReadRateLimits(HttpResponseMessage response)
    {
        var stamp = Time.GetTimestamp();
        var last = Volatile.Read(ref _rateLimitsReadAt);
        if (response.IsSuccessStatusCode && last != long.MinValue && Time.GetElapsedTime(last, stamp) < RateLimitsReadInterval)
        {
            return;
        }

        Volatile.Write(ref _rateLimitsReadAt, stamp);
        if (UpstreamHeaders.RateLimits(response.Headers, Time.GetUtcNow()) is { } limits)
        {
            _rateLimits = limits;
        }
    }

    public async ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        using var message = CreateRequest(request, stream: false);
        var (body, status, events) = await ExchangeAsync(message, request.Deadline, cancellationToken).ConfigureAwait(false);
        return events ? await AssembleEventsAsync(body, request, status).ConfigureAwait(false) : ParseWhole(body, request, status);
    }

    /// <summary>
    /// A whole request answered as server-sent events (a server or proxy that streams whatever it is asked): the events,
    /// read as a stream's and assembled into the answer — its first choice, as a cached stream is
    /// (<see cref="Caching.StreamReplay"/>) — within the same bound as any whole answer (read already). A body cut before the
    /// provider's last event, or an event that is not the provider's, is a retryable failure as in a stream.
    /// </summary>
    private async ValueTask<ChatCompletionResponse> AssembleEventsAsync(PooledBody body, ProviderRequest request, int status)
    {
        try
        {
            var reader = ReadStream(request);
            var answer = new Caching.StreamReplay();
            using var bytes = body.AsStream();
            using var events = new SseEventReader(bytes);
            while (true)
            {
                if (!await events.MoveNextAsync(CancellationToken.None).ConfigureAwait(false))
                {
                    if (reader.EndedWhole)
                    {
                        break;
                    }

                    throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered with events that ended before {reader.LastEvent}.", status);
                }

                ChatCompletionChunk? chunk;
                bool end;
                try
                {
                    chunk = reader.Read(events.Data, out end);
                }
                catch (JsonException ex)
                {
                    throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered with an invalid event: {Serialization.JsonProblems.Describe(ex, events.Data)}.", status, inner: ex);
                }

                for (; chunk is not null; chunk = reader.Next())
                {
                    answer.Add(chunk);
                }

                if (end)
                {
                    break;
                }
            }

            return answer.ToResponse();
        }
        finally
        {
            body.Dispose();
        }
    }

    /// <summary>Parses a whole answer read into <paramref name="body"/> (then given back); JSON that is not a chat completion is a retryable failure.</summary>
    private ChatCompletionResponse ParseWhole(PooledBody body, ProviderRequest request, int status)
    {
        try
        {
            return ParseResponse(body.Span, request);
        }
        catch (JsonException ex)
        {
            throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' returned a body that is not a valid chat completion: {Serialization.JsonProblems.Describe(ex, body.Span)}.", status, inner: ex);
        }
        finally
        {
            body.Dispose();
        }
    }

    /// <summary>
    /// Sends <paramref name="message"/> and reads its whole answer into a pooled buffer (the caller disposes it): the
    /// per-attempt timeout until the answer is read, the upstream's errors as <see cref="ProviderException"/>s with
    /// their status and message (redacted), a broken body as a retryable failure.
    /// </summary>
    /// <returns>The body, the status, and whether the body is server-sent events (<c>text/event-stream</c>).</returns>
    protected async Task<(PooledBody Body, int Status, bool Events)> ExchangeAsync(HttpRequestMessage message, DateTimeOffset? deadlineAt, CancellationToken cancellationToken)
    {
        // The per-attempt timeout runs until the whole answer is read, not only until its headers.
        using var deadline = new AttemptDeadline(Time, Options.Timeout, cancellationToken, deadlineAt);
        PooledBody body;
        int status;
        bool events;
        try
        {
            HttpResponseMessage sent;
            try
            {
                sent = await SendAsync(message, deadline.Token).ConfigureAwait(false);
            }
            catch (HttpRequestException ex) when (!deadline.Token.IsCancellationRequested)
            {
                throw CouldNotReach(ex);
            }

            using var response = sent;
            await ThrowIfFailedAsync(message, response, deadline.Token).ConfigureAwait(false);
            status = (int)response.StatusCode;

            // The answer is read into a pooled buffer and parsed synchronously: an answer is small, and parsing from
            // memory skips System.Text.Json's resumable (async) reader, whose state it would otherwise allocate per call.
            body = await ResponseBody.ReadAsync(response.Content, Options.MaxAnswerBytes, deadline.Token).ConfigureAwait(false);

            // A JSON answer starts with its object: the header is read only when the body does not (off the common path).
            events = !StartsAsObject(body.Span) && MediaType(response).Equals("text/event-stream", StringComparison.OrdinalIgnoreCase);
        }
        catch (OperationCanceledException ex) when (deadline.TimedOut)
        {
            throw TimedOut(ex);
        }
        catch (Exception ex) when (BrokeOff(ex, cancellationToken))
        {
            throw new ProviderException(AttemptOutcome.RetryableError, $"The answer from '{Name}' broke off: {Why(ex)}.", inner: ex);
        }

        return (body, status, events);
    }

    private static bool StartsAsObject(ReadOnlySpan<byte> body)
    {
        var start = body.IndexOfAnyExcept(" \t\r\n"u8);
        return start >= 0 && body[start] == (byte)'{';
    }

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        // One deadline: the per-attempt timeout until the response headers, then the idle timeout, restarted by every
        // chunk, so a stream that goes quiet for StreamIdleTimeout is cancelled and reported as a timeout.
        using var deadline = new AttemptDeadline(Time, Options.Timeout, cancellationToken);
        using var message = CreateRequest(request, stream: true);
        HttpResponseMessage response;
        Stream body;
        try
        {
            response = await SendAsync(message, deadline.Token).ConfigureAwait(false);
        }
        catch (HttpRequestException ex) when (!deadline.Token.IsCancellationRequested)
        {
            throw CouldNotReach(ex);
        }
        catch (OperationCanceledException ex) when (deadline.TimedOut)
        {
            throw TimedOut(ex);
        }

        try
        {
            await ThrowIfFailedAsync(message, response, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (deadline.TimedOut)
        {
            throw TimedOut(ex);
        }

        using (response)
        {
            if (AnsweredWhole(response) || (request.Request.Operation is { Kind: OperationKind.Transcription } && MediaType(response).StartsWith("text/plain", StringComparison.OrdinalIgnoreCase)))
            {
                // (A transcription asked to stream may come whole in any of its formats: whisper-1 ignores stream.)
                // A server that does not stream (a simple mock, a proxy that buffers) answered the stream request
                // whole, as JSON: that answer, as a stream's chunks — not a "stream" without events, failed and retried.
                foreach (var chunk in Caching.StreamReplay.ToChunks(await WholeAnswerAsync(response, request, deadline, cancellationToken).ConfigureAwait(false), null, request.Request.Gateway?.KeepsAnthropicEvents == true))
                {
                    yield return chunk;
                }

                yield break;
            }

            deadline.Restart(Options.StreamIdleTimeout);
            try
            {
                body = await ResponseBody.OpenAsync(response.Content, deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException ex) when (deadline.TimedOut)
            {
                throw IdleTimeout(ex);
            }
            catch (Exception ex) when (BrokeOff(ex, cancellationToken))
            {
                throw StreamBroke(ex);
            }

            await using (body.ConfigureAwait(false))
            {
                var reader = request.Request.Operation is null ? ReadStream(request) : ReadStream(request, MediaType(response).ToString());
                if (reader is RawBodyEvents raw)
                {
                    // A body that is not events (speech's audio): its bytes as they come.
                    await foreach (var block in ReadRawAsync(body, raw, deadline, cancellationToken).ConfigureAwait(false))
                    {
                        yield return block;
                    }

                    yield break;
                }

                using var events = new SseEventReader(body);
                while (true)
                {
                    ChatCompletionChunk? chunk;
                    bool end;
                    try
                    {
                        // (Not MoveNextAsync: the body's read is awaited here, one layer fewer to resume per event.)
                        while (!events.Ended && !events.TryMoveNext())
                        {
                            events.Filled(await events.ReadAsync(deadline.Token).ConfigureAwait(false));
                        }

                        if (events.Ended)
                        {
                            if (reader.EndedWhole)
                            {
                                // The body ended cleanly after every answer finished: a server that does not send the
                                // last event (llama.cpp forks, older TGI) gave a whole answer.
                                break;
                            }

                            // The body ended without the provider's last event, before the answer finished: cut short.
                            throw new ProviderException(AttemptOutcome.RetryableError, $"The stream from '{Name}' ended before {reader.LastEvent}.");
                        }

                        chunk = reader.Read(events.Data, out end);
                    }
                    catch (OperationCanceledException ex) when (deadline.TimedOut)
                    {
                        throw IdleTimeout(ex);
                    }
                    catch (Exception ex) when (BrokeOff(ex, cancellationToken))
                    {
                        throw StreamBroke(ex);
                    }
                    catch (JsonException ex)
                    {
                        throw new ProviderException(AttemptOutcome.RetryableError, $"The stream from '{Name}' sent an invalid event: {Serialization.JsonProblems.Describe(ex, events.Data)}.", inner: ex);
                    }

                    for (; chunk is not null; chunk = reader.Next())
                    {
                        deadline.Restart(Options.StreamIdleTimeout);
                        yield return chunk;
                    }

                    if (end)
                    {
                        break;
                    }
                }
            }
        }
    }

    /// <summary>
    /// A stream request answered as JSON (<c>application/json</c> or <c>+json</c>) instead of server-sent events. Read
    /// from the raw header, once per stream: the typed <c>ContentType</c> would parse it into an object every time.
    /// </summary>
    private static bool AnsweredWhole(HttpResponseMessage response)
    {
        var type = MediaType(response);
        return type.Equals("application/json", StringComparison.OrdinalIgnoreCase) || type.EndsWith("+json", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The body's media type without its parameters (empty when none is given).</summary>
    private static ReadOnlySpan<char> MediaType(HttpResponseMessage response)
    {
        if (!response.Content.Headers.NonValidated.TryGetValues("Content-Type", out var values))
        {
            return default;
        }

        var value = values.ToString().AsSpan();
        var semicolon = value.IndexOf(';');
        return (semicolon >= 0 ? value[..semicolon] : value).Trim();
    }

    /// <summary>Reads and parses a whole answer to a stream request, with the same bounds and failures as <see cref="CompleteAsync"/>.</summary>
    private async ValueTask<ChatCompletionResponse> WholeAnswerAsync(HttpResponseMessage response, ProviderRequest request, AttemptDeadline deadline, CancellationToken caller)
    {
        PooledBody body;
        try
        {
            body = await ResponseBody.ReadAsync(response.Content, Options.MaxAnswerBytes, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (deadline.TimedOut)
        {
            throw TimedOut(ex);
        }
        catch (Exception ex) when (BrokeOff(ex, caller))
        {
            throw new ProviderException(AttemptOutcome.RetryableError, $"The answer from '{Name}' broke off: {Why(ex)}.", inner: ex);
        }

        return ParseWhole(body, request, (int)response.StatusCode);
    }

    /// <summary>A body that broke off (connection reset, cut short, undecodable) while the caller still waits for it.</summary>
    /// <summary>
    /// A raw body (<see cref="RawBodyEvents"/>) read as it comes: a chunk per read, the idle timeout restarted by each, then
    /// the reader's closing chunk. A body whose first byte opens a JSON object is read whole (within
    /// <see cref="ProviderOptions.MaxAnswerBytes"/>) and judged whole (an error sent with a 200, JSON where audio was
    /// asked); an empty one is no answer.
    /// </summary>
    private async IAsyncEnumerable<ChatCompletionChunk> ReadRawAsync(Stream body, RawBodyEvents raw, AttemptDeadline deadline, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(RawBodyEvents.BlockBytes);
        try
        {
            var any = false;
            while (true)
            {
                int read;
                ChatCompletionChunk? whole = null;
                try
                {
                    read = await body.ReadAsync(buffer.AsMemory(0, RawBodyEvents.BlockBytes), deadline.Token).ConfigureAwait(false);
                    if (!any && read > 0 && buffer.AsSpan(0, read).IndexOfAnyExcept(" \t\r\n"u8) is var start and >= 0 && buffer[start] == (byte)'{')
                    {
                        using var all = new MemoryStream();
                        all.Write(buffer, 0, read);
                        int more;
                        while ((more = await body.ReadAsync(buffer.AsMemory(0, RawBodyEvents.BlockBytes), deadline.Token).ConfigureAwait(false)) > 0)
                        {
                            all.Write(buffer, 0, more);
                            if (all.Length > Options.MaxAnswerBytes)
                            {
                                throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered more than {Options.MaxAnswerBytes} bytes.");
                            }
                        }

                        whole = raw.Whole(all.ToArray());
                    }
                }
                catch (OperationCanceledException ex) when (deadline.TimedOut)
                {
                    throw IdleTimeout(ex);
                }
                catch (Exception ex) when (BrokeOff(ex, cancellationToken))
                {
                    throw StreamBroke(ex);
                }

                if (whole is not null)
                {
                    yield return whole;
                    any = true;
                    break;
                }

                if (read == 0)
                {
                    break;
                }

                any = true;
                deadline.Restart(Options.StreamIdleTimeout);
                yield return raw.Block(buffer.AsSpan(0, read));
            }

            if (!any)
            {
                throw new ProviderException(AttemptOutcome.RetryableError, $"'{Name}' answered with an empty body.");
            }

            yield return raw.Finish();
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static bool BrokeOff(Exception ex, CancellationToken caller) =>
        ex is IOException or HttpRequestException or InvalidDataException && !caller.IsCancellationRequested;

    /// <summary>What broke: the gateway's own words for a body it could not decode (they name no upstream content), the type otherwise.</summary>
    private static string Why(Exception ex) => ex is InvalidDataException ? ex.Message.TrimEnd('.') : ex.GetType().Name;

    private ProviderException StreamBroke(Exception ex) =>
        new(AttemptOutcome.RetryableError, $"The stream from '{Name}' broke: {Why(ex)}.", inner: ex);

    private ProviderException TimedOut(Exception inner) =>
        new(AttemptOutcome.Timeout, $"'{Name}' did not answer within {Options.Timeout.TotalSeconds:F0} s.", inner: inner);

    private ProviderException IdleTimeout(Exception inner) =>
        new(AttemptOutcome.Timeout, $"The stream from '{Name}' sent nothing for {Options.StreamIdleTimeout.TotalSeconds:F0} s.", inner: inner);

    public void Dispose() => Http.Dispose();

    /// <summary>
    /// Sends one attempt. Not async, and its callers turn a failure to connect into a <see cref="ProviderException"/>
    /// (<see cref="CouldNotReach"/>) and then call <see cref="ThrowIfFailedAsync"/>: an async method here was one more
    /// state machine box (~190 B) per request on the success path, where nothing is left to do after the send.
    /// A timeout is left to the caller, which knows which of its limits ran out (an <see cref="OperationCanceledException"/>
    /// with <see cref="AttemptDeadline.TimedOut"/> set).
    /// </summary>
    private Task<HttpResponseMessage> SendAsync(HttpRequestMessage message, CancellationToken cancellationToken)
    {
        ResponseBody.AcceptCompressed(message);
        return Http.SendAsync(message, cancellationToken);
    }

    private ProviderException CouldNotReach(HttpRequestException ex) =>
        new(AttemptOutcome.RetryableError, $"Could not reach '{Name}': {Describe(ex)}.", inner: ex);

    /// <summary>Reads the upstream's rate-limit headers; a non-success status becomes a classified <see cref="ProviderException"/> (the response is disposed then).</summary>
    private ValueTask ThrowIfFailedAsync(HttpRequestMessage message, HttpResponseMessage response, CancellationToken cancellationToken)
    {
        ReadRateLimits(response);
        return response.IsSuccessStatusCode ? ValueTask.CompletedTask : new ValueTask(ThrowUpstreamErrorAsync(message, response, cancellationToken));
    }

    private async Task ThrowUpstreamErrorAsync(HttpRequestMessage message, HttpResponseMessage response, CancellationToken cancellationToken)
    {
        var now = Time.GetUtcNow();

        using (response)
        {
            var status = (int)response.StatusCode;
            var body = await ReadBoundedAsync(response, cancellationToken).ConfigureAwait(false);
            var error = status is >= 300 and < 400 ? Redirected(response) : ParseError(status, body);
            var outcome = error.ContextLength ? AttemptOutcome.ContextLengthExceeded : ProviderException.Classify(status);
            var retryAfter = UpstreamHeaders.RetryAfter(response.Headers, now);
            var safe = SecretRedactor.RedactAndTrim(SecretRedactor.Redact(error.Message, ApiKey));
            LogUpstreamError(Logger, Name, status, outcome, safe);
            throw Refused(message, new ProviderException(outcome, $"'{Name}' answered {status}: {safe}", status, retryAfter)
            {
                ErrorType = error.Type,
                ErrorCode = error.ContextLength ? "context_length_exceeded" : error.Code,
                Param = error.Param ?? (error.ContextLength ? "messages" : null),
                UpstreamMessage = safe,
            });
        }
    }

    private static async Task<string> ReadBoundedAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        try
        {
            var stream = await ResponseBody.OpenAsync(response.Content, cancellationToken).ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                var buffer = new byte[MaxErrorBodyBytes];
                var read = 0;
                int n;
                while (read < buffer.Length && (n = await stream.ReadAsync(buffer.AsMemory(read), cancellationToken).ConfigureAwait(false)) > 0)
                {
                    read += n;
                }

                return Encoding.UTF8.GetString(buffer, 0, read);
            }
        }
        catch (Exception ex) when (ex is IOException or HttpRequestException or InvalidDataException)
        {
            return string.Empty;
        }
    }

    /// <summary>
    /// Redirects are not followed (an API that moved is a configuration to fix, and a POST must not silently become a
    /// GET): the error names where the upstream points, its address only, without the query, which could carry a token.
    /// </summary>
    private static UpstreamError Redirected(HttpResponseMessage response)
    {
        var location = response.Headers.Location is { } to
            ? (to.IsAbsoluteUri ? to.GetLeftPart(UriPartial.Path) : to.OriginalString.Split('?', 2)[0])
            : null;
        var message = location is null
            ? "a redirect without a Location; redirects are not followed: check the provider's BaseUrl"
            : $"a redirect to {SecretRedactor.RedactAndTrim(location, 200)}; redirects are not followed: set the provider's BaseUrl to it";
        return new UpstreamError(message, null, null, null, false);
    }

    private static string Describe(HttpRequestException ex) => ex.HttpRequestError switch
    {
        HttpRequestError.ConnectionError => "connection refused or reset",
        HttpRequestError.NameResolutionError => "host name not resolved",
        HttpRequestError.SecureConnectionError => "TLS handshake failed",
        _ => ex.HttpRequestError.ToString(),
    };


    /// <summary>
    /// Reduces an upstream error body to its message (and type, code, param when it gives them): OpenAI's and
    /// Anthropic's <c>{"error":{...}}</c>, <c>{"error":"..."}</c>, vLLM's top-level <c>message</c>, FastAPI's
    /// <c>detail</c>. Anything else is described, not forwarded: an HTML page from a proxy by its size, plain text
    /// by its first line. Null fields when absent.
    /// </summary>
    protected static UpstreamError ParseErrorBody(string body, Func<string, string?, bool> isContextLength)
    {
        string? message = null, type = null, code = null, param = null;
        var json = false;
        try
        {
            using var doc = JsonDocument.Parse(body);
            json = true;
            var root = doc.RootElement;
            if (root.ValueKind == JsonValueKind.Object)
            {
                var e = root.TryGetProperty("error", out var inner) && inner.ValueKind == JsonValueKind.Object ? inner : root;
                message = Text(e, "message") ?? Text(root, "error") ?? Text(root, "detail") ?? ValidationErrors(root);
                type = Text(e, "type");
                code = Text(e, "code");
                param = Text(e, "param");
            }
        }
        catch (JsonException)
        {
        }

        message ??= Describe(body, json);

        // Only the message reaches anyone: redacted whole first, then cut (a cut could split a key out of the redactor's reach).
        message = SecretRedactor.RedactAndTrim(message);
        return new UpstreamError(message, type, code, param, isContextLength(message, code));

        static string? Text(JsonElement e, string name) => e.TryGetProperty(name, out var v) ? Scalar(v) : null;

        // FastAPI's (and so many Python servers') validation failure: {"detail":[{"loc":["body","temperature"],"msg":"…"}]},
        // each made "body.temperature: …" — the field and what is wrong with it, never the "input" it echoes.
        static string? ValidationErrors(JsonElement root)
        {
            if (!root.TryGetProperty("detail", out var detail) || detail.ValueKind != JsonValueKind.Array)
            {
                return null;
            }

            var text = new StringBuilder();
            foreach (var item in detail.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Object || Text(item, "msg") is not { } msg)
                {
                    continue;
                }

                text.Append(text.Length == 0 ? "" : "; ");
                if (item.TryGetProperty("loc", out var loc) && loc.ValueKind == JsonValueKind.Array)
                {
                    text.AppendJoin('.', loc.EnumerateArray().Select(part => Scalar(part) ?? "?")).Append(": ");
                }

                text.Append(msg);
                if (text.Length > 500)
                {
                    break;
                }
            }

            return text.Length == 0 ? null : text.ToString();
        }

        static string? Scalar(JsonElement v) => v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Number => v.GetRawText(),
            _ => null,
        };

        static string Describe(string body, bool json)
        {
            var text = body.AsSpan().Trim();
            if (text.IsEmpty)
            {
                return "(an empty body)";
            }

            if (json)
            {
                return $"(a JSON body without an error message, {body.Length} characters)";
            }

            if (text[0] == '<')
            {
                return $"(an HTML page, {body.Length} characters)";
            }

            var line = text.IndexOfAny('\r', '\n') is var end and >= 0 ? text[..end] : text;
            return SecretRedactor.RedactAndTrim(line.ToString(), 200);
        }
    }

    [LoggerMessage(EventId = 30, Level = LogLevel.Information, Message = "Provider {Provider} answered {Status} ({Outcome}): {Message}")]
    private static partial void LogUpstreamError(ILogger logger, string provider, int status, AttemptOutcome outcome, string message);
}

/// <summary>An upstream's error as it reported it: its message, type, code and param, and whether it says the prompt is too long.</summary>
internal readonly record struct UpstreamError(string Message, string? Type, string? Code, string? Param, bool ContextLength);

/// <summary>
/// A streamed answer that is not server-sent events but raw bytes (speech's audio): a chunk per block read
/// (<see cref="Block"/>), a closing chunk with the usage (<see cref="Finish"/>), and the judgement of a body that looks
/// like JSON, read whole (<see cref="Whole"/>).
/// </summary>
internal abstract class RawBodyEvents : StreamEvents
{
    /// <summary>The most a read (and so a chunk) holds.</summary>
    public const int BlockBytes = 16 * 1024;

    public override string LastEvent => "the end of its body";

    public override ChatCompletionChunk? Read(ReadOnlySpan<byte> data, out bool end) => throw new NotSupportedException("A raw body has no events.");

    /// <summary>A chunk carrying these bytes (copied: the buffer is reused).</summary>
    public abstract ChatCompletionChunk Block(ReadOnlySpan<byte> bytes);

    /// <summary>The chunk that closes the answer (its finish and usage).</summary>
    public abstract ChatCompletionChunk Finish();

    /// <summary>A body whose first byte opens a JSON object, read whole: a chunk of it when it is the answer after all, else the provider's failure (thrown).</summary>
    public abstract ChatCompletionChunk Whole(ReadOnlyMemory<byte> body);
}

/// <summary>
/// Turns one upstream stream's SSE events into chunks, one event at a time, for <see cref="HttpChatProvider"/>'s
/// reading loop: an event makes no chunk, one, or several (<see cref="Next"/>), and says whether it was the last.
/// </summary>
internal abstract class StreamEvents
{
    /// <summary>The provider's last event, named in the error when the body ends before it.</summary>
    public abstract string LastEvent { get; }

    /// <summary>The first chunk one event's data makes (null: none); <paramref name="end"/> when it ends the stream.</summary>
    /// <exception cref="System.Text.Json.JsonException">The event is not valid JSON of the provider's shape.</exception>
    public abstract ChatCompletionChunk? Read(ReadOnlySpan<byte> data, out bool end);

    /// <summary>The next chunk the last event made, after the one <see cref="Read"/> returned (null: no more).</summary>
    public virtual ChatCompletionChunk? Next() => null;

    /// <summary>
    /// True when a body that ends here, without <see cref="LastEvent"/>, still carried a whole answer (every choice
    /// finished). False by default: the body was cut short.
    /// </summary>
    public virtual bool EndedWhole => false;
}
