using PipelineGateway.Dispatch;
using PipelineGateway.Routing;

namespace PipelineGateway.Metrics;

/// <summary>Per-provider and per-model (and per-key) running figures.</summary>
internal sealed partial class GatewayMetrics
{
    private sealed class ProviderStats
    {
        private readonly LatencyHistogram _latency = new();
        private long _requests;
        private long _failures;
        private long _costNanoUsd; // money summed as whole nano-dollars: interlocked, no lock, exact to 1e-9 USD

        public void AddCost(long nanoUsd) => Interlocked.Add(ref _costNanoUsd, nanoUsd);

        public void Record(GatewayAttempt attempt)
        {
            if (attempt.Outcome == AttemptOutcome.Cancelled)
            {
                // The caller gave up (or the deadline passed): not the provider's failure.
                return;
            }

            Interlocked.Increment(ref _requests);
            if (attempt.Outcome == AttemptOutcome.Success)
            {
                _latency.Record(attempt.Latency);
            }
            else
            {
                Interlocked.Increment(ref _failures);
            }
        }

        public ProviderMetricsSnapshot Snapshot(ProviderWorkerPool pool)
        {
            var requests = Interlocked.Read(ref _requests);
            var failures = Interlocked.Read(ref _failures);
            return new ProviderMetricsSnapshot
            {
                Requests = requests,
                Successes = requests - failures,
                Failures = failures,
                SuccessRate = requests == 0 ? 1 : Math.Round((double)(requests - failures) / requests, 4),
                AvgLatencyMs = Math.Round(_latency.MeanMs, 3),
                P95LatencyMs = _latency.PercentileMs(0.95),
                TotalCost = Cost.NanoUsd.ToUsd(Interlocked.Read(ref _costNanoUsd)),
                InFlight = pool.InFlight,
                QueueDepth = pool.QueueDepth,
                ExpectedWaitMs = Math.Round(pool.ExpectedWait.TotalMilliseconds, 3),
                ServiceTimeMs = Math.Round(pool.ServiceTime.TotalMilliseconds, 3),
                PausedMs = Math.Round(pool.PausedFor.TotalMilliseconds, 3),
                Parked = pool.Parked,
                QueueWaitP50Ms = pool.QueueWaits.P50Ms,
                QueueWaitP99Ms = pool.QueueWaits.P99Ms,
                QueueWaitMaxMs = Math.Round(pool.QueueWaits.MaxMs, 3),
            };
        }
    }

    private sealed class ModelStats
    {
        private long _requests;
        private long _failures;
        private long _promptTokens;
        private long _completionTokens;
        private long _costNanoUsd;

        public void Record(bool success, TokenUsage? usage, long costNanoUsd)
        {
            Interlocked.Increment(ref _requests);
            if (!success)
            {
                Interlocked.Increment(ref _failures);
            }

            if (usage is not null)
            {
                Interlocked.Add(ref _promptTokens, usage.PromptTokens);
                Interlocked.Add(ref _completionTokens, usage.CompletionTokens);
            }

            if (costNanoUsd != 0)
            {
                Interlocked.Add(ref _costNanoUsd, costNanoUsd);
            }
        }

        public ModelMetricsSnapshot Snapshot() => new()
        {
            Requests = Interlocked.Read(ref _requests),
            Failures = Interlocked.Read(ref _failures),
            PromptTokens = Interlocked.Read(ref _promptTokens),
            CompletionTokens = Interlocked.Read(ref _completionTokens),
            TotalCost = Cost.NanoUsd.ToUsd(Interlocked.Read(ref _costNanoUsd)),
        };
    }
}

/// <summary>A deployment's attempts, successes and billed cost (kept on the deployment, written by the metrics only).</summary>
internal sealed class DeploymentCounters
{
    private long _attempts;
    private long _successes;
    private long _costNano;

    public long Attempts => Interlocked.Read(ref _attempts);

    public long Successes => Interlocked.Read(ref _successes);

    public decimal Cost => PipelineGateway.Cost.NanoUsd.ToUsd(Interlocked.Read(ref _costNano));

    public void Record(bool success)
    {
        Interlocked.Increment(ref _attempts);
        if (success)
        {
            Interlocked.Increment(ref _successes);
        }
    }

    public void AddCost(long nanoUsd) => Interlocked.Add(ref _costNano, nanoUsd);
}
