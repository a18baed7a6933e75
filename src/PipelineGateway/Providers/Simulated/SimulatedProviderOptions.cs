using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Providers.Simulated;

/// <summary>Behaviour of an in-process simulated provider. Deterministic for a given <see cref="Seed"/>.</summary>
public sealed class SimulatedProviderOptions
{
    /// <summary>Mean time for a whole response (or to the first chunk of a stream), in milliseconds. 0 = instant.</summary>
    [Range(0, 600_000)]
    public double LatencyMs { get; set; } = 50;

    /// <summary>Uniform jitter added to the latency: each call takes LatencyMs ± JitterMs.</summary>
    [Range(0, 600_000)]
    public double JitterMs { get; set; }

    /// <summary>Delay between streamed chunks, in milliseconds.</summary>
    [Range(0, 60_000)]
    public double PerTokenDelayMs { get; set; }

    /// <summary>Share of calls that fail with a retryable 503 (0..1).</summary>
    [Range(0.0, 1.0)]
    public double FailureRate { get; set; }

    /// <summary>Share of calls that fail with 429 and a Retry-After (0..1).</summary>
    [Range(0.0, 1.0)]
    public double RateLimitRate { get; set; }

    /// <summary>The Retry-After the simulated 429 carries, in milliseconds.</summary>
    [Range(0, 600_000)]
    public double RetryAfterMs { get; set; } = 1000;

    /// <summary>Seed of the failure and latency draws: the same seed gives the same sequence.</summary>
    public int Seed { get; set; } = 1;

    /// <summary>Completion length in words when the request sets no max_tokens.</summary>
    [Range(1, 100_000)]
    public int CompletionWords { get; set; } = 24;
}
