namespace PipelineGateway.Providers;

/// <summary>
/// A stream's tool calls as OpenAI's clients read them, whatever the upstream sent. Two departures seen from
/// OpenAI-compatible servers break tool loops downstream: Gemini's endpoint streams tool-call deltas without their
/// <c>index</c> (the OpenAI SDKs' stream helpers and the Vercel AI SDK's schema refuse such a chunk; the gateway's own
/// merging — the cache's, the Anthropic and Responses writers' — keyed them all to one call, so two parallel calls came
/// out as one with both arguments joined), and Gemini, o1-pro, Cohere, Ollama and vLLM's named tool choice finish a
/// stream that called tools with <c>stop</c>, where the same request answered whole says <c>tool_calls</c> (agent
/// frameworks that branch on it end the loop instead of calling the tool). So every delta leaves with an index — its
/// own; the one its call's id was first given; a new one for an id not seen; the last call's for a delta with neither
/// (an argument fragment, a signature sent after its call) — and a choice that called tools finishes with
/// <c>tool_calls</c> when its upstream said <c>stop</c>, as the whole answer does (<see cref="ProviderAnswer.Accept(ChatCompletionResponse?, string)"/>).
/// A chunk changed no longer writes as its upstream's bytes. Nothing is kept, and nothing is done per event, for a
/// stream without tool calls (a skimmed chunk has none).
/// </summary>
internal sealed class StreamToolCalls
{
    /// <summary>At most this many call ids are remembered per choice (a hostile upstream's bound: later ones still get an index).</summary>
    private const int MaxIds = 1024;

    /// <summary>At most this many choices are followed (n is at most 128 at OpenAI).</summary>
    private const int MaxChoices = 128;

    private readonly Dictionary<int, Choice> _choices = [];

    /// <summary>Gives <paramref name="chunk"/>'s tool-call deltas their index and its finishing choices their reason; <paramref name="state"/> is made at the stream's first tool call.</summary>
    public static void Normalize(ref StreamToolCalls? state, ChatCompletionChunk chunk)
    {
        var changed = false;
        if (!chunk.ChoicesUnread)
        {
            foreach (var choice in chunk.Choices)
            {
                if (choice.Delta.ToolCalls is { Count: > 0 } deltas && (state ??= new StreamToolCalls()).Follow(choice.Index) is { } calls)
                {
                    changed |= calls.Index(deltas);
                }
            }
        }

        if (state is not null && chunk.Finishes)
        {
            foreach (var choice in chunk.Choices) // a skimmed finishing chunk is read here: a stream with tool calls only
            {
                if (choice.FinishReason == FinishReasons.Stop && state._choices.ContainsKey(choice.Index))
                {
                    choice.FinishReason = FinishReasons.ToolCalls;
                    changed = true;
                }
            }
        }

        if (changed)
        {
            chunk.DropEventJson(); // no longer what the upstream's bytes say
        }
    }

    private Choice? Follow(int index)
    {
        if (_choices.TryGetValue(index, out var calls))
        {
            return calls;
        }

        if (_choices.Count >= MaxChoices)
        {
            return null;
        }

        return _choices[index] = new Choice();
    }

    private sealed class Choice
    {
        private readonly Dictionary<string, int> _ids = new(StringComparer.Ordinal);
        private int _next;
        private int _last = -1;

        /// <summary>Gives each delta without an index one; true when any was given.</summary>
        public bool Index(List<ToolCall> deltas)
        {
            var changed = false;
            foreach (var delta in deltas)
            {
                if (delta.Index is { } own)
                {
                    if (delta.Id is { Length: > 0 } named && _ids.Count < MaxIds)
                    {
                        _ids.TryAdd(named, own);
                    }

                    _next = Math.Max(_next, own + 1);
                    _last = own;
                    continue;
                }

                int index;
                if (delta.Id is { Length: > 0 } id)
                {
                    if (!_ids.TryGetValue(id, out index))
                    {
                        index = _next++;
                        if (_ids.Count < MaxIds)
                        {
                            _ids[id] = index;
                        }
                    }
                }
                else
                {
                    index = _last >= 0 ? _last : _next++; // a fragment of the last call (or the first call's start)
                }

                _next = Math.Max(_next, index + 1);
                delta.Index = _last = index;
                changed = true;
            }

            return changed;
        }
    }
}
