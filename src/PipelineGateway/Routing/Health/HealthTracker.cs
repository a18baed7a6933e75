using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;

namespace PipelineGateway.Routing.Health;

/// <summary>
/// The one owner of deployment health: workers report every attempt's outcome here, the router asks here
/// what it may use. Circuits follow closed → open (cooldown) → half-open (one probe) → closed, or open again
/// with a doubled cooldown; a 429 cools a deployment down and pauses its provider until its Retry-After.
/// </summary>
internal sealed partial class HealthTracker
{
    private readonly HealthOptions _options;
    private readonly TimeProvider time;
    private readonly IDistributedHealthChannel? _channel;
    private readonly Lazy<ModelCatalog> _catalog;
    private readonly ConcurrentDictionary<string, StrongBox<long>> _pauses = new(StringComparer.Ordinal);

    private readonly ILogger _logger;

    public HealthTracker(IOptions<GatewayOptions> options, TimeProvider time, IServiceProvider services, IDistributedHealthChannel? channel = null, ILogger<HealthTracker>? logger = null)
    {
        _options = options.Value.Health;
        this.time = time;
        _channel = channel;
        _logger = (ILogger?)logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

        // Resolved on the first remote signal: the catalog is built after the tracker.
        _catalog = new Lazy<ModelCatalog>(services.GetRequiredService<ModelCatalog>);
        if (_channel is not null && _options.Enabled)
        {
            _channel.Subscribe(Apply);
        }
    }

    public HealthOptions Options => _options;

    /// <summary>
    /// A group a wildcard just made: verdicts other instances gave on its deployments before it existed here (dropped
    /// then) are asked of the shared channel and applied — a moment after, not before its first request.
    /// </summary>
    public void Recall(ModelGroup made)
    {
        if (_channel is not null && _options.Enabled)
        {
            _channel.Recall([.. made.Deployments.Select(static d => d.Id)], signal =>
            {
                // To the group's own deployments (not looked up: the group may not be listed yet, or be forgotten since).
                if (signal.Duration > TimeSpan.Zero && Array.Find(made.DeploymentArray, d => d.Id == signal.DeploymentId) is { } d)
                {
                    ApplyTo(d, signal);
                }
            });
        }
    }

    public DateTimeOffset Now => time.GetUtcNow();

    public bool IsSelectable(Deployment d, DateTimeOffset now) => !_options.Enabled || d.State.IsSelectable(now);

    public bool TryAcquire(Deployment d, DateTimeOffset now) => !_options.Enabled || d.State.TryAcquire(now);

    public void Report(Deployment d, AttemptOutcome outcome, TimeSpan latency, TimeSpan? retryAfter, string? error = null)
    {
        var now = time.GetUtcNow();
        switch (outcome)
        {
            case AttemptOutcome.DeploymentUnavailable:
                // Its key or model is refused (401/403/404): out of rotation for a long while, whatever health says
                // about circuits, so one bad key never takes down a group whose other deployments are fine.
                if (d.State.OnRejected(now, now + _options.RejectedCooldown, error))
                {
                    LogRejected(_logger, d.Id, _options.RejectedCooldown.TotalSeconds, error ?? "rejected");
                }

                _channel?.Publish(new HealthSignal(d.Id, HealthSignalKind.Rejected, _options.RejectedCooldown));
                break;
            case AttemptOutcome.Success:
                d.State.RecordLatency(latency.TotalMilliseconds, now, _options.LatencySmoothing);
                if (_options.Enabled)
                {
                    d.State.OnSuccess(now, _options);
                }

                break;
            case AttemptOutcome.RateLimited:
                // The provider said 429: nothing goes to it until its Retry-After (its limits are usually per account,
                // not per model), and the deployment cools down for the router. Both are shared with other instances.
                var pause = retryAfter ?? _options.RateLimitCooldown;
                PauseProvider(d.ProviderName, now + pause);
                _channel?.Publish(new HealthSignal(d.ProviderName, HealthSignalKind.ProviderPause, pause));
                if (_options.Enabled)
                {
                    d.State.OnRateLimited(now, retryAfter, _options);
                    _channel?.Publish(new HealthSignal(d.Id, HealthSignalKind.Cooldown, pause));
                }

                break;
            case AttemptOutcome.RetryableError or AttemptOutcome.Timeout when _options.Enabled:
                var wasOpen = d.State.Circuit == CircuitState.Open;
                d.State.OnFailure(now, _options);
                if (_channel is not null && !wasOpen && d.State.Circuit == CircuitState.Open)
                {
                    _channel.Publish(new HealthSignal(d.Id, HealthSignalKind.CircuitOpen, d.State.AvailableAt - now));
                }

                break;
            default:
                d.State.OnNeutral();
                break;
        }
    }

    /// <summary>How long the provider must not be called yet (a 429's Retry-After, here or on another instance).</summary>
    public TimeSpan PausedFor(string provider)
    {
        if (!_pauses.TryGetValue(provider, out var until))
        {
            return TimeSpan.Zero;
        }

        var left = new DateTimeOffset(Volatile.Read(ref until.Value), TimeSpan.Zero) - time.GetUtcNow();
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    private void PauseProvider(string provider, DateTimeOffset until)
    {
        var box = _pauses.GetOrAdd(provider, static _ => new StrongBox<long>());
        long current;
        do
        {
            current = Volatile.Read(ref box.Value);
            if (until.UtcTicks <= current)
            {
                return;
            }
        }
        while (Interlocked.CompareExchange(ref box.Value, until.UtcTicks, current) != current);
    }

    /// <summary>Another instance's verdict: honoured here for the same duration.</summary>
    private void Apply(HealthSignal signal)
    {
        if (signal.Duration <= TimeSpan.Zero)
        {
            return; // over already
        }

        if (signal.Kind == HealthSignalKind.ProviderPause)
        {
            PauseProvider(signal.DeploymentId, time.GetUtcNow() + signal.Duration);
            return;
        }

        if (_catalog.Value.FindDeployment(signal.DeploymentId) is { } d)
        {
            ApplyTo(d, signal);
        }

        // else a deployment this instance does not have (or a wildcard here has not made yet: Recall)
    }

    /// <summary>A verdict on one deployment of this instance's, for the time it runs from now.</summary>
    private void ApplyTo(Deployment d, HealthSignal signal)
    {
        var until = time.GetUtcNow() + signal.Duration;
        if (signal.Kind == HealthSignalKind.Rejected)
        {
            if (d.State.OnRejected(time.GetUtcNow(), until, "rejected by its provider (seen by another instance)"))
            {
                LogRejected(_logger, d.Id, signal.Duration.TotalSeconds, "seen by another instance");
            }
        }
        else if (signal.Kind == HealthSignalKind.Cooldown)
        {
            d.State.ApplyCooldown(until);
        }
        else
        {
            d.State.ApplyOpen(until);
        }
    }

    [LoggerMessage(EventId = 40, Level = LogLevel.Warning, Message = "Deployment {Deployment} is out of rotation for {Seconds} s: its provider refused its key or model ({Error}). Requests go to the other deployments of its group.")]
    private static partial void LogRejected(ILogger logger, string deployment, double seconds, string error);
}
