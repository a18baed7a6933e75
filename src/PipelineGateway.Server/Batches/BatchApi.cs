using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using PipelineGateway.Batch;

namespace PipelineGateway.Server.Batches;

/// <summary>
/// OpenAI's Batch API over HTTP, as the OpenAI SDKs call it: <c>/v1/files</c> (upload a JSONL file of requests, list,
/// retrieve, download, delete) and <c>/v1/batches</c> (create from an uploaded file, retrieve, list, cancel). Files and
/// batches belong to the gateway key that made them: another key sees none of them (a 404, as for an id that does not
/// exist). The batches run in the background (<see cref="BatchJobs"/>) and survive a restart.
/// </summary>
internal sealed class BatchApi(BatchStore store, BatchJobs jobs, ServerOptions options, TimeProvider time, ILogger<BatchApi> logger)
{
    /// <summary>The endpoints a batch may call (each line's <c>url</c> must be the batch's).</summary>
    private static readonly string[] Endpoints = [BatchLine.ChatCompletionsUrl, Responses.ResponsesBatch.Url, BatchLine.CompletionsUrl, BatchLine.EmbeddingsUrl, BatchLine.ModerationsUrl];

    /// <summary>Form overhead allowed around an upload of <see cref="ServerOptions.MaxBatchFileBytes"/> (boundaries, headers, the purpose).</summary>
    internal const long FormSlack = 64 * 1024;

    private static string Owner(HttpContext ctx) => ctx.Features.Get<GatewayCaller>()?.Key?.Id ?? string.Empty;

    /// <summary>The Batch API is served: configured and this instance's directory. Else the error is written.</summary>
    internal async Task<bool> AvailableAsync(HttpContext ctx)
    {
        if (!store.Configured)
        {
            await RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "not_found", "The Batch API is not enabled on this gateway (Gateway:Server:BatchDirectory is empty).");
            return false;
        }

        if (!store.TryOpen())
        {
            await RouteErrors.WriteAsync(ctx, 503, "server_error", "batch_store_unavailable", "The Batch API's directory is held by another gateway process; give each instance a directory of its own (Gateway:Server:BatchDirectory).");
            return false;
        }

        return true;
    }

    /// <summary>
    /// <c>POST /v1/files</c>: a multipart form with <c>purpose</c> (<c>batch</c>), <c>file</c> (JSONL) and optionally
    /// <c>expires_after[anchor]</c> (<c>created_at</c>) and <c>expires_after[seconds]</c> (3600–2592000), as the SDKs send
    /// <c>expires_after</c>; without them the file expires after <see cref="ServerOptions.BatchFileLifetime"/>.
    /// </summary>
    public async Task UploadAsync(HttpContext ctx)
    {
        if (!await AvailableAsync(ctx))
        {
            return;
        }

        var aborted = ctx.RequestAborted;
        var owner = Owner(ctx);
        if (await MultipartForms.ReadAsync(ctx, options.MaxBatchFileBytes + FormSlack, 16, 4096, "'purpose' and 'file'", options, logger) is not { } form)
        {
            return;
        }

        var purpose = form["purpose"];
        if (purpose.Count != 1 || purpose[0] != "batch")
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException("purpose", purpose.Count == 0
                ? "'purpose' is required: \"batch\" (the only files this gateway keeps are batch input files)."
                : $"'purpose' must be \"batch\": this gateway keeps batch input files only; got '{Shorten(purpose.ToString())}'."));
            return;
        }

        long? lifetime;
        try
        {
            if (form.ContainsKey("expires_after"))
            {
                throw new InvalidRequestException("expires_after", "'expires_after' is sent as two form fields: 'expires_after[anchor]' (\"created_at\") and 'expires_after[seconds]'.");
            }

            lifetime = Lifetime("expires_after", One(form, "expires_after[anchor]"), One(form, "expires_after[seconds]"));
        }
        catch (InvalidRequestException ex)
        {
            await RouteErrors.WriteAsync(ctx, ex);
            return;
        }

        if (form.Files.Count != 1 || form.Files[0].Name != "file")
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException("file", "The form takes one file, named 'file' (the JSONL of requests)."));
            return;
        }

        var upload = form.Files[0];
        if (upload.Length == 0)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException("file", "The file is empty."));
            return;
        }

        if (upload.Length > options.MaxBatchFileBytes)
        {
            await RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "file_too_large", $"The file is larger than {options.MaxBatchFileBytes} bytes.", "file");
            return;
        }

        jobs.Sweep(owner); // its expired files make room now, not at the next hourly sweep
        if (!store.TryHold(owner, upload.Length, options.BatchBytesPerKey, options.MaxBatchFilesPerKey, 2 * jobs.LiveCount(owner)))
        {
            await RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "storage_limit_reached",
                $"This key's files would be more than {options.MaxBatchFilesPerKey} (two held for each batch not ended) or hold more than {options.BatchBytesPerKey} bytes (Gateway:Server:MaxBatchFilesPerKey, BatchBytesPerKey): delete files it no longer needs.", "file");
            return;
        }

        string? temporary = null;
        var held = true;
        try
        {
            temporary = store.UploadPath(owner);
            await using (var target = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous))
            await using (var source = upload.OpenReadStream())
            {
                await source.CopyToAsync(target, aborted);
            }

            var created = time.GetUtcNow().ToUnixTimeSeconds();
            var file = new BatchFile
            {
                Id = BatchStore.NewFileId(),
                Bytes = upload.Length,
                CreatedAt = created,
                Filename = Providers.Upload.SafeName(upload.FileName),
                Purpose = "batch",
                ExpiresAt = BatchStore.Expiry(created, lifetime, options.BatchFileLifetime),
            };
            store.Keep(owner, file, temporary);
            held = false; // counted among the owner's files from now on
            await WriteAsync(ctx, file, BatchJsonContext.Default.BatchFile);
        }
        finally
        {
            if (temporary is not null)
            {
                File.Delete(temporary); // gone already when kept
            }

            if (held)
            {
                store.Release(owner, upload.Length); // not kept
            }
        }
    }

    /// <summary><c>GET /v1/files</c>: the key's files, newest first (<c>purpose</c>, <c>order</c>, <c>limit</c> 1–10,000, <c>after</c>).</summary>
    public async Task ListFilesAsync(HttpContext ctx)
    {
        if (!await AvailableAsync(ctx) || await ListPage.ReadAsync(ctx, 10_000, 10_000) is not { } page)
        {
            return;
        }

        var purpose = ctx.Request.Query["purpose"].ToString();
        var files = store.Files(Owner(ctx)).Where(f => purpose.Length == 0 || f.Purpose == purpose).OrderByDescending(static f => f.CreatedAt).ThenByDescending(static f => f.Id, StringComparer.Ordinal).ToList();
        if (page.Ascending)
        {
            files.Reverse();
        }

        await WriteListAsync(ctx, files, static f => f.Id, page, BatchJsonContext.Default.BatchFile);
    }

    /// <summary><c>GET /v1/files/{id}</c>.</summary>
    public async Task GetFileAsync(HttpContext ctx, string id)
    {
        if (await AvailableAsync(ctx) && await FileAsync(ctx, id) is { } file)
        {
            await WriteAsync(ctx, file, BatchJsonContext.Default.BatchFile);
        }
    }

    /// <summary><c>GET /v1/files/{id}/content</c>: the file's bytes.</summary>
    public async Task ContentAsync(HttpContext ctx, string id)
    {
        if (!await AvailableAsync(ctx) || await FileAsync(ctx, id) is not { } file)
        {
            return;
        }

        Stream content;
        try
        {
            content = new FileStream(store.DataPath(Owner(ctx), file.Id), FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        }
        catch (FileNotFoundException)
        {
            await NoFileAsync(ctx, id);
            return;
        }

        await using (content)
        {
            ctx.Response.ContentType = "application/octet-stream";
            ctx.Response.ContentLength = content.Length;
            await content.CopyToAsync(ctx.Response.Body, ctx.RequestAborted);
        }
    }

    /// <summary><c>DELETE /v1/files/{id}</c> (not while a live batch reads it: a 409).</summary>
    public async Task DeleteFileAsync(HttpContext ctx, string id)
    {
        if (!await AvailableAsync(ctx) || await FileAsync(ctx, id) is not { } file)
        {
            return;
        }

        var owner = Owner(ctx);
        if (jobs.Reads(owner, file.Id))
        {
            await RouteErrors.WriteAsync(ctx, 409, "invalid_request_error", "file_in_use", $"The file '{file.Id}' is the input of a batch still running: cancel it first, or wait for it to end.", "file_id");
            return;
        }

        store.DeleteFile(owner, file.Id);
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync($$"""{"id":"{{file.Id}}","object":"file","deleted":true}""", ctx.RequestAborted);
    }

    /// <summary>
    /// <c>POST /v1/batches</c>: <c>input_file_id</c> (an uploaded <c>batch</c> file of this key), <c>endpoint</c>
    /// (<c>/v1/chat/completions</c>, <c>/v1/responses</c>, <c>/v1/completions</c>, <c>/v1/embeddings</c>, <c>/v1/moderations</c>), <c>completion_window</c> (<c>24h</c>)
    /// and optional <c>metadata</c> (at most 16 string pairs, keys ≤ 64 characters, values ≤ 512) and
    /// <c>output_expires_after</c> (<c>{"anchor": "created_at", "seconds": 3600–2592000}</c>: its result files' lifetime).
    /// </summary>
    public async Task CreateAsync(HttpContext ctx)
    {
        if (!await AvailableAsync(ctx))
        {
            return;
        }

        JsonElement body;
        try
        {
            body = await JsonBody.ReadAsync(ctx.Request.BodyReader, static b => Providers.Operations.Parse(b), ctx.RequestAborted);
        }
        catch (Exception ex) when (JsonBody.IsRefusal(ex))
        {
            await JsonBody.WriteRefusalAsync(ctx, ex, options, logger);
            return;
        }

        var owner = Owner(ctx);
        StoredBatch stored;
        try
        {
            stored = Read(body, owner);
        }
        catch (InvalidRequestException ex)
        {
            await RouteErrors.WriteAsync(ctx, ex);
            return;
        }

        if (store.GetFile(owner, stored.Batch.InputFileId) is not { } input)
        {
            await RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "file_not_found", $"No such File object: {Shorten(stored.Batch.InputFileId)}", "input_file_id");
            return;
        }

        if (input.Purpose != "batch")
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException("input_file_id", $"The file '{input.Id}' is a batch's results ('purpose' \"{input.Purpose}\"), not a batch input file."));
            return;
        }

        switch (jobs.Create(stored, options.MaxLiveBatchesPerKey, options.MaxBatchFilesPerKey, out var created))
        {
            case BatchJobs.Refusal.NoRoomForResults:
                await RouteErrors.WriteAsync(ctx, 413, "invalid_request_error", "storage_limit_reached",
                    $"This key keeps {options.MaxBatchFilesPerKey} files (Gateway:Server:MaxBatchFilesPerKey; two held for each batch not ended), with no room for this batch's two result files: delete files it no longer needs.", "input_file_id");
                break;
            case BatchJobs.Refusal.TooManyLive:
                await RouteErrors.WriteAsync(ctx, 429, "rate_limit_error", "too_many_batches",
                    $"This key has {options.MaxLiveBatchesPerKey} batches not ended (Gateway:Server:MaxLiveBatchesPerKey): wait for some to end, or cancel them.", retryAfter: TimeSpan.FromSeconds(60));
                break;
            default:
                await WriteAsync(ctx, created!, BatchJsonContext.Default.BatchJob);
                break;
        }
    }

    private StoredBatch Read(JsonElement body, string owner)
    {
        string Text(string name)
        {
            if (!body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
            {
                throw new InvalidRequestException(name, $"'{name}' is required.");
            }

            return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw new InvalidRequestException(name, $"'{name}' must be a string.");
        }

        var inputFileId = Text("input_file_id");
        var endpoint = Text("endpoint");
        if (Array.IndexOf(Endpoints, BatchLine.Canonical(endpoint)) < 0)
        {
            throw new InvalidRequestException("endpoint", $"'endpoint' must be one of {string.Join(", ", Endpoints.Select(static e => $"\"{e}\""))} (the endpoints a batch can call here); got '{Shorten(endpoint)}'.");
        }

        if (Text("completion_window") != "24h")
        {
            throw new InvalidRequestException("completion_window", "'completion_window' must be \"24h\".");
        }

        Dictionary<string, string>? metadata = null;
        if (body.TryGetProperty("metadata", out var m) && m.ValueKind != JsonValueKind.Null)
        {
            metadata = Metadata(m);
        }

        long? outputLifetime = null;
        if (body.TryGetProperty("output_expires_after", out var e) && e.ValueKind != JsonValueKind.Null)
        {
            if (e.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidRequestException("output_expires_after", "'output_expires_after' must be an object: {\"anchor\": \"created_at\", \"seconds\": 3600–2592000}.");
            }

            // The anchor a string, the seconds a number (a number's text is parsed as a whole number, so 3600.5 is refused).
            static string? Member(JsonElement o, string name, JsonValueKind kind) =>
                !o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
                : v.ValueKind == kind ? (kind == JsonValueKind.String ? v.GetString() : v.GetRawText())
                : $"a JSON {v.ValueKind.ToString().ToLowerInvariant()}";
            outputLifetime = Lifetime("output_expires_after", Member(e, "anchor", JsonValueKind.String), Member(e, "seconds", JsonValueKind.Number))
                ?? throw new InvalidRequestException("output_expires_after", "'output_expires_after' needs 'anchor' (\"created_at\") and 'seconds'.");
        }

        var now = time.GetUtcNow();
        return new StoredBatch
        {
            Owner = owner,
            CreatedTicks = now.UtcTicks,
            OutputLifetimeSeconds = outputLifetime,
            Batch = new BatchJob
            {
                Id = BatchStore.NewBatchId(),
                Endpoint = endpoint,
                InputFileId = inputFileId,
                CreatedAt = now.ToUnixTimeSeconds(),
                ExpiresAt = now.AddHours(24).ToUnixTimeSeconds(),
                Metadata = metadata,
            },
        };
    }

    /// <summary>
    /// OpenAI's expiration policy (<c>anchor</c> <c>created_at</c>, <c>seconds</c> from 3600 — an hour — to 2592000 —
    /// 30 days) as its seconds; null when neither part is given.
    /// </summary>
    internal static long? Lifetime(string param, string? anchor, string? seconds)
    {
        if (anchor is null && seconds is null)
        {
            return null;
        }

        if (anchor != "created_at")
        {
            throw new InvalidRequestException(param, $"'{param}' anchor must be \"created_at\" (the only anchor); got {(anchor is null ? "none" : $"'{Shorten(anchor)}'")}.");
        }

        if (!long.TryParse(seconds, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value) || value is < 3600 or > 2_592_000)
        {
            throw new InvalidRequestException(param, $"'{param}' seconds must be a whole number from 3600 (an hour) to 2592000 (30 days); got {(seconds is null ? "none" : $"'{Shorten(seconds)}'")}.");
        }

        return value;
    }

    /// <summary>A form field given at most once (null: not given); given more than once it is refused.</summary>
    private static string? One(IFormCollection form, string name) => form[name] switch
    {
        { Count: 0 } => null,
        { Count: 1 } v => v[0],
        _ => throw new InvalidRequestException(name, $"'{name}' is given more than once."),
    };

    /// <summary>OpenAI's metadata: an object of at most 16 string values, keys up to 64 characters, values up to 512.</summary>
    internal static Dictionary<string, string> Metadata(JsonElement m)
    {
        if (m.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidRequestException("metadata", "'metadata' must be an object of strings.");
        }

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in m.EnumerateObject())
        {
            if (pair.Value.ValueKind != JsonValueKind.String || pair.Name.Length > 64 || pair.Value.GetString()!.Length > 512 || !metadata.TryAdd(pair.Name, pair.Value.GetString()!) || metadata.Count > 16)
            {
                throw new InvalidRequestException("metadata", "'metadata' holds at most 16 pairs, each key a string of at most 64 characters (given once) and each value a string of at most 512.");
            }
        }

        return metadata;
    }

    /// <summary><c>GET /v1/batches/{id}</c>.</summary>
    public async Task GetAsync(HttpContext ctx, string id)
    {
        if (!await AvailableAsync(ctx))
        {
            return;
        }

        if (jobs.Get(Owner(ctx), id) is not { } batch)
        {
            await NoBatchAsync(ctx, id);
            return;
        }

        await WriteAsync(ctx, batch, BatchJsonContext.Default.BatchJob);
    }

    /// <summary><c>GET /v1/batches</c>: the key's batches, newest first (<c>limit</c> 1–100, 20; <c>after</c>).</summary>
    public async Task ListAsync(HttpContext ctx)
    {
        if (await AvailableAsync(ctx) && await ListPage.ReadAsync(ctx, 100, 20) is { } page)
        {
            await WriteListAsync(ctx, jobs.List(Owner(ctx)), static b => b.Id, page with { Ascending = false }, BatchJsonContext.Default.BatchJob);
        }
    }

    /// <summary>
    /// <c>POST /v1/batches/{id}/cancel</c>: <c>cancelling</c>, then <c>cancelled</c> once the requests in flight end (a
    /// cancel again answers the batch as it stands: a retried call is harmless); a 409 for a batch that ended otherwise.
    /// </summary>
    public async Task CancelAsync(HttpContext ctx, string id)
    {
        if (!await AvailableAsync(ctx))
        {
            return;
        }

        switch (jobs.Cancel(Owner(ctx), id, out var batch))
        {
            case null:
                await NoBatchAsync(ctx, id);
                break;
            case false:
                await RouteErrors.WriteAsync(ctx, 409, "invalid_request_error", "batch_not_cancellable", $"Cannot cancel a batch with status '{batch!.Status}'.");
                break;
            default:
                await WriteAsync(ctx, batch!, BatchJsonContext.Default.BatchJob);
                break;
        }
    }

    private async Task<BatchFile?> FileAsync(HttpContext ctx, string id)
    {
        if (store.GetFile(Owner(ctx), id) is { } file)
        {
            return file;
        }

        await NoFileAsync(ctx, id);
        return null;
    }

    private static Task NoFileAsync(HttpContext ctx, string id) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "file_not_found", $"No such File object: {Shorten(id)}", "id");

    private static Task NoBatchAsync(HttpContext ctx, string id) =>
        RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "batch_not_found", $"No such Batch object: {Shorten(id)}", "id");


    private static async Task WriteListAsync<T>(HttpContext ctx, List<T> all, Func<T, string> id, ListPage page, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info)
    {
        var start = 0;
        if (page.After.Length > 0)
        {
            var at = all.FindIndex(x => id(x) == page.After);
            if (at < 0)
            {
                await RouteErrors.WriteAsync(ctx, 400, "invalid_request_error", "invalid_value", "'after' names no object of this list.", "after");
                return;
            }

            start = at + 1;
        }

        var items = all.Skip(start).Take(page.Limit).ToList();
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(4096); // the serializer flushes: written whole, then sent
        using var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder });
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var item in items)
        {
            JsonSerializer.Serialize(w, item, info);
        }

        w.WriteEndArray();
        w.WriteString("first_id", items.Count > 0 ? id(items[0]) : null);
        w.WriteString("last_id", items.Count > 0 ? id(items[^1]) : null);
        w.WriteBoolean("has_more", start + items.Count < all.Count);
        w.WriteEndObject();
        w.Flush();
        ctx.Response.ContentType = "application/json";
        ctx.Response.ContentLength = buffer.WrittenCount;
        await ctx.Response.Body.WriteAsync(buffer.WrittenMemory, ctx.RequestAborted);
    }

    private static Task WriteAsync<T>(HttpContext ctx, T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        JsonBody.WriteAsync(ctx.Response, value, info, ctx.RequestAborted);

    private static string Shorten(string s) => Providers.ProviderException.Quoted(s.Length <= 64 ? s : s[..64] + "…");
}
