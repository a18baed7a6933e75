using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>Limits shared through a distributed store (Redis): the round trip off the admission loop, and what happens while the store is down.</summary>
internal sealed partial class AdmissionRateLimiter
{
    /// <summary>
    /// Asks the store, waits out a refusal while the caller may wait, and hands the request back through
    /// <see cref="OnWaitOver"/>. Requests of one partition retry independently here (no arrival-order queue
    /// across instances); each retry is one atomic evaluation of every rule.
    /// </summary>
    private async Task AcquireDistributedAsync(WorkItem item)
    {
        var tokens = CountsTokens ? item.EstimatedTokens : 0;
        var partitionKey = PartitionKey(item.Request);
        var waited = false;
        try
        {
            while (!item.IsCompleted)
            {
                var decision = await _store!.TryAcquireAsync(partitionKey, _rules, tokens, item.RequestId, CancellationToken.None).ConfigureAwait(false);
                switch (decision.Outcome)
                {
                    case DistributedLimitOutcome.Admitted:
                        StoreUp();
                        item.DistributedCharge = decision.Charge;
                        OnWaitOver?.Invoke(item, null);
                        return;
                    case DistributedLimitOutcome.TooLarge:
                        StoreUp();
                        var rule = _rules[Math.Clamp(decision.BlockingRule, 0, _rules.Length - 1)];
                        OnWaitOver?.Invoke(item, new RateLimitedException(rule.DisplayName, rule.Window, $"The request ({tokens} estimated tokens) is larger than the limit '{rule.DisplayName}' allows at all."));
                        return;
                    case DistributedLimitOutcome.Unavailable:
                        StoreDown(decision.Error);
                        if (_store.FailOpen)
                        {
                            // Fail-open: this instance's own limits stand in until the store is back.
                            switch (TryAdmitLocal(item, out var refusal))
                            {
                                case AdmissionDecision.Admitted:
                                    OnWaitOver?.Invoke(item, null);
                                    break;
                                case AdmissionDecision.Refused:
                                    OnWaitOver?.Invoke(item, refusal);
                                    break;
                                default:
                                    OnWaitStarted?.Invoke(); // parked locally: the local waiter queue hands it back
                                    break;
                            }
                        }
                        else
                        {
                            OnWaitOver?.Invoke(item, new RateLimitedException("distributed rate limiter", TimeSpan.FromSeconds(1), "The shared rate-limit store is unreachable and the gateway is configured to fail closed; retry shortly."));
                        }

                        return;
                }

                StoreUp();
                var blocking = _rules[Math.Clamp(decision.BlockingRule, 0, _rules.Length - 1)].DisplayName;
                var now = _time.GetUtcNow();
                var giveUpAt = Min(now + _options.MaxWait, item.Deadline);
                if (item.Mode != SubmitMode.Wait || now + decision.RetryAfter > giveUpAt)
                {
                    OnWaitOver?.Invoke(item, new RateLimitedException(blocking, decision.RetryAfter, waited ? $"Rate limit '{blocking}' exceeded and the wait ({decision.RetryAfter.TotalSeconds:F3} s) would pass the request's maximum wait." : null));
                    return;
                }

                if (!waited)
                {
                    waited = true;
                    OnWaitStarted?.Invoke();
                }

                // Ends early when the request is cancelled, times out or the gateway drains.
                await Task.Delay(decision.RetryAfter, _time, item.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }

            OnWaitOver?.Invoke(item, null); // answered (cancelled, timed out) while waiting: the stage retires it
        }
        catch (Exception ex)
        {
            // A store that throws instead of answering Unavailable: never lose the request.
            LogStoreFailed(_logger, ex);
            OnWaitOver?.Invoke(item, new RateLimitedException("distributed rate limiter", TimeSpan.FromSeconds(1), "The shared rate-limit store failed; retry shortly."));
        }
    }

    private void StoreDown(string? error)
    {
        if (Interlocked.Exchange(ref _storeDown, 1) == 0)
        {
            LogStoreDown(_logger, _store!.FailOpen ? "failing open: this instance's own limits apply" : "failing closed: requests are refused", error ?? "unreachable");
        }
    }

    private void StoreUp()
    {
        if (Volatile.Read(ref _storeDown) == 1 && Interlocked.Exchange(ref _storeDown, 0) == 1)
        {
            LogStoreUp(_logger);
        }
    }

    [LoggerMessage(EventId = 20, Level = LogLevel.Error, Message = "The shared rate-limit store is unreachable ({Error}); {Mode}.")]
    private static partial void LogStoreDown(ILogger logger, string mode, string error);

    [LoggerMessage(EventId = 21, Level = LogLevel.Information, Message = "The shared rate-limit store is reachable again; shared limits apply.")]
    private static partial void LogStoreUp(ILogger logger);

    [LoggerMessage(EventId = 22, Level = LogLevel.Error, Message = "The shared rate-limit store failed.")]
    private static partial void LogStoreFailed(ILogger logger, Exception error);
}
