using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.DeadLetter;

/// <summary>
/// Reads failed attempts and decides, in this order:
/// <list type="number">
/// <item>cancelled (caller, deadline, shutdown) → the matching typed failure;</item>
/// <item>context length exceeded → the next context-window fallback group, else fail;</item>
/// <item>not retryable (400, 401, 403, 404, 422) → fail: another deployment would reject it too;</item>
/// <item>attempts used up → fail with every attempt listed;</item>
/// <item>an untried deployment in the group → back to the router at once (fallback);</item>
/// <item>a next group in the fallback chain → back to the router at once, in that group;</item>
/// <item>otherwise a retry after exponential backoff with jitter, at least the Retry-After, never past the deadline.</item>
/// </list>
/// Re-enqueueing to the router never waits (the router channel holds MaxInFlight items), so this stage can never
/// be blocked by the stages it feeds.
/// </summary>
internal sealed class DeadLetterStage(GatewayPipeline pipeline, ILogger<DeadLetterStage> logger)
    : PipelineStage(pipeline, logger)
{
    protected override string StageName => "dead-letter";

    protected override ChannelReader<WorkItem> Input => Pipeline.DeadLetter.Reader;

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
            return ValueTask.CompletedTask;
        }

        var failure = item.LastFailure;
        var options = Pipeline.Options.Pipeline;
        switch (failure.Outcome)
        {
            case AttemptOutcome.Cancelled:
                Pipeline.FailAndRetire(item, item.CancellationError());
                return ValueTask.CompletedTask;
            case AttemptOutcome.ContextLengthExceeded:
                if (item.AttemptCount < options.MaxAttempts && item.TryAdvanceContextFallback())
                {
                    Pipeline.Metrics.OnFallback();
                    Pipeline.Requeue(item);
                }
                else
                {
                    Fail(item, "the prompt exceeds the model's context window and no larger-context fallback is left");
                }

                return ValueTask.CompletedTask;
            case AttemptOutcome.NonRetryableError:
                Fail(item, "the provider rejected the request");
                return ValueTask.CompletedTask;
        }

        if (item.AttemptCount >= options.MaxAttempts)
        {
            Fail(item, $"{item.AttemptCount} attempt(s) made, the configured maximum");
            return ValueTask.CompletedTask;
        }

        if (HasUntried(item))
        {
            Pipeline.Requeue(item);
            return ValueTask.CompletedTask;
        }

        if (item.TryAdvanceFallback())
        {
            Pipeline.Metrics.OnFallback();
            Pipeline.Requeue(item);
            return ValueTask.CompletedTask;
        }

        var delay = Backoff(item, failure);
        if (Pipeline.Time.GetUtcNow() + delay >= item.Deadline)
        {
            Fail(item, $"the next retry ({delay.TotalMilliseconds:F0} ms away) would pass the deadline");
            return ValueTask.CompletedTask;
        }

        item.ScheduleRetry(Pipeline.Time, delay, static i => i.Observer!.Requeue(i));
        return ValueTask.CompletedTask;
    }

    private void Fail(WorkItem item, string reason) =>
        Pipeline.FailAndRetire(item, new AllProvidersFailedException(item.Request.Model, item.SnapshotAttempts(), reason));

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
        var options = Pipeline.Options.Pipeline;
        var exponent = Math.Min(item.AttemptCount - 1, 16);
        var ceiling = Math.Min(options.RetryMaxDelay.TotalMilliseconds, options.RetryBaseDelay.TotalMilliseconds * Math.Pow(2, exponent));
        var jittered = TimeSpan.FromMilliseconds((ceiling / 2) + (Random.Shared.NextDouble() * ceiling / 2));
        return failure.RetryAfter is { } ra && ra > jittered ? ra : jittered;
    }
}
