using System.Buffers;
using System.IO.Hashing;
using System.Text.Json;
using PipelineGateway.Serialization;

namespace PipelineGateway.Caching;

/// <summary>
/// A 128-bit key over the canonical form of everything that can change the answer: resolved model group,
/// messages, sampling parameters, tools, response format and pass-through fields. Object keys are sorted and
/// numbers normalized (1 and 1.0 give the same key); stream, user and gateway controls are left out.
/// </summary>
internal readonly record struct CacheKey(UInt128 Hash, string? Namespace)
{
    public override string ToString() => (Namespace is null ? string.Empty : Namespace + ":") + Hash.ToString("x32", System.Globalization.CultureInfo.InvariantCulture);

    public static CacheKey Compute(string modelGroup, ChatCompletionRequest request)
    {
        // The thread's own buffer and writer, reused (with the cache on, a new one per key had agent steps cost 2.8× the
        // CPU of the cache off: a full collection every few hundred requests). The bytes hashed are the same.
        var w = ReusedWriter.Take(ref t_buffer, ref t_writer, WriterOptions);
        var buffer = t_buffer!;
        try
        {
            w.WriteStartObject();
            w.WriteString("model", modelGroup);
            w.WriteStartArray("messages");
            foreach (var m in request.Messages)
            {
                WriteMessage(w, m);
            }

            w.WriteEndArray();
            WriteNumber(w, "temperature", request.Temperature);
            WriteNumber(w, "top_p", request.TopP);
            WriteNumber(w, "max_tokens", request.RequestedCompletionTokens);
            WriteNumber(w, "n", request.N is null or 1 ? null : request.N);
            WriteNumber(w, "seed", request.Seed);
            if (request.Stop is { Count: > 0 } stop)
            {
                w.WriteStartArray("stop");
                foreach (var s in stop)
                {
                    w.WriteStringValue(s);
                }

                w.WriteEndArray();
            }

            if (request.Tools is { Count: > 0 } tools)
            {
                // Each definition's canonical form as the list's would hold it, made once per distinct definition.
                w.WriteStartArray("tools");
                foreach (var tool in tools)
                {
                    if (tool is null)
                    {
                        w.WriteNullValue();
                    }
                    else
                    {
                        w.WriteRawValue(KeyForms.Shared.Tool(tool, MakeTool), skipInputValidation: true);
                    }
                }

                w.WriteEndArray();
            }

            WriteElement(w, "tool_choice", request.ToolChoice);
            WriteElement(w, "response_format", request.ResponseFormat);
            if (request.Operation is { } operation)
            {
                // Another API's request (embeddings, moderations): its inputs as sent (two texts and their join are
                // different requests) and its options; the model is the group's, the user left out as for a chat request.
                WriteBody(w, operation.Path, operation.Body);
            }
            else if (request.TextCompletion is { } completion)
            {
                // A text completion: never a chat request's answer (the same prompt as a user message), its prompts as sent.
                WriteBody(w, Providers.TextCompletionRequest.Path, completion.Body);
            }

            WriteExtra(w, request.AdditionalProperties, static name => name is "metadata" or "stream_options" or "store");
            w.WriteEndObject();
            w.Flush();
            return new CacheKey(XxHash128.HashToUInt128(buffer.WrittenSpan), request.Gateway?.CacheNamespace);
        }
        finally
        {
            ReusedWriter.Release(ref t_buffer, ref t_writer);
        }
    }

    /// <summary>How the canonical form is written (<see cref="KeyForms"/> writes its parts the same way).</summary>
    internal static readonly JsonWriterOptions WriterOptions = new() { SkipValidation = true };

    private static readonly Action<Utf8JsonWriter, ToolDefinition> MakeTool =
        static (w, tool) => WriteCanonical(w, JsonSerializer.SerializeToElement(tool, GatewayJsonContext.Default.ToolDefinition));

    [ThreadStatic]
    private static ArrayBufferWriter<byte>? t_buffer;

    [ThreadStatic]
    private static Utf8JsonWriter? t_writer;

    /// <summary>
    /// Another API's body under its route's name, its members in order: the model (the group's, written already), the
    /// user and the stream flags (a whole answer and a stream of it are the same answer) left out.
    /// </summary>
    private static void WriteBody(Utf8JsonWriter w, string name, JsonElement body)
    {
        w.WriteStartObject(name);
        foreach (var member in body.EnumerateObject().OrderBy(static p => p.Name, StringComparer.Ordinal))
        {
            if (member.Name is not ("model" or "user" or "stream" or "stream_options"))
            {
                w.WritePropertyName(member.Name);
                WriteCanonical(w, member.Value);
            }
        }

        w.WriteEndObject();
    }

    private static void WriteMessage(Utf8JsonWriter w, ChatCompletionMessage m)
    {
        w.WriteStartObject();
        w.WriteString("role", m.Role);
        if (m.Name is not null)
        {
            w.WriteString("name", m.Name);
        }

        if (m.Content is { } c)
        {
            if (c.TextJson is { Length: > 0 } json)
            {
                WriteText(w, "content"u8, json);
            }
            else if (c.Text is not null)
            {
                w.WriteString("content", c.Text);
            }
            else
            {
                w.WritePropertyName("content");
                WriteCanonical(w, JsonSerializer.SerializeToElement(c.Parts ?? [], GatewayJsonContext.Default.ListContentPart));
            }
        }

        if (m.ToolCalls is { Count: > 0 })
        {
            w.WriteStartArray("tool_calls");
            foreach (var t in m.ToolCalls)
            {
                w.WriteStartObject();
                w.WriteString("id", t.Id);
                w.WriteString("name", t.Function?.Name);
                WriteArguments(w, t.Function);
                w.WriteEndObject();
            }

            w.WriteEndArray();
        }

        if (m.ToolCallId is not null)
        {
            w.WriteString("tool_call_id", m.ToolCallId);
        }

        WriteExtra(w, m.AdditionalProperties, static _ => false);
        w.WriteEndObject();
    }

    /// <summary>
    /// A text kept as the request's JSON string (a message's, or arguments that are not JSON), written under
    /// <paramref name="name"/> from its UTF-8: the same bytes as writing its string (the
    /// encoder escapes the same characters either way; <c>KeptTextTests</c> holds keys of both to each other), without
    /// making the string — an agent's ~26 KB of texts made into UTF-16 on every step with the cache on.
    /// </summary>
    private static void WriteText(Utf8JsonWriter w, ReadOnlySpan<byte> name, ReadOnlySpan<byte> json)
    {
        var r = new Utf8JsonReader(json);
        r.Read();
        if (!r.ValueIsEscaped)
        {
            w.WriteString(name, r.ValueSpan);
            return;
        }

        var text = ArrayPool<byte>.Shared.Rent(r.ValueSpan.Length);
        try
        {
            w.WriteString(name, text.AsSpan(0, r.CopyString(text)));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(text);
        }
    }

    private static void WriteArguments(Utf8JsonWriter w, FunctionCall? function)
    {
        // Tool arguments are JSON in a string; compare them as JSON when they parse. Text that does not parse goes under
        // its own name: as a string value it would be the key of the JSON string with that text ("x" and x alike).
        // Made once per distinct arguments: those kept as the request's JSON string are compared by its bytes, their
        // string made only with their form.
        var form = function?.ArgumentsKept is not null ? KeyForms.Shared.Arguments(function, MakeArguments)
            : function?.Arguments is { } arguments ? KeyForms.Shared.Arguments(arguments, MakeArguments)
            : null;
        if (form is null)
        {
            w.WriteNull("arguments");
            return;
        }

        if (form.Length == 0)
        {
            if (function!.ArgumentsKept is { } kept)
            {
                WriteText(w, "arguments_text"u8, kept); // as a kept text is: the same bytes as from the string
            }
            else
            {
                w.WriteString("arguments_text", function.Arguments);
            }

            return;
        }

        w.WritePropertyName("arguments");
        w.WriteRawValue(form, skipInputValidation: true);
    }

    private static readonly Func<Utf8JsonWriter, string, bool> MakeArguments = static (w, arguments) =>
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(arguments);
        }
        catch (JsonException)
        {
            return false;
        }

        using (doc)
        {
            WriteCanonical(w, doc.RootElement);
        }

        return true;
    };

    private static void WriteExtra(Utf8JsonWriter w, Dictionary<string, JsonElement>? extra, Func<string, bool> skip)
    {
        if (extra is null || extra.Count == 0)
        {
            return;
        }

        foreach (var (name, value) in extra.OrderBy(static kv => kv.Key, StringComparer.Ordinal))
        {
            if (!skip(name))
            {
                w.WritePropertyName("x:" + name);
                WriteCanonical(w, value);
            }
        }
    }

    private static void WriteNumber(Utf8JsonWriter w, string name, double? value)
    {
        if (value is { } v)
        {
            w.WritePropertyName(name);
            w.WriteRawValue(Normalize(v), skipInputValidation: true);
        }
    }

    private static void WriteElement(Utf8JsonWriter w, string name, JsonElement? value)
    {
        if (value is { ValueKind: not JsonValueKind.Null and not JsonValueKind.Undefined } v)
        {
            w.WritePropertyName(name);
            WriteCanonical(w, v);
        }
    }

    /// <summary>Writes JSON with object keys sorted and numbers in one normal form.</summary>
    internal static void WriteCanonical(Utf8JsonWriter w, JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                w.WriteStartObject();
                foreach (var p in e.EnumerateObject().OrderBy(static p => p.Name, StringComparer.Ordinal))
                {
                    w.WritePropertyName(p.Name);
                    WriteCanonical(w, p.Value);
                }

                w.WriteEndObject();
                break;
            case JsonValueKind.Array:
                w.WriteStartArray();
                foreach (var item in e.EnumerateArray())
                {
                    WriteCanonical(w, item);
                }

                w.WriteEndArray();
                break;
            case JsonValueKind.Number:
                w.WriteRawValue(e.TryGetDecimal(out var d) ? Normalize(d) : Normalize(e.GetDouble()), skipInputValidation: true);
                break;
            default:
                e.WriteTo(w);
                break;
        }
    }

    private static string Normalize(double v) =>
        Math.Abs(v) < 7.9e27 ? Normalize((decimal)v) : v.ToString("R", System.Globalization.CultureInfo.InvariantCulture);

    // decimal keeps trailing zeros (1.0 vs 1); dividing by 1.000…0 strips them to a normal form.
    private static string Normalize(decimal v) => (v / 1.0000000000000000000000000000m).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
