using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Serialization;

namespace PipelineGateway.Server;

/// <summary>
/// One <c>data:</c> server-sent event written into Kestrel's response pipe and flushed once: no byte array per event
/// and no separate stream writes (issue 21: a stream's cost is per chunk; see docs/benchmarks.md, streaming mode).
/// </summary>
internal static class SseWriter
{
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] KeepAlive = ": keep-alive\n\n"u8.ToArray();

    /// <summary>
    /// Waits for a stream's first item, with an SSE comment (<c>: keep-alive</c>, which every SSE client ignores — unlike
    /// Anthropic's <c>event: ping</c>, which its Python SDK refuses before <c>message_start</c>) every
    /// <paramref name="interval"/> meanwhile: long-thinking models otherwise trip idle timeouts on the way. The first
    /// comment starts the response (<paramref name="start"/> sets its headers). Started: a keep-alive went out. The wait's
    /// timer ends with the wait (WaitAsync disposes it when the item comes; none at all when it is already there): a
    /// Task.Delay raced with WhenAny stayed armed for the whole interval after every stream's first chunk — 15,000 live
    /// timers at 1,000 streams a second, each holding a registration on the request's abort token.
    /// </summary>
    public static async ValueTask<(bool More, bool Started)> FirstAsync<TState>(HttpContext ctx, ValueTask<bool> next, TimeSpan interval, TimeProvider time, Action<HttpContext, TState> start, TState state)
    {
        if (next.IsCompleted)
        {
            return (await next, false);
        }

        var pending = next.AsTask();
        var started = false;
        while (true)
        {
            try
            {
                return (await pending.WaitAsync(interval, time, ctx.RequestAborted), started);
            }
            catch (TimeoutException) when (!pending.IsCompleted)
            {
                start(ctx, state);
                started = true;
                await ctx.Response.Body.WriteAsync(KeepAlive, ctx.RequestAborted);
                await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
            }
        }
    }

    /// <summary>An event whose JSON is already written, then flushed.</summary>
    public static ValueTask<FlushResult> WriteDataAsync(HttpResponse response, ReadOnlySpan<byte> json, CancellationToken cancellationToken)
    {
        var pipe = response.BodyWriter;
        WriteData(pipe, json);
        return pipe.FlushAsync(cancellationToken);
    }

    /// <summary>
    /// An event whose JSON is already written (one line: the caller made sure), not flushed. Into the response's pipe
    /// as the caller holds it: a stream's loop takes <c>Response.BodyWriter</c> once, not per event (each read walks
    /// the response's feature cache, a few dependent loads of another stream's cold lines at 1,000 streams).
    /// </summary>
    public static void WriteData(PipeWriter pipe, ReadOnlySpan<byte> json) =>
        SseFrame.Write(pipe, DataPrefix, json, EventEnd);

    /// <summary>An event serialized straight into the pipe by <paramref name="json"/> (reused from event to event), not flushed (the caller flushes once per burst).</summary>
    public static void WriteData<T>(PipeWriter pipe, Utf8JsonWriter json, T value, JsonTypeInfo<T> info)
    {
        pipe.Write(DataPrefix);
        json.Reset(pipe);
        JsonSerializer.Serialize(json, value, info);
        json.Flush();
        pipe.Write(EventEnd);
    }
}
