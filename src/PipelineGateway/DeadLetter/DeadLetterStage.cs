using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.DeadLetter;

/// <summary>
/// Reads failed attempts and decides: fall back to another deployment at once, retry after a backoff
/// (honouring Retry-After, never past the deadline), or fail the request with every attempt listed.
/// Re-enqueueing to the router never waits (the router channel holds MaxInFlight items), so this stage
/// can never be blocked by the stages it feeds.
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
            case AttemptOutcome.NonRetryableError or AttemptOutcome.ContextLengthExceeded:
                // Another deployment would reject the same request: a 400 does not fail over.
                Fail(item, "the provider rejected the request");
                return ValueTask.CompletedTask;
        }

        if (item.AttemptCount >= options.MaxAttempts)
        {
            Fail(item, $"{item.AttemptCount} attempt(s) made, the configured maximum");
            return ValueTask.CompletedTask;
        }

        var delay = HasUntried(item) ? TimeSpan.Zero : Backoff(item, failure);
        var now = Pipeline.Time.GetUtcNow();
        if (now + delay >= item.Deadline)
        {
            Fail(item, $"the next retry ({delay.TotalMilliseconds:F0} ms away) would pass the deadline");
            return ValueTask.CompletedTask;
        }

        if (delay <= TimeSpan.Zero)
        {
            Requeue(item);
        }
        else
        {
            item.ScheduleRetry(Pipeline.Time, delay, static i => i.Observer!.Requeue(i));
        }

        return ValueTask.CompletedTask;
    }

    private void Requeue(WorkItem item) => Pipeline.Requeue(item);

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

    /// <summary>Exponential backoff with full jitter, at least the provider's Retry-After, at most RetryMaxDelay.</summary>
    private TimeSpan Backoff(WorkItem item, ProviderFailure failure)
    {
        var options = Pipeline.Options.Pipeline;
        var exponent = Math.Min(item.AttemptCount - 1, 16);
        var ceiling = Math.Min(options.RetryMaxDelay.TotalMilliseconds, options.RetryBaseDelay.TotalMilliseconds * Math.Pow(2, exponent));
        var jittered = TimeSpan.FromMilliseconds((ceiling / 2) + (Random.Shared.NextDouble() * ceiling / 2));
        return failure.RetryAfter is { } ra && ra > jittered ? ra : jittered;
    }
}
