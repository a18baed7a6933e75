using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Dispatch;

/// <summary>A hedged attempt: a second leg at another deployment when the first is slow (the target is Routing's choice, <see cref="HedgeRouter"/>).</summary>
internal sealed partial class ProviderWorkerPool
{
    /// <summary>
    /// Hedging: if the first attempt has not answered after <paramref name="delay"/>, a second goes to another
    /// healthy deployment (holding a permit of that provider, so its concurrency limit still holds). The first
    /// success answers the caller and the other attempt is cancelled; if both fail, the later failure goes to
    /// the dead-letter stage with both attempts listed.
    /// </summary>
    private async ValueTask<TimeSpan?> HedgedAttemptAsync(WorkItem item, Deployment primary, TimeSpan delay)
    {
        item.NeverReuse(); // two legs and a timer hold it, the losing leg past the answer
        try
        {
            var services = _services!;
            var started = _time.GetTimestamp();
            using var primaryCts = CancellationTokenSource.CreateLinkedTokenSource(item.Token);

            // The hedge clock starts before the first attempt does.
            var timer = Task.Delay(delay, _time, primaryCts.Token);
            var primaryTask = RunAsync(this, primary, item, ownPermit: true, primaryCts.Token);
            if (await Task.WhenAny(primaryTask, timer).ConfigureAwait(false) == primaryTask)
            {
                await primaryCts.CancelAsync().ConfigureAwait(false); // stops the hedge timer; the attempt is over
                await FinishAsync(item, primaryTask.Result, null).ConfigureAwait(false);
                return primaryTask.Result.Latency;
            }

            // Where the hedge goes is Routing's decision; it comes back with room reserved at that provider, or not at all.
            if (services.Hedges.TryChoose(item, primary) is not var (other, reservation))
            {
                // Nowhere to hedge to right now: wait for the first attempt.
                var only = await primaryTask.ConfigureAwait(false);
                await FinishAsync(item, only, null).ConfigureAwait(false);
                return only.Latency;
            }

            services.Metrics.OnHedge();
            other.State.Enter();
            using var hedgeCts = CancellationTokenSource.CreateLinkedTokenSource(item.Token);
            var hedgeTask = other.Pool.RunReservedAsync(other, item, reservation, hedgeCts.Token);
            try
            {
                var first = await Task.WhenAny(primaryTask, hedgeTask).ConfigureAwait(false);
                var second = first == primaryTask ? hedgeTask : primaryTask;
                var firstResult = await first.ConfigureAwait(false);
                if (firstResult.Response is not null)
                {
                    // The winner answers; the loser is cancelled and listed as such.
                    await (first == primaryTask ? hedgeCts : primaryCts).CancelAsync().ConfigureAwait(false);
                    var loser = await second.ConfigureAwait(false);
                    await FinishAsync(item, firstResult, loser).ConfigureAwait(false);
                    return _time.GetElapsedTime(started);
                }

                var secondResult = await second.ConfigureAwait(false);
                await FinishAsync(item, secondResult, firstResult).ConfigureAwait(false);
                return _time.GetElapsedTime(started);
            }
            finally
            {
                other.State.Exit();
            }
        }
        finally
        {
            // The deployment's load is let go of once the attempt ends, however it ends (idempotent: usually done already).
            item.ReleaseDeployment();
        }
    }

    /// <summary>The outcome of one hedged leg, as a value.</summary>
    internal readonly record struct Leg(Deployment Deployment, string Provider, ChatCompletionResponse? Response, Exception? Error, TimeSpan Latency);

    private static Task<Leg> RunAsync(ProviderWorkerPool pool, Deployment deployment, WorkItem item, bool ownPermit, CancellationToken token) =>
        pool.RunLegAsync(deployment, item, null, ownPermit, token);

    /// <summary>Runs a hedge leg on room reserved here by <see cref="TryReserve"/>.</summary>
    public Task<Leg> RunReservedAsync(Deployment deployment, WorkItem item, ProviderReservation reservation, CancellationToken token) =>
        RunLegAsync(deployment, item, reservation.Charge, ownPermit: false, token);

    /// <summary>
    /// Reserves room for a hedge now — a concurrency permit and the rate limits' charge — or nothing: a hedge never
    /// waits and never passes the provider's limits, and no hedge goes to a provider paused by a 429.
    /// </summary>
    public bool TryReserve(WorkItem item, out ProviderReservation reservation)
    {
        reservation = default;
        if (_health.PausedFor(Name) > TimeSpan.Zero
            || Limits.TryAcquire(Limits.CountsTokens ? item.EstimatedTokens : 0, out var charge) != TimeSpan.Zero)
        {
            return false;
        }

        if (!_permits.Wait(0, CancellationToken.None))
        {
            Limits.Settle(charge, 0);
            return false;
        }

        reservation = new ProviderReservation(charge);
        return true;
    }

    private async Task<Leg> RunLegAsync(Deployment deployment, WorkItem item, ProviderRateLimiter.Charge? reservedCharge, bool ownPermit, CancellationToken token)
    {
        var charge = reservedCharge;
        var time = _time;
        var started = time.GetTimestamp();
        var holding = !ownPermit; // a hedge leg's permit was reserved by the router
        System.Diagnostics.Activity? span = null;
        try
        {
            if (ownPermit)
            {
                charge = await AcquireRateAsync(item).ConfigureAwait(false);
                await AcquirePermitAsync(token).ConfigureAwait(false);
                holding = true;
                started = time.GetTimestamp();
            }

            if (ownPermit)
            {
                item.Sending(deployment, started); // the first leg: listed if the request is cancelled before the legs are recorded
            }
            else
            {
                item.SendingHedge(deployment, started);
            }

            span = _services!.Tracing.StartAttempt(item, Name, deployment, hedge: !ownPermit);
            var response = ProviderAnswer.Accept(await CompleteAsync(item, deployment, token).ConfigureAwait(false), Name);
            Limits.Settle(charge, response.Usage?.TotalTokens ?? charge?.Tokens ?? 0);
            Tracing.GatewayTracing.EndAttempt(span, response, null);
            return new Leg(deployment, Name, response, null, time.GetElapsedTime(started));
        }
        catch (Exception ex)
        {
            Tracing.GatewayTracing.EndAttempt(span, null, ex);
            Limits.Settle(charge, 0);
            return new Leg(deployment, Name, null, ex, time.GetElapsedTime(started));
        }
        finally
        {
            if (holding)
            {
                ReleasePermit();
            }
        }
    }

    private ValueTask FinishAsync(WorkItem item, Leg result, Leg? other)
    {
        var services = _services!;
        if (result.Response is { } response)
        {
            if (other is { } loser)
            {
                // A leg cancelled because the other won says nothing about its provider's health.
                var lost = loser.Error is OperationCanceledException && !item.Token.IsCancellationRequested;
                var failure = lost ? new ProviderFailure(AttemptOutcome.Cancelled, null, null, "hedge lost: the other attempt answered first") : Classify(item, loser.Deployment, loser.Error!);
                Record(item, loser.Deployment, failure.ToAttempt(loser.Provider, loser.Deployment.Model, loser.Latency), failure.RetryAfter);
            }

            Record(item, result.Deployment, new GatewayAttempt(result.Provider, result.Deployment.Model, AttemptOutcome.Success, result.Latency), null);
            Answer(item, result.Deployment, response);
            return ValueTask.CompletedTask;
        }

        if (other is { } earlier)
        {
            var f = Classify(item, earlier.Deployment, earlier.Error!);
            Record(item, earlier.Deployment, f.ToAttempt(earlier.Provider, earlier.Deployment.Model, earlier.Latency), f.RetryAfter);
        }

        OnAttemptFailedAfter(item, result.Deployment, result.Provider, result.Latency, result.Error!);
        return ValueTask.CompletedTask;
    }
}
