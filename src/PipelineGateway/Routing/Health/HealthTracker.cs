using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Routing.Health;

/// <summary>
/// The one owner of deployment health: workers report every attempt's outcome here, the router asks here
/// what it may use. Circuits follow closed → open (cooldown) → half-open (one probe) → closed, or open again
/// with a doubled cooldown; a 429 cools a deployment down until its Retry-After.
/// </summary>
internal sealed class HealthTracker(IOptions<GatewayOptions> options, TimeProvider time)
{
    private readonly HealthOptions _options = options.Value.Health;

    public HealthOptions Options => _options;

    public DateTimeOffset Now => time.GetUtcNow();

    public bool IsSelectable(Deployment d, DateTimeOffset now) => !_options.Enabled || d.State.IsSelectable(now);

    public bool TryAcquire(Deployment d, DateTimeOffset now) => !_options.Enabled || d.State.TryAcquire(now);

    public void Report(Deployment d, AttemptOutcome outcome, TimeSpan latency, TimeSpan? retryAfter)
    {
        var now = time.GetUtcNow();
        switch (outcome)
        {
            case AttemptOutcome.Success:
                d.State.RecordLatency(latency.TotalMilliseconds, now, _options.LatencySmoothing);
                if (_options.Enabled)
                {
                    d.State.OnSuccess(now, _options);
                }

                break;
            case AttemptOutcome.RateLimited when _options.Enabled:
                d.State.OnRateLimited(now, retryAfter, _options);
                break;
            case AttemptOutcome.RetryableError or AttemptOutcome.Timeout when _options.Enabled:
                d.State.OnFailure(now, _options);
                break;
            default:
                d.State.OnNeutral();
                break;
        }
    }
}
