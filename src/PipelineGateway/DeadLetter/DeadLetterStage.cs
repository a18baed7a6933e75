using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.DeadLetter;

/// <summary>
/// Reads failed attempts and decides, in this order (the table in docs/routing.md):
/// <list type="number">
/// <item>cancelled (caller, deadline, shutdown) → the matching typed failure;</item>
/// <item>context length exceeded → the next context-window fallback group, else the upstream's 400
/// <c>context_length_exceeded</c> (<see cref="UpstreamRejectedException"/>);</item>
/// <item>the caller's own mistake (400, 413, 422, a content filter) → <see cref="UpstreamRejectedException"/> with the
/// upstream's status, type, code and param: no retry, no fallback — another deployment would reject it too;</item>
/// <item>the deployment's key or model rejected (401, 403, 404; health takes it out of rotation) → another deployment
/// or fallback group at once, else fail naming the cause (never a 401: the caller's own key is fine);</item>
/// <item>attempts used up → fail with every attempt listed (429 with the earliest time a deployment is free again when
/// the providers are rate-limiting; 503 when overloaded; 504 when the attempts timed out; 502 otherwise);</item>
/// <item>an untried deployment in the group → back to the router at once (fallback);</item>
/// <item>a next group in the fallback chain → back to the router at once, in that group;</item>
/// <item>every deployment rate-limited and the caller fail-fast → 429 now, with when a deployment is free again;</item>
/// <item>otherwise a retry after exponential backoff with jitter, at least the Retry-After, never past the deadline.</item>
/// </list>
/// Re-enqueueing to the router never waits (the router channel holds MaxInFlight items), so this stage can never
/// be blocked by the stages it feeds.
/// </summary>
internal sealed class DeadLetterStage(
    ChannelReader<WorkItem> input,
    ChannelWriter<WorkItem> router,
    GatewayPipeline pipeline,
    Microsoft.Extensions.Options.IOptions<Hosting.GatewayOptions> gatewayOptions,
    Routing.DeploymentSelector selector,
    Metrics.GatewayMetrics metrics,
    TimeProvider time,
    ILogger<DeadLetterStage> logger)
    : PipelineStage(input, pipeline, logger)
{
    private readonly Hosting.PipelineOptions _options = gatewayOptions.Value.Pipeline;

    protected override string StageName => "dead-letter";

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (item.LastFailure is not { } failure)
        {
            // Only a failed attempt sends an item here; one without its failure must still be answered.
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The request reached the dead-letter stage without a recorded failure."));
            return ValueTask.CompletedTask;
        }

        var options = _options;
        switch (failure.Outcome)
        {
            case AttemptOutcome.Cancelled:
                Pipeline.FailAndRetire(item, item.CancellationError());
                return ValueTask.CompletedTask;
            case AttemptOutcome.ContextLengthExceeded:
                if (item.AttemptCount < options.MaxAttempts && item.TryAdvanceContextFallback())
                {
                    metrics.OnFallback();
                    Forward(item, router);
                }
                else
                {
                    Rejected(item, failure with
                    {
                        ErrorCode = "context_length_exceeded",
                        Param = failure.Param ?? "messages",
                        UpstreamMessage = failure.UpstreamMessage ?? "The prompt is longer than the model's context window, and no larger-context fallback is left.",
                    });
                }

                return ValueTask.CompletedTask;
            case AttemptOutcome.NonRetryableError:
                // A request one deployment cannot carry (never sent) may suit another one, or a fallback group's, and
                // a model one wildcard deployment does not have another may; one the upstream rejected would be
                // rejected everywhere.
                if ((failure.NotSent || failure.UnknownModel) && item.AttemptCount < options.MaxAttempts && (HasUntried(item) || item.TryAdvanceFallback()))
                {
                    Forward(item, router);
                }
                else
                {
                    if (failure.UnknownModel)
                    {
                        // No deployment has the model a wildcard took the name of: a name no upstream ever answered is
                        // forgotten (its place in the wildcard's bound given up; the next request asks again).
                        item.Group.Wildcard?.Forget(item.Group);
                    }

                    Rejected(item, failure);
                }

                return ValueTask.CompletedTask;
            case AttemptOutcome.DeploymentUnavailable:
                // That deployment is out of rotation (health): another one, or another group, may serve the request.
                if (item.AttemptCount < options.MaxAttempts && (HasUntried(item) || item.TryAdvanceFallback()))
                {
                    Forward(item, router);
                }
                else
                {
                    Fail(item, "every deployment left refused its credentials or model");
                }

                return ValueTask.CompletedTask;
        }

        if (item.AttemptCount >= options.MaxAttempts)
        {
            Exhausted(item, failure, $"{item.AttemptCount} attempt(s) made, the configured maximum");
            return ValueTask.CompletedTask;
        }

        if (HasUntried(item))
        {
            Forward(item, router);
            return ValueTask.CompletedTask;
        }

        if (item.TryAdvanceFallback())
        {
            metrics.OnFallback();
            Forward(item, router);
            return ValueTask.CompletedTask;
        }

        if (failure.Outcome == AttemptOutcome.RateLimited && item.Mode == SubmitMode.FailFast)
        {
            // Every deployment said 429: a fail-fast caller (HTTP) is told so now, with when one is free again, rather
            // than held while the gateway waits out the providers' Retry-After (a waiting caller waits it out).
            Exhausted(item, failure, "every deployment is rate-limited");
            return ValueTask.CompletedTask;
        }

        var delay = Backoff(item, failure);
        if (time.GetUtcNow() + delay >= item.Deadline)
        {
            Exhausted(item, failure, $"the next retry ({delay.TotalMilliseconds:F0} ms away) would pass the deadline");
            return ValueTask.CompletedTask;
        }

        item.ScheduleRetry(time, delay, static i => i.Observer!.Requeue(i));
        Interlocked.Increment(ref _retriesScheduled);
        return ValueTask.CompletedTask;
    }

    private long _retriesScheduled;

    /// <summary>Retries put on the clock so far (an explicit signal: a test moves a fake clock only after the timer exists).</summary>
    internal long RetriesScheduled => Interlocked.Read(ref _retriesScheduled);

    private void Fail(WorkItem item, string reason) =>
        Pipeline.FailAndRetire(item, new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), reason));

    /// <summary>The upstream rejected the caller's request: its status, type, code and param reach the caller.</summary>
    private void Rejected(WorkItem item, ProviderFailure failure) =>
        Pipeline.FailAndRetire(item, new UpstreamRejectedException(
            item.Request.Model, failure.StatusCode is >= 400 and < 500 ? failure.StatusCode.Value : 400, failure.ErrorType ?? "invalid_request_error",
            failure.ErrorCode, failure.Param, failure.UpstreamMessage ?? failure.Message, item.SnapshotAttempts()));

    /// <summary>No attempt left: rate-limited providers answer 429 with when one is free again; the rest fail with every attempt.</summary>
    private void Exhausted(WorkItem item, ProviderFailure failure, string reason)
    {
        if (failure.Outcome == AttemptOutcome.RateLimited)
        {
            var retryAfter = selector.EarliestAvailable(item.Group, failure.RetryAfter);
            metrics.OnRateLimited();
            Pipeline.FailAndRetire(item, new RateLimitedException($"providers of '{item.Request.Model}'", retryAfter,
                $"Every deployment of model '{item.Request.Model}' is rate-limited by its provider; retry after {retryAfter.TotalSeconds:F1} s{AttemptText.Describe(item.SnapshotAttempts())}",
                item.SnapshotAttempts()));
            return;
        }

        Fail(item, reason);
    }

    private static bool HasUntried(WorkItem item)
    {
        foreach (var d in item.Group.DeploymentArray)
        {
            if (!item.HasTried(d))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Exponential backoff with jitter (half to full), at least the provider's Retry-After, at most RetryMaxDelay.</summary>
    private TimeSpan Backoff(WorkItem item, ProviderFailure failure)
    {
        var options = _options;
        var exponent = Math.Min(item.AttemptCount - 1, 16);
        var ceiling = Math.Min(options.RetryMaxDelay.TotalMilliseconds, options.RetryBaseDelay.TotalMilliseconds * Math.Pow(2, exponent));
        var jittered = TimeSpan.FromMilliseconds((ceiling / 2) + (Random.Shared.NextDouble() * ceiling / 2));
        return failure.RetryAfter is { } ra && ra > jittered ? ra : jittered;
    }
}
