using System.ComponentModel.DataAnnotations;
using PipelineGateway.Admission;
using PipelineGateway.Caching;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Routing;

namespace PipelineGateway.Hosting;

/// <summary>The whole gateway configuration (section <c>Gateway</c>), validated at start.</summary>
public sealed class GatewayOptions
{
    public const string SectionName = "Gateway";

    public PipelineOptions Pipeline { get; set; } = new();

    public List<ProviderOptions> Providers { get; set; } = [];

    public List<ModelGroupOptions> Models { get; set; } = [];

    public AdmissionOptions Admission { get; set; } = new();

    public CacheOptions Cache { get; set; } = new();
}

/// <summary>Sizes and timings of the pipeline engine. See docs/architecture.md for why each bound is where it is.</summary>
public sealed class PipelineOptions
{
    /// <summary>Requests admitted and not yet finished, at most. Bounds everything downstream of admission.</summary>
    [Range(1, 1_000_000)]
    public int MaxInFlight { get; set; } = 1024;

    /// <summary>Requests waiting for admission, at most. Past it, SubmitAsync waits and fail-fast callers get queue-full.</summary>
    [Range(1, 1_000_000)]
    public int AdmissionQueueCapacity { get; set; } = 1024;

    /// <summary>Capacity of the admission → cache channel.</summary>
    [Range(1, 1_000_000)]
    public int CacheQueueCapacity { get; set; } = 256;

    /// <summary>How long a request may take from submission to answer, unless it sets its own timeout.</summary>
    public TimeSpan DefaultTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Attempts per request across all providers, the first included.</summary>
    [Range(1, 20)]
    public int MaxAttempts { get; set; } = 3;

    /// <summary>First backoff before re-trying a deployment already tried; doubles each time, with jitter.</summary>
    public TimeSpan RetryBaseDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>The longest backoff before a retry.</summary>
    public TimeSpan RetryMaxDelay { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>On shutdown, how long in-flight work may take to finish before it is failed explicitly.</summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The retry-after suggested to callers refused because the queue is full.</summary>
    public TimeSpan QueueFullRetryAfter { get; set; } = TimeSpan.FromSeconds(1);
}

/// <summary>One provider: a backend with its own worker pool.</summary>
public sealed class ProviderOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Name { get; set; } = string.Empty;

    /// <summary>The adapter: <c>Simulated</c>, or <c>Custom</c> for a provider registered in code.</summary>
    [Required(AllowEmptyStrings = false)]
    public string Type { get; set; } = ProviderTypes.Simulated;

    /// <summary>Workers calling this provider concurrently (its max concurrency).</summary>
    [Range(1, 10_000)]
    public int Workers { get; set; } = 16;

    /// <summary>Capacity of this provider's queue.</summary>
    [Range(1, 1_000_000)]
    public int QueueCapacity { get; set; } = 256;

    public SimulatedProviderOptions? Simulated { get; set; }
}

public static class ProviderTypes
{
    public const string Simulated = "Simulated";
    public const string Custom = "Custom";
}
