using System.Collections.Concurrent;

namespace PipelineGateway.Routing;

/// <summary>
/// A configured model group whose name ends in <c>*</c> (<c>openai/*</c>, or <c>*</c> for every name no group has):
/// a name it matches gets a group of its own on first use, its deployments the wildcard's with <c>*</c> in their
/// upstream model replaced by what the caller's name has there — so health, latency, price and metrics are per model,
/// as for a configured group. Bounded: at most <see cref="Max"/> groups; a group no upstream has answered yet is
/// forgotten when an upstream says 404 (no such model) or when room is needed for another, so names a caller makes up
/// cannot fill it.
/// </summary>
internal sealed class WildcardModels
{
    /// <summary>The longest name part a wildcard takes (a model id is far shorter; the request log keeps 256).</summary>
    internal const int MaxRestLength = 200;

    private readonly ConcurrentDictionary<string, ModelGroup> _made = new(StringComparer.Ordinal);
    private readonly Func<WildcardModels, string, ModelGroup> _make;
    private readonly Action<ModelGroup>? _established;
    private readonly Lock _gate = new();

    /// <param name="template">The configured group (its name ends in <c>*</c>): its fallbacks are linked once, at start.</param>
    /// <param name="make">Makes the group for a name and the part <c>*</c> stands for.</param>
    /// <param name="established">Told once per made group, when an upstream first answers it.</param>
    internal WildcardModels(ModelGroup template, int max, bool listsUpstreamModels, Func<WildcardModels, string, ModelGroup> make, Action<ModelGroup>? established = null)
    {
        Template = template;
        ListsUpstreamModels = listsUpstreamModels;
        Name = template.Name;
        Prefix = Name[..^1];
        Max = max;
        _make = make;
        _established = established;
    }

    /// <summary>The configured name, <c>*</c> included.</summary>
    public string Name { get; }

    /// <summary>What a name must start with (case-insensitive, as configured names are matched).</summary>
    public string Prefix { get; }

    public int Max { get; }

    /// <summary><c>/v1/models</c> lists the names its providers' own model lists make (<see cref="UpstreamModelList"/>).</summary>
    public bool ListsUpstreamModels { get; }

    internal ModelGroup Template { get; }

    /// <summary>The groups made so far (a moment's view).</summary>
    public IEnumerable<ModelGroup> Made => _made.Values;

    public int Count => _made.Count;

    /// <summary>
    /// Whether <paramref name="model"/> is the prefix and then something <c>*</c> can stand for: one character at least,
    /// at most <see cref="MaxRestLength"/>, none of them a control character, white space or <c>*</c>, and no
    /// <c>/</c>-separated part <c>.</c> or <c>..</c> — no model is named so, and an upstream that puts the model in its
    /// URL (Azure OpenAI's <c>/openai/deployments/{model}/…</c>) would take <c>..</c> as a step up its path.
    /// </summary>
    public bool Matches(string model, out string? rest)
    {
        rest = null;
        if (model.Length <= Prefix.Length || model.Length - Prefix.Length > MaxRestLength || !model.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        var tail = model.AsSpan(Prefix.Length);
        foreach (var c in tail)
        {
            if (char.IsControl(c) || char.IsWhiteSpace(c) || c == '*')
            {
                return false;
            }
        }

        foreach (var part in tail.Split('/'))
        {
            if (tail[part] is "." or "..")
            {
                return false;
            }
        }

        rest = tail.ToString();
        return true;
    }

    /// <summary>The group made for <paramref name="rest"/>, made now on first use; null when every place is held by a group that answered.</summary>
    public ModelGroup? GetOrMake(string rest)
    {
        if (_made.TryGetValue(rest, out var group))
        {
            return group;
        }

        lock (_gate)
        {
            if (_made.TryGetValue(rest, out group))
            {
                return group;
            }

            if (_made.Count >= Max && !TryEvictOne())
            {
                return null;
            }

            group = _make(this, rest);
            group.LinkLike(Template);
            _made[rest] = group;
            return group;
        }
    }

    /// <summary>
    /// Forgets a group no upstream has answered (its upstreams said the model does not exist): the name's next request
    /// makes a fresh one. Requests holding it finish with it.
    /// </summary>
    public void Forget(ModelGroup group)
    {
        if (!group.Established && ReferenceEquals(group.Wildcard, this))
        {
            _made.TryRemove(new KeyValuePair<string, ModelGroup>(group.WildcardRest!, group));
        }
    }

    internal void OnEstablished(ModelGroup group) => _established?.Invoke(group);

    /// <summary>Makes room: forgets one group no upstream has answered, if there is one (a scan, only when full).</summary>
    private bool TryEvictOne()
    {
        foreach (var (rest, group) in _made)
        {
            if (!group.Established && _made.TryRemove(new KeyValuePair<string, ModelGroup>(rest, group)))
            {
                return true;
            }
        }

        return false;
    }
}
