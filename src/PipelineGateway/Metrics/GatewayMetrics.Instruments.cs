using System.Collections.Frozen;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Metrics;

/// <summary>The OpenTelemetry instruments (GenAI conventions) recorded as each request ends.</summary>
internal sealed partial class GatewayMetrics
{
    /// <param name="usage">The billed usage (an answer's, or what an interrupted stream consumed), else null.</param>
    /// <param name="cost">Its price.</param>
    /// <param name="consumedAt">The deployment an interrupted stream consumed at (its system and model label the tokens).</param>
    /// <param name="hedge">A hedged attempt's second leg given up on in flight: its tokens and cost under its own provider.</param>
    private void RecordInstruments(WorkItem item, ChatCompletionResponse? response, GatewayResponseInfo? info, Exception? error, TimeSpan latency, TokenUsage? usage, decimal cost, Routing.Deployment? consumedAt, ConsumedUpstream? hedge = null)
    {
        var i = _instruments;
        if (!i.Duration.Enabled && !i.Tokens.Enabled && !i.RequestCount.Enabled && !i.Cost.Enabled && !i.CacheHitCount.Enabled)
        {
            return; // nobody listens: no tags built, nothing recorded
        }

        // An upstream's refusal of the request (a 400 it gave) is that provider's answer, labelled as its; a failure
        // the gateway gave (every attempt failed, or none was made) is the gateway's.
        var provider = consumedAt?.ProviderName ?? info?.Provider ?? (error is UpstreamRejectedException { Attempts: [.., var last] } ? last.Provider : null);
        var system = provider is null ? "pipelinegateway" : _systems.GetValueOrDefault(provider, provider);
        // The reported model by the deployment's bounded labels; a cache hit or follower (no attempt of its own) by the
        // deployment model its answer came from.
        var answered = consumedAt ?? (info is null ? null : LastSuccess(info.Attempts)?.Deployment);
        var responseModel = response?.Model is { Length: > 0 } m && answered is not null ? answered.ResponseModelLabel(m) : consumedAt?.Model ?? info?.ProviderModel;
        var tags = i.Tags(Providers.Operations.OperationName(item.Request), system, item.RootGroup.MetricName(item.Request.Model), responseModel, error?.GetType().Name);
        i.Duration.Record(latency.TotalSeconds, tags);
        var outcome = tags;
        outcome.Add("pgw.outcome", error is not null ? "failure" : info?.Cached == true ? "cached" : info?.Coalesced == true ? "coalesced" : "success");
        i.RequestCount.Add(1, outcome);
        if (info?.Cached == true)
        {
            i.CacheHitCount.Add(1, tags);
        }

        RecordSpend(usage, cost, tags);
        if (hedge is not null)
        {
            var leg = hedge.Deployment;
            RecordSpend(hedge.Usage, hedge.Cost, i.Tags(Providers.Operations.OperationName(item.Request), _systems.GetValueOrDefault(leg.ProviderName, leg.ProviderName), item.RootGroup.MetricName(item.Request.Model), leg.Model, error?.GetType().Name));
        }
    }

    /// <summary>Tokens and cost under <paramref name="tags"/>: nothing for a hit or a coalesced request (no tokens used upstream) or a failure that consumed nothing.</summary>
    private void RecordSpend(TokenUsage? usage, decimal cost, System.Diagnostics.TagList tags)
    {
        var i = _instruments;
        if (usage is not null)
        {
            var input = tags;
            input.Add("gen_ai.token.type", "input");
            i.Tokens.Record(usage.PromptTokens, input);
            var output = tags;
            output.Add("gen_ai.token.type", "output");
            i.Tokens.Record(usage.CompletionTokens, output);
        }

        if (cost > 0)
        {
            i.Cost.Add((double)cost, tags);
        }
    }

    private System.Collections.Frozen.FrozenDictionary<string, string> _systems = System.Collections.Frozen.FrozenDictionary<string, string>.Empty;

    /// <summary>
    /// The provider label of each provider (<c>gen_ai.provider.name</c>'s values: openai, anthropic, azure.ai.openai, or
    /// the provider's name), as the instruments' conventions spell it (<see cref="GatewayInstruments.ProviderValue"/>).
    /// </summary>
    internal void SetSystems(IReadOnlyDictionary<string, string> systems) =>
        _systems = systems.ToFrozenDictionary(static p => p.Key, p => _instruments.ProviderValue(p.Value), StringComparer.Ordinal);
}
