using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Admission;

/// <summary>
/// Loads, as the gateway starts, the tokenizers its token limits will count with (admission's <c>Unit: Tokens</c> rules,
/// a provider's <c>TokensPerMinute</c>): the encodings of the model group names (what admission counts a prompt by) and
/// of their deployments' models (what an estimated answer is counted by). A tokenizer takes ~300 ms to load; loaded by
/// the first request that needed it, that request held admission's stage loop — and every request behind it — for
/// that long. Started before the pipeline accepts requests (registered ahead of its lifetime). A gateway without token
/// limits loads none (<see cref="TokenCounter"/>: 42 MB of live objects for o200k).
/// </summary>
internal sealed partial class TokenizerWarmup(AdmissionRateLimiter admission, IOptions<GatewayOptions> options, ILogger<TokenizerWarmup> logger) : IHostedService
{
    /// <summary>The encodings loaded at start (none without token limits).</summary>
    public IReadOnlyList<string> Loaded { get; private set; } = [];

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        if (!admission.CountsTokens && !o.Providers.Any(p => p.TokensPerMinute is not null))
        {
            return;
        }

        var encodings = o.Models
            .SelectMany(g => g.Deployments.Select(d => d.Model).Prepend(g.Name))
            .OfType<string>()
            .Select(TokenCounter.EncodingFor)
            .OfType<string>()
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal)
            .ToList();
        if (encodings.Count == 0)
        {
            return;
        }

        await Task.Run(() => encodings.ForEach(TokenCounter.Load), cancellationToken).ConfigureAwait(false);
        Loaded = encodings;
        LogLoaded(logger, encodings);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(Level = LogLevel.Information, Message = "Tokenizers loaded for the token limits: {Encodings}")]
    private static partial void LogLoaded(ILogger logger, IReadOnlyList<string> encodings);
}
