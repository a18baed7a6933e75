using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using PipelineGateway.Batch;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Server.Batches;

/// <summary>
/// Anthropic's Message Batches API (<c>/v1/messages/batches</c>), as the Anthropic SDKs call it, on the Batch API's own
/// machinery: the requests given inline become a batch input file of the key, run as a batch of <c>/v1/messages</c>
/// lines (<see cref="Endpoint"/>), and are answered in Anthropic's shapes — a <c>message_batch</c> object, its results
/// one JSON line per request (<c>succeeded</c> with the message, <c>errored</c> with Anthropic's error, <c>canceled</c>,
/// <c>expired</c>). Errors are Anthropic's (the path's shape, <see cref="RouteErrors.ShapeOf"/>).
/// </summary>
internal sealed class MessageBatchesApi(BatchStore store, BatchJobs jobs, BatchApi files, ServerOptions options, TimeProvider time, ILogger<MessageBatchesApi> logger)
{
    public const string Url = "/v1/messages";

    /// <summary>Anthropic's limit on the requests of one batch.</summary>
    internal const int MaxRequests = 100_000;

    private static string Owner(HttpContext ctx) => ctx.Features.Get<GatewayCaller>()?.Key?.Id ?? string.Empty;

    /// <summary>The batch endpoint its lines run through: a Messages request read by the Anthropic codec, answered as Claude's message.</summary>
    public static BatchEndpoint Endpoint { get; } = new()
    {
        Url = Url,
        Kind = "a messages",
        Read = (JsonElement body, out Func<ChatCompletionResponse, byte[]> answer) =>
        {
            ChatCompletionRequest request;
            try
            {
                request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse(Encoding.UTF8.GetBytes(body.GetRawText())));
            }
            catch (AnthropicRequestException ex)
            {
                throw new InvalidRequestException(null, ex.Message);
            }

            answer = static response => JsonSerializer.SerializeToUtf8Bytes(AnthropicResponses.ToAnthropic(response), AnthropicJsonContext.Default.AnthropicMessage);
            return request;
        },
    };

    /// <summary>
    /// <c>POST /v1/messages/batches</c>: <c>{"requests": [{"custom_id", "params"}]}</c> — 1 to 100,000 requests, each
    /// <c>custom_id</c> 1–64 letters, digits, <c>-</c> or <c>_</c> and given once, each <c>params</c> an object (a
    /// Messages request; one that is not valid ends as an <c>errored</c> result, as Anthropic's do).
    /// </summary>
    public async Task CreateAsync(HttpContext ctx)
    {
        if (!await files.AvailableAsync(ctx))
        {
            return;
        }

        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxBatchFileBytes;
        var owner = Owner(ctx);
        string? temporary = null;
        long bytes = 0;
        var held = false;
        try
        {
            // The requests are read as they come and written as the batch's input lines: the body (up to
            // MaxBatchFileBytes) is never held whole — one request at a time.
            temporary = store.UploadPath(owner);
            var count = 0;
            await using (var target = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous))
            {
                var requests = new StreamedJsonArray(ctx.Request.Body, "requests");
                var ids = new HashSet<string>(StringComparer.Ordinal);
                var buffer = new System.Buffers.ArrayBufferWriter<byte>(1024);
                await foreach (var request in requests.ElementsAsync(ctx.RequestAborted))
                {
                    if (count == MaxRequests)
                    {
                        throw new InvalidRequestException("requests", $"requests: a batch holds 1 to {MaxRequests} requests; got more.");
                    }

                    await target.WriteAsync(InputLine(request, count++, ids, buffer), ctx.RequestAborted);
                }

                if (!requests.Found)
                {
                    throw new InvalidRequestException("requests", "requests: Field required (a list of {\"custom_id\", \"params\"})");
                }

                if (count == 0)
                {
                    throw new InvalidRequestException("requests", $"requests: a batch holds 1 to {MaxRequests} requests; got 0.");
                }

                bytes = target.Length;
            }

            jobs.Sweep(owner);
            if (bytes > options.MaxBatchFileBytes || !store.TryHold(owner, bytes, options.BatchBytesPerKey, options.MaxBatchFilesPerKey, 2 * jobs.LiveCount(owner)))
            {
                await RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "storage_limit_reached",
                    $"The batch's requests would take this key past its storage (at most {options.MaxBatchFileBytes} bytes a batch; Gateway:Server:BatchBytesPerKey, MaxBatchFilesPerKey): delete batches or files it no longer needs.");
                return;
            }

            held = true;
            var now = time.GetUtcNow();
            var input = new BatchFile
            {
                Id = BatchStore.NewFileId(),
                Bytes = bytes,
                CreatedAt = now.ToUnixTimeSeconds(),
                Filename = "message_batch_requests.jsonl",
                Purpose = "batch",
                ExpiresAt = BatchStore.Expiry(now.ToUnixTimeSeconds(), null, options.BatchFileLifetime),
            };
            store.Keep(owner, input, temporary);
            held = false;
            var stored = new StoredBatch
            {
                Owner = owner,
                CreatedTicks = now.UtcTicks,
                Batch = new BatchJob
                {
                    Id = BatchStore.NewBatchId(),
                    Endpoint = Url,
                    InputFileId = input.Id,
                    CreatedAt = now.ToUnixTimeSeconds(),
                    ExpiresAt = now.AddHours(24).ToUnixTimeSeconds(),
                    RequestCounts = new BatchCounts { Total = count },
                },
            };
            switch (jobs.Create(stored, options.MaxLiveBatchesPerKey, options.MaxBatchFilesPerKey, out var created))
            {
                case BatchJobs.Refusal.NoRoomForResults:
                    store.DeleteFile(owner, input.Id);
                    await RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "storage_limit_reached",
                        $"This key keeps {options.MaxBatchFilesPerKey} files (Gateway:Server:MaxBatchFilesPerKey), with no room for this batch's results: delete batches it no longer needs.");
                    break;
                case BatchJobs.Refusal.TooManyLive:
                    store.DeleteFile(owner, input.Id);
                    await RouteErrors.WriteAsync(ctx, 429, "rate_limit_error", "too_many_batches",
                        $"This key has {options.MaxLiveBatchesPerKey} batches not ended (Gateway:Server:MaxLiveBatchesPerKey): wait for some to end, or cancel them.", retryAfter: TimeSpan.FromSeconds(60));
                    break;
                default:
                    await WriteAsync(ctx, created!);
                    break;
            }
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex))
        {
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
        }
        finally
        {
            if (temporary is not null)
            {
                File.Delete(temporary); // gone already when kept
            }

            if (held)
            {
                store.Release(owner, bytes);
            }
        }
    }

    /// <summary>
    /// One request (<c>{"custom_id", "params"}</c>, the <paramref name="index"/>th) as a batch input line
    /// (<c>{"custom_id", "method", "url", "body"}</c>); a malformed one refuses the batch whole, naming it.
    /// </summary>
    private static byte[] InputLine(ReadOnlyMemory<byte> json, int index, HashSet<string> ids, System.Buffers.ArrayBufferWriter<byte> buffer)
    {
        using var doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 64 });
        var request = doc.RootElement;
        var at = $"requests.{index}";
        if (request.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException(at, $"{at}: must be an object with 'custom_id' and 'params'");
        }

        if (!request.TryGetProperty("custom_id", out var id) || id.ValueKind != JsonValueKind.String || !IsCustomId(id.GetString()!))
        {
            throw new InvalidRequestException($"{at}.custom_id", $"{at}.custom_id: must be 1 to 64 letters, digits, '-' or '_'");
        }

        if (!ids.Add(id.GetString()!))
        {
            throw new InvalidRequestException($"{at}.custom_id", $"{at}.custom_id: '{id.GetString()}' is given more than once; each request's custom_id must be unique within the batch");
        }

        if (!request.TryGetProperty("params", out var parameters) || parameters.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException($"{at}.params", $"{at}.params: Field required (a Messages request object)");
        }

        return JsonLine(buffer, json =>
        {
            json.WriteString("custom_id", id.GetString());
            json.WriteString("method", "POST");
            json.WriteString("url", Url);
            json.WritePropertyName("body");
            parameters.WriteTo(json);
        });
    }

    private static bool IsCustomId(string id) => id.Length is > 0 and <= 64 && id.All(static c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_');

    /// <summary><c>GET /v1/messages/batches/{id}</c>.</summary>
    public async Task GetAsync(HttpContext ctx, string id)
    {
        if (await files.AvailableAsync(ctx) && await FindAsync(ctx, id) is { } batch)
        {
            await WriteAsync(ctx, batch);
        }
    }

    /// <summary><c>GET /v1/messages/batches</c>: newest first, <c>limit</c> 1–1000 (20), <c>after_id</c> / <c>before_id</c>; <c>has_more</c>, <c>first_id</c>, <c>last_id</c>.</summary>
    public async Task ListAsync(HttpContext ctx)
    {
        if (!await files.AvailableAsync(ctx))
        {
            return;
        }

        var query = ctx.Request.Query;
        var limit = 20;
        if (query["limit"] is { Count: > 0 } l && (!int.TryParse(l[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out limit) || limit is < 1 or > 1000))
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException("limit", "limit: must be a whole number from 1 to 1000"));
            return;
        }

        var all = jobs.List(Owner(ctx)).Where(static b => b.Endpoint == Url).ToList(); // newest first
        var start = 0;
        var end = all.Count;
        if (query["after_id"] is { Count: > 0 } after)
        {
            start = all.FindIndex(b => b.Id == after[0]) + 1;
        }

        if (query["before_id"] is { Count: > 0 } before)
        {
            end = Math.Max(0, all.FindIndex(b => b.Id == before[0]));
            start = Math.Max(start, end - limit);
        }

        var page = all.Skip(start).Take(Math.Min(limit, Math.Max(0, end - start))).ToList();
        ctx.Response.ContentType = "application/json";
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            json.WriteStartObject();
            json.WriteStartArray("data");
            foreach (var batch in page)
            {
                Write(json, batch, ctx);
            }

            json.WriteEndArray();
            json.WriteBoolean("has_more", start + page.Count < end);
            json.WriteString("first_id", page.Count > 0 ? page[0].Id : null);
            json.WriteString("last_id", page.Count > 0 ? page[^1].Id : null);
            json.WriteEndObject();
        }

        await ctx.Response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), ctx.RequestAborted);
    }

    /// <summary><c>POST /v1/messages/batches/{id}/cancel</c>: <c>canceling</c>, then <c>ended</c> once its requests in flight end; an ended batch as it is.</summary>
    public async Task CancelAsync(HttpContext ctx, string id)
    {
        if (!await files.AvailableAsync(ctx) || await FindAsync(ctx, id) is null)
        {
            return;
        }

        jobs.Cancel(Owner(ctx), id, out var batch);
        await WriteAsync(ctx, batch!);
    }

    /// <summary><c>DELETE /v1/messages/batches/{id}</c>: an ended batch and its files; one not ended is refused (cancel it first).</summary>
    public async Task DeleteAsync(HttpContext ctx, string id)
    {
        if (await EndedAsync(ctx, id, "cancel it first, and delete it once it has ended") is not { } batch)
        {
            return;
        }

        var owner = Owner(ctx);
        foreach (var file in (ReadOnlySpan<string?>)[batch.InputFileId, batch.OutputFileId, batch.ErrorFileId])
        {
            if (file is not null)
            {
                store.DeleteFile(owner, file);
            }
        }

        store.ForgetBatch(owner, id);
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync($$"""{"id":"{{id}}","type":"message_batch_deleted"}""", ctx.RequestAborted);
    }

    /// <summary>
    /// <c>GET /v1/messages/batches/{id}/results</c>, once the batch ended: one line per request, in no set order —
    /// <c>succeeded</c> (the message), <c>errored</c> (Anthropic's error of the failure or of the invalid request),
    /// <c>canceled</c> or <c>expired</c> (a request the batch ended before running).
    /// </summary>
    public async Task ResultsAsync(HttpContext ctx, string id)
    {
        if (await EndedAsync(ctx, id, "its results are ready once 'processing_status' is \"ended\"") is not { } batch)
        {
            return;
        }

        var owner = Owner(ctx);
        ctx.Response.ContentType = "application/x-jsonl";
        var answered = new HashSet<string>(StringComparer.Ordinal);
        var output = ctx.Response.Body;
        foreach (var file in (string?[])[batch.OutputFileId, batch.ErrorFileId])
        {
            if (file is not null && store.GetFile(owner, file, evenExpired: true) is not null)
            {
                foreach (var record in File.ReadLines(store.DataPath(owner, file)))
                {
                    if (record.Length > 0 && Result(record, answered) is { } line)
                    {
                        await output.WriteAsync(line, ctx.RequestAborted);
                    }
                }
            }
        }

        // What never ran: canceled, expired, or — a batch that could not go on — errored with why, as the batch ended.
        var unrun = batch.Status switch { "expired" => "expired", "failed" => "errored", _ => "canceled" };
        var why = batch.Errors?.Data.FirstOrDefault()?.Message ?? "The batch could not go on.";
        if (store.GetFile(owner, batch.InputFileId, evenExpired: true) is not null)
        {
            foreach (var text in File.ReadLines(store.DataPath(owner, batch.InputFileId)))
            {
                using var request = JsonDocument.Parse(text);
                var customId = request.RootElement.GetProperty("custom_id").GetString()!;
                if (!answered.Contains(customId))
                {
                    await output.WriteAsync(unrun == "errored" ? Errored(customId, 500, why) : Line(customId, json => json.WriteString("type", unrun)), ctx.RequestAborted);
                }
            }
        }
    }

    /// <summary>One record of the batch's results files as Anthropic's result line (null: a record of no request).</summary>
    private static byte[]? Result(string record, HashSet<string> answered)
    {
        using var doc = JsonDocument.Parse(record);
        var root = doc.RootElement;
        if (root.GetProperty("custom_id").GetString() is not { } customId || !answered.Add(customId))
        {
            return null;
        }

        var response = root.GetProperty("response");
        if (response.ValueKind == JsonValueKind.Object && response.GetProperty("status_code").GetInt32() == 200)
        {
            var answer = response.GetProperty("body");
            return Line(customId, json =>
            {
                json.WriteString("type", "succeeded");
                json.WritePropertyName("message");
                answer.WriteTo(json);
            });
        }

        // A failed request (its status and OpenAI error body), or a request that was not valid (its error and line).
        var status = response.ValueKind == JsonValueKind.Object ? response.GetProperty("status_code").GetInt32() : 400;
        var message = response.ValueKind == JsonValueKind.Object
            ? response.GetProperty("body").GetProperty("error").GetProperty("message").GetString()
            : InBatchWords(root.GetProperty("error"));
        return Errored(customId, status, message);
    }

    private static byte[] Errored(string customId, int status, string? message) =>
        Line(customId, json =>
        {
            json.WriteString("type", "errored");
            json.WriteStartObject("error");
            json.WriteString("type", "error");
            json.WriteStartObject("error");
            json.WriteString("type", RouteErrors.AnthropicType(status, null));
            json.WriteString("message", message);
            json.WriteEndObject();
            json.WriteEndObject();
        });

    /// <summary>
    /// An invalid request's error as the create's own errors name things: <c>requests.N.params: …</c> (its place in the
    /// batch), not the input file's line and <c>body</c> the batch ran it as.
    /// </summary>
    private static string? InBatchWords(JsonElement error)
    {
        var message = error.GetProperty("message").GetString();
        if (error.TryGetProperty("line", out var l) && l.TryGetInt64(out var line) && message is not null)
        {
            var ran = $"line {line}: 'body' is not {Endpoint.Kind} request: ";
            return message.StartsWith(ran, StringComparison.Ordinal) ? $"requests.{line - 1}.params: {message[ran.Length..]}" : message;
        }

        return message;
    }

    private static byte[] Line(string customId, Action<Utf8JsonWriter> result) => JsonLine(new System.Buffers.ArrayBufferWriter<byte>(256), json =>
    {
        json.WriteString("custom_id", customId);
        json.WriteStartObject("result");
        result(json);
        json.WriteEndObject();
    });

    /// <summary>One JSON object, its members written by <paramref name="members"/>, and a line feed (through <paramref name="buffer"/>, reused).</summary>
    private static byte[] JsonLine(System.Buffers.ArrayBufferWriter<byte> buffer, Action<Utf8JsonWriter> members)
    {
        buffer.ResetWrittenCount();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            json.WriteStartObject();
            members(json);
            json.WriteEndObject();
        }

        var line = new byte[buffer.WrittenCount + 1];
        buffer.WrittenSpan.CopyTo(line);
        line[^1] = (byte)'\n';
        return line;
    }

    /// <summary>The key's message batch of that id once it has ended; else null, the error written (a 400 saying <paramref name="otherwise"/> while it runs).</summary>
    private async Task<BatchJob?> EndedAsync(HttpContext ctx, string id, string otherwise)
    {
        if (!await files.AvailableAsync(ctx) || await FindAsync(ctx, id) is not { } batch)
        {
            return null;
        }

        if (batch.Live)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException("id", $"The batch '{id}' has not ended: {otherwise}."));
            return null;
        }

        return batch;
    }

    /// <summary>The key's message batch of that id; a 404 (written) for none, or for a batch of the OpenAI Batch API.</summary>
    private async Task<BatchJob?> FindAsync(HttpContext ctx, string id)
    {
        if (jobs.Get(Owner(ctx), id) is { Endpoint: Url } batch)
        {
            return batch;
        }

        await RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", $"No message batch '{Providers.ProviderException.Quoted(id.Length <= 64 ? id : id[..64] + "…")}'.");
        return null;
    }

    private static async Task WriteAsync(HttpContext ctx, BatchJob batch)
    {
        ctx.Response.ContentType = "application/json";
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            Write(json, batch, ctx);
        }

        await ctx.Response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), ctx.RequestAborted);
    }

    /// <summary>A batch as Anthropic's <c>message_batch</c> object.</summary>
    private static void Write(Utf8JsonWriter json, BatchJob batch, HttpContext ctx)
    {
        var ended = !batch.Live;
        var counts = batch.RequestCounts;
        var unrun = Math.Max(0, counts.Total - counts.Completed - counts.Failed);
        json.WriteStartObject();
        json.WriteString("id", batch.Id);
        json.WriteString("type", "message_batch");
        json.WriteString("processing_status", ended ? "ended" : batch.Status == "cancelling" ? "canceling" : "in_progress");
        json.WriteStartObject("request_counts");
        json.WriteNumber("processing", ended ? 0 : unrun);
        json.WriteNumber("succeeded", counts.Completed);
        json.WriteNumber("errored", counts.Failed + (ended && batch.Status == "failed" ? unrun : 0));
        json.WriteNumber("canceled", ended && batch.Status == "cancelled" ? unrun : 0);
        json.WriteNumber("expired", ended && batch.Status == "expired" ? unrun : 0);
        json.WriteEndObject();
        Time(json, "created_at", batch.CreatedAt);
        Time(json, "expires_at", batch.ExpiresAt);
        Time(json, "ended_at", ended ? batch.CompletedAt ?? batch.CancelledAt ?? batch.ExpiredAt ?? batch.FailedAt : null);
        Time(json, "cancel_initiated_at", batch.CancellingAt);
        json.WriteNull("archived_at");
        json.WriteString("results_url", ended ? $"{ctx.Request.Scheme}://{ctx.Request.Host}/v1/messages/batches/{batch.Id}/results" : null);
        json.WriteEndObject();
    }

    private static void Time(Utf8JsonWriter json, string name, long? seconds)
    {
        if (seconds is { } s)
        {
            json.WriteString(name, DateTimeOffset.FromUnixTimeSeconds(s).ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture));
        }
        else
        {
            json.WriteNull(name);
        }
    }
}
