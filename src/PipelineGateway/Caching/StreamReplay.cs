using System.Buffers;
using System.Text;
using System.Text.Json;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Caching;

/// <summary>
/// Streams and whole answers, both ways: a finished stream is assembled into one answer to store, and a stored
/// answer is replayed to a streaming caller as chunks carrying the same content, tool calls, finish reason and usage
/// — and what else the first choice says: a refusal, a reasoning model's text (<c>reasoning_content</c>,
/// <c>reasoning</c>), Claude's signed thinking blocks (which Claude needs back in a tool loop's next turn), the log
/// probabilities, and Claude's stop reason when the finish reason loses it (a stop sequence, <c>pause_turn</c>).
/// </summary>
internal sealed class StreamReplay
{
    /// <summary>The reasoning text members a delta's pieces of are joined (the names OpenAI-compatible reasoning APIs use).</summary>
    private static readonly string[] ReasoningMembers = [ThinkingBlocks.ReasoningMember, "reasoning"];

    private readonly StringBuilder _content = new();
    // Each call's arguments gathered in a builder (a long call comes in thousands of fragments: string concatenation
    // would copy it whole at each), made the call's string when the answer is put together.
    private readonly SortedDictionary<int, (ToolCall Call, StringBuilder Arguments)> _tools = [];
    private StringBuilder? _refusal;
    private StringBuilder?[]? _reasoning;
    private ThinkingBlocks.Collector? _thinking;
    private List<JsonElement>? _logprobs;
    private List<JsonElement>? _refusalLogprobs;
    private (string Reason, string? Sequence)? _stop;
    private string? _finish;
    private string _id = string.Empty;
    private string _model = string.Empty;
    private long _created;
    private TokenUsage? _usage;

    public void Add(ChatCompletionChunk chunk)
    {
        _id = chunk.Id.Length > 0 ? chunk.Id : _id;
        _model = chunk.Model.Length > 0 ? chunk.Model : _model;
        _created = chunk.Created != 0 ? chunk.Created : _created;
        _usage = chunk.Usage ?? _usage;
        _stop = chunk.AnthropicStop ?? _stop;
        foreach (var choice in chunk.Choices)
        {
            if (choice.Index != 0)
            {
                continue;
            }

            _content.Append(choice.Delta.Content);
            if (choice.Delta.Refusal is { Length: > 0 } refusal)
            {
                (_refusal ??= new StringBuilder()).Append(refusal);
            }

            if (choice.Delta.AdditionalProperties is { } extra)
            {
                AddReasoning(extra);
            }

            if (choice.Logprobs is { ValueKind: JsonValueKind.Object } logprobs)
            {
                Append(ref _logprobs, logprobs, "content");
                Append(ref _refusalLogprobs, logprobs, "refusal");
            }

            _finish = choice.FinishReason ?? _finish;
            foreach (var delta in choice.Delta.ToolCalls ?? [])
            {
                var index = delta.Index ?? 0;
                if (!_tools.TryGetValue(index, out var tool))
                {
                    _tools[index] = tool = (new ToolCall { Index = null, Type = "function", Function = new FunctionCall { Arguments = string.Empty } }, new StringBuilder());
                }

                tool.Call.Id ??= delta.Id;
                tool.Call.Function!.Name ??= delta.Function?.Name;
                tool.Arguments.Append(delta.Function?.Arguments);
                foreach (var (name, value) in delta.AdditionalProperties ?? [])
                {
                    (tool.Call.AdditionalProperties ??= [])[name] = value; // Gemini's thought signature, on the call's first delta
                }
            }
        }
    }

    /// <summary>The whole answer, once the stream finished normally.</summary>
    public ChatCompletionResponse ToResponse()
    {
        var response = new ChatCompletionResponse
        {
            Id = _id,
            Created = _created,
            Model = _model,
            Choices =
            [
                new ChatChoice
                {
                    Message = new ChatCompletionMessage
                    {
                        Role = ChatRoles.Assistant,
                        Content = _content.Length == 0 && (_tools.Count > 0 || _refusal is not null) ? null : new MessageContent(_content.ToString()),
                        ToolCalls = _tools.Count > 0 ? [.. _tools.Values.Select(static t => { t.Call.Function!.Arguments = t.Arguments.ToString(); return t.Call; })] : null,
                        Refusal = _refusal?.ToString(),
                        AdditionalProperties = Reasoning(),
                    },
                    FinishReason = _finish,
                    Logprobs = _logprobs is null && _refusalLogprobs is null ? null : Logprobs(_logprobs, _refusalLogprobs),
                },
            ],
            Usage = _usage,
        };

        if (_stop is { } stop)
        {
            AnthropicStop.Set(response, stop.Reason, stop.Sequence);
        }

        return response;
    }

    private void AddReasoning(Dictionary<string, JsonElement> extra)
    {
        for (var i = 0; i < ReasoningMembers.Length; i++)
        {
            if (extra.TryGetValue(ReasoningMembers[i], out var text) && text.ValueKind == JsonValueKind.String)
            {
                _reasoning ??= new StringBuilder?[ReasoningMembers.Length];
                (_reasoning[i] ??= new StringBuilder()).Append(text.GetString());
            }
        }

        if (ThinkingBlocks.Read(extra) is { Count: > 0 } pieces)
        {
            (_thinking ??= new ThinkingBlocks.Collector()).Add(pieces);
        }
    }

    /// <summary>The message's reasoning members: each text whole, the thinking blocks whole (null: none).</summary>
    private Dictionary<string, JsonElement>? Reasoning()
    {
        Dictionary<string, JsonElement>? extra = null;
        for (var i = 0; _reasoning is not null && i < ReasoningMembers.Length; i++)
        {
            if (_reasoning[i] is { } text)
            {
                (extra ??= [])[ReasoningMembers[i]] = JsonSerializer.SerializeToElement(text.ToString(), GatewayJsonContext.Default.String);
            }
        }

        return _thinking is null ? extra : ThinkingBlocks.Write(extra, _thinking.Blocks(), reasoning: null);
    }

    private static void Append(ref List<JsonElement>? list, JsonElement logprobs, string member)
    {
        if (logprobs.TryGetProperty(member, out var items) && items.ValueKind == JsonValueKind.Array)
        {
            list ??= [];
            foreach (var item in items.EnumerateArray())
            {
                list.Add(item.Clone());
            }
        }
    }

    /// <summary>A choice's <c>logprobs</c>: <c>content</c> and <c>refusal</c>, each the tokens' entries in order (null: none).</summary>
    private static JsonElement Logprobs(List<JsonElement>? content, List<JsonElement>? refusal)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder }))
        {
            w.WriteStartObject();
            Write(w, "content", content);
            Write(w, "refusal", refusal);
            w.WriteEndObject();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();

        static void Write(Utf8JsonWriter w, string name, List<JsonElement>? items)
        {
            if (items is null)
            {
                w.WriteNull(name);
                return;
            }

            w.WriteStartArray(name);
            foreach (var item in items)
            {
                item.WriteTo(w);
            }

            w.WriteEndArray();
        }
    }

    /// <summary>
    /// A stored answer as stream chunks: role, content, tool calls, finish reason, then usage; the first and the last
    /// carry <paramref name="info"/> (none: an upstream's whole answer to a stream request, before the worker's). For a
    /// caller that takes Claude's events (<paramref name="claudeEvents"/>: <c>/v1/messages</c>), an answer holding
    /// blocks as Claude wrote them (<see cref="ServerTools.ContentMember"/>: a search, citations) is replayed as Claude's
    /// events of those blocks, which the canonical chunks have no form for.
    /// </summary>
    public static IEnumerable<ChatCompletionChunk> ToChunks(ChatCompletionResponse response, GatewayResponseInfo? info, bool claudeEvents = false)
    {
        var message = response.Choices.Count > 0 ? response.Choices[0].Message : null;
        ChatCompletionChunk Chunk(ChatCompletionDelta delta, string? finish = null) => new()
        {
            Id = response.Id,
            Created = response.Created,
            Model = response.Model,
            Choices = [new ChunkChoice { Delta = delta, FinishReason = finish }],
        };

        if (claudeEvents && message is not null && ServerTools.Content(message) is { } blocks)
        {
            var opening = Chunk(new ChatCompletionDelta { Role = ChatRoles.Assistant });
            opening.Gateway = info;
            yield return opening;
            foreach (var e in AnthropicResponses.BlockEvents(blocks))
            {
                // As a live stream's event chunks are: content a caller sees, which the chunks cannot store again.
                yield return new ChatCompletionChunk { Id = response.Id, Created = response.Created, Model = response.Model, Choices = [], AnthropicEvent = e, CarriesNativeContent = true, Uncacheable = true };
            }

            foreach (var chunk in Closing(response, info, Chunk))
            {
                yield return chunk;
            }

            yield break;
        }

        // The first chunk says everything but the tool calls: the reasoning (written before the text by every route), the
        // text, a refusal, and the log probabilities of them.
        var first = Chunk(new ChatCompletionDelta
        {
            Role = ChatRoles.Assistant,
            Content = message?.Content?.GetText() ?? (message?.Refusal is null ? string.Empty : null),
            Refusal = message?.Refusal,
            AdditionalProperties = ReasoningOf(message),
        });
        first.Choices[0].Logprobs = response.Choices.Count > 0 ? response.Choices[0].Logprobs : null;
        first.Gateway = info;
        yield return first;
        var tools = message?.ToolCalls ?? [];
        for (var i = 0; i < tools.Count; i++)
        {
            yield return Chunk(new ChatCompletionDelta
            {
                ToolCalls = [new ToolCall { Index = i, Id = tools[i].Id, Type = "function", Function = new FunctionCall { Name = tools[i].Function?.Name, Arguments = tools[i].Function?.Arguments }, AdditionalProperties = tools[i].AdditionalProperties }],
            });
        }

        foreach (var chunk in Closing(response, info, Chunk))
        {
            yield return chunk;
        }
    }

    /// <summary>The finish reason's chunk, then the usage's; the last carries the info (and with it the cost), as a live stream's does.</summary>
    private static IEnumerable<ChatCompletionChunk> Closing(ChatCompletionResponse response, GatewayResponseInfo? info, Func<ChatCompletionDelta, string?, ChatCompletionChunk> chunk)
    {
        var finish = chunk(new ChatCompletionDelta(), response.Choices.Count > 0 ? response.Choices[0].FinishReason ?? FinishReasons.Stop : FinishReasons.Stop);
        finish.AnthropicStop = AnthropicStop.Of(response);
        if (response.Usage is not { } usage)
        {
            finish.Gateway = info;
            yield return finish;
            yield break;
        }

        yield return finish;
        yield return new ChatCompletionChunk { Id = response.Id, Created = response.Created, Model = response.Model, Choices = [], Usage = usage, Gateway = info };
    }

    /// <summary>A message's reasoning members, as a delta carries them (null: none).</summary>
    private static Dictionary<string, JsonElement>? ReasoningOf(ChatCompletionMessage? message)
    {
        if (message?.AdditionalProperties is not { } extra)
        {
            return null;
        }

        Dictionary<string, JsonElement>? delta = null;
        foreach (var name in ReasoningMembers.Append(ThinkingBlocks.Member))
        {
            if (extra.TryGetValue(name, out var value))
            {
                (delta ??= [])[name] = value;
            }
        }

        return delta;
    }
}
