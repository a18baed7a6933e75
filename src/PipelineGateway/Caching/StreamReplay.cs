using System.Text;

namespace PipelineGateway.Caching;

/// <summary>
/// Streams and whole answers, both ways: a finished stream is assembled into one answer to store, and a stored
/// answer is replayed to a streaming caller as chunks carrying the same content, tool calls, finish reason and usage.
/// </summary>
internal sealed class StreamReplay
{
    private readonly StringBuilder _content = new();
    private readonly SortedDictionary<int, ToolCall> _tools = [];
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
        foreach (var choice in chunk.Choices)
        {
            if (choice.Index != 0)
            {
                continue;
            }

            _content.Append(choice.Delta.Content);
            _finish = choice.FinishReason ?? _finish;
            foreach (var delta in choice.Delta.ToolCalls ?? [])
            {
                var index = delta.Index ?? 0;
                if (!_tools.TryGetValue(index, out var call))
                {
                    _tools[index] = call = new ToolCall { Index = null, Type = "function", Function = new FunctionCall { Arguments = string.Empty } };
                }

                call.Id ??= delta.Id;
                call.Function!.Name ??= delta.Function?.Name;
                call.Function.Arguments += delta.Function?.Arguments;
            }
        }
    }

    /// <summary>The whole answer, once the stream finished normally.</summary>
    public ChatCompletionResponse ToResponse() => new()
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
                    Content = _content.Length == 0 && _tools.Count > 0 ? null : new MessageContent(_content.ToString()),
                    ToolCalls = _tools.Count > 0 ? [.. _tools.Values] : null,
                },
                FinishReason = _finish,
            },
        ],
        Usage = _usage,
    };

    /// <summary>
    /// A stored answer as stream chunks: role, content, tool calls, finish reason, then usage; the first and the last
    /// carry <paramref name="info"/> (none: an upstream's whole answer to a stream request, before the worker's).
    /// </summary>
    public static IEnumerable<ChatCompletionChunk> ToChunks(ChatCompletionResponse response, GatewayResponseInfo? info)
    {
        var message = response.Choices.Count > 0 ? response.Choices[0].Message : null;
        ChatCompletionChunk Chunk(ChatCompletionDelta delta, string? finish = null) => new()
        {
            Id = response.Id,
            Created = response.Created,
            Model = response.Model,
            Choices = [new ChunkChoice { Delta = delta, FinishReason = finish }],
        };

        var first = Chunk(new ChatCompletionDelta { Role = ChatRoles.Assistant, Content = message?.Content?.GetText() ?? string.Empty });
        first.Gateway = info;
        yield return first;
        var tools = message?.ToolCalls ?? [];
        for (var i = 0; i < tools.Count; i++)
        {
            yield return Chunk(new ChatCompletionDelta
            {
                ToolCalls = [new ToolCall { Index = i, Id = tools[i].Id, Type = "function", Function = new FunctionCall { Name = tools[i].Function?.Name, Arguments = tools[i].Function?.Arguments } }],
            });
        }

        var finish = Chunk(new ChatCompletionDelta(), response.Choices.Count > 0 ? response.Choices[0].FinishReason ?? FinishReasons.Stop : FinishReasons.Stop);
        if (response.Usage is not { } usage)
        {
            finish.Gateway = info; // the last chunk carries the info (and with it the cost), as a live stream's does
            yield return finish;
            yield break;
        }

        yield return finish;
        yield return new ChatCompletionChunk { Id = response.Id, Created = response.Created, Model = response.Model, Choices = [], Usage = usage, Gateway = info };
    }
}
