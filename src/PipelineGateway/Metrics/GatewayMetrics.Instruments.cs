using System.Collections.Frozen;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Metrics;

/// <summary>The OpenTelemetry instruments (GenAI conventions) recorded as each request ends.</summary>
internal sealed partial class GatewayMetrics
{
    /// <param name="usage">The billed usage (an answer's, or what an interrupted stream consumed), else null.</param>
    /// <param name="costNanoUsd">Its price, in nano-dollars (<see cref="Cost.NanoUsd"/>).</param>
    /// <param name="consumedAt">The deployment an interrupted stream consumed at (its system and model label the tokens).</param>
    /// <param name="hedge">A hedged attempt's second leg given up on in flight: its tokens and cost under its own provider.</param>
    private void RecordInstruments(WorkItem item, ChatCompletionResponse? response, GatewayResponseInfo? info, Exception? error, TimeSpan latency, TokenUsage? usage, long costNanoUsd, Routing.Deployment? consumedAt, ConsumedUpstream? hedge = null)
    {
        var i = _instruments;
        var counters = i.CountersEnabled;
        if (!counters && !i.Duration.Enabled && !i.Tokens.Enabled)
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
        var operation = Providers.Operations.OperationName(item.Request);
        var requestModel = item.RootGroup.MetricName(item.Request.Model);
        var errorType = error?.GetType().Name;
        var tags = i.Tags(operation, system, requestModel, responseModel, errorType);
        i.Duration.Record(latency.TotalSeconds, tags);
        RecordTokens(usage, tags);
        if (counters)
        {
            // The counters' totals, one lookup for the three (InstrumentTotals: the SDK's per-measurement lookups were
            // the instruments' cost).
            var series = i.Totals.Request(operation, system, requestModel, responseModel, errorType);
            series.End(error is not null ? InstrumentTotals.RequestSeries.Failure : info?.Cached == true ? InstrumentTotals.RequestSeries.Cached : info?.Coalesced == true ? InstrumentTotals.RequestSeries.Coalesced : InstrumentTotals.RequestSeries.Success, info?.Cached == true);
            if (costNanoUsd > 0)
            {
                series.AddCost(costNanoUsd);
            }
        }

        if (hedge is not null)
        {
            var leg = hedge.Deployment;
            var legSystem = _systems.GetValueOrDefault(leg.ProviderName, leg.ProviderName);
            RecordTokens(hedge.Usage, i.Tags(operation, legSystem, requestModel, leg.Model, errorType));
            if (counters && hedge.Cost > 0)
            {
                i.Totals.Request(operation, legSystem, requestModel, leg.Model, errorType).AddCost(Cost.NanoUsd.From(hedge.Cost));
            }
        }
    }

    /// <summary>Tokens under <paramref name="tags"/>: nothing for a hit or a coalesced request (no tokens used upstream) or a failure that consumed nothing.</summary>
    private void RecordTokens(TokenUsage? usage, System.Diagnostics.TagList tags)
    {
        if (usage is not null && _instruments.Tokens.Enabled)
        {
            var input = tags;
            input.Add("gen_ai.token.type", "input");
            _instruments.Tokens.Record(usage.PromptTokens, input);
            var output = tags;
            output.Add("gen_ai.token.type", "output");
            _instruments.Tokens.Record(usage.CompletionTokens, output);
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
