using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>Requests parked for a permit: woken in order as permits refill, failed at shutdown.</summary>
internal sealed partial class AdmissionRateLimiter
{
    /// <summary>Fails every waiting request (shutdown). Returns how many there were.</summary>
    public int FailWaiting(Func<Exception> error)
    {
        var failed = 0;
        foreach (var partition in _partitions.Values)
        {
            List<Waiter> waiters;
            lock (partition)
            {
                waiters = [.. partition.Waiters];
                while (partition.Waiters.Count > 0)
                {
                    partition.Unpark();
                }

                partition.Timer?.Dispose();
                partition.Timer = null;
            }

            foreach (var w in waiters)
            {
                w.Item.TryFail(error());
                OnWaitOver?.Invoke(w.Item, null);
                failed++;
            }
        }

        return failed;
    }


    private void Schedule(Partition partition, TimeSpan wait)
    {
        partition.HeadWait = wait;
        partition.Timer ??= _time.CreateTimer(static s => { var (self, p) = ((AdmissionRateLimiter, Partition))s!; self.Wake(p); }, (this, partition), Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        partition.Timer.Change(wait, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Admits waiters in order while permits allow; gives up on those whose wait ran out.</summary>
    private void Wake(Partition partition)
    {
        var over = new List<(WorkItem Item, RateLimitedException? Refusal)>();
        lock (partition)
        {
            var nowTs = _time.GetTimestamp();
            var now = _time.GetUtcNow();
            while (partition.Waiters.TryPeek(out var head))
            {
                if (head.Item.IsCompleted)
                {
                    partition.Unpark();
                    over.Add((head.Item, null));
                    continue;
                }

                var wait = partition.TimeUntilAvailable(nowTs, head.Tokens, _time.TimestampFrequency, out var rule);
                if (wait == TimeSpan.Zero && now <= head.GiveUpAt)
                {
                    partition.Unpark();
                    head.Item.RateLimitCharge = partition.Charge(nowTs, head.Tokens);
                    over.Add((head.Item, null));
                    continue;
                }

                if (now + wait > head.GiveUpAt)
                {
                    partition.Unpark();
                    over.Add((head.Item, new RateLimitedException(rule, wait, $"Rate limit '{rule}' exceeded and the wait ({wait.TotalSeconds:F3} s) would pass the request's maximum wait.")));
                    continue;
                }

                Schedule(partition, wait);
                break;
            }

            if (partition.Waiters.Count == 0)
            {
                partition.HeadWait = TimeSpan.Zero;
            }
        }

        foreach (var (item, refusal) in over)
        {
            OnWaitOver?.Invoke(item, refusal);
        }
    }

    private static DateTimeOffset Min(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;

    internal sealed record Waiter(WorkItem Item, long Tokens, DateTimeOffset GiveUpAt);
}
