using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Admission;

/// <summary>One rate-limit partition (a key): its token buckets and sliding windows, and its waiting line.</summary>
internal sealed partial class AdmissionRateLimiter
{
    /// <summary>One tenant's counters: a state per rule, and the queue of callers waiting for a permit.</summary>
    internal sealed class Partition : IWaitingRoom
    {
        private readonly RateLimitRule[] _rules;

        public Partition(RateLimitRule[] rules)
        {
            _rules = rules;
            Limits = [.. rules.Select(r => ILimitState.Create(r.Algorithm, r.Limit, r.Window, r.Burst))];
        }

        public ILimitState[] Limits { get; }

        public Queue<Waiter> Waiters { get; } = new();

        /// <summary>Set under the lock when the partition is forgotten (it was at rest); a holder must look up again.</summary>
        public bool Evicted { get; set; }

        /// <summary>Token estimates of the waiting requests, summed.</summary>
        private long _waitingTokens;

        public void Park(Waiter waiter)
        {
            Waiters.Enqueue(waiter);
            _waitingTokens += waiter.Tokens;
            waiter.Item.WaitingIn = this;
        }

        public void Unpark()
        {
            var waiter = Waiters.Dequeue();
            _waitingTokens -= waiter.Tokens;
            waiter.Item.WaitingIn = null;
        }

        /// <summary>A waiter that ended (cancelled, timed out) leaves the queue at once, not when its turn comes.</summary>
        public bool TryRemove(WorkItem item)
        {
            lock (this)
            {
                if (!ReferenceEquals(item.WaitingIn, this))
                {
                    return false;
                }

                for (var n = Waiters.Count; n > 0; n--)
                {
                    var w = Waiters.Dequeue();
                    if (ReferenceEquals(w.Item, item))
                    {
                        _waitingTokens -= w.Tokens;
                        continue;
                    }

                    Waiters.Enqueue(w);
                }

                item.WaitingIn = null;
                return true;
            }
        }

        /// <summary>
        /// The wait of a newcomer behind the waiters: the first waiter's wait, then every rule refilling what the
        /// other waiters and the newcomer need at its long-run rate (Limit per Window); the slowest rule decides.
        /// </summary>
        public TimeSpan WaitBehindWaiters(long tokens, out string rule)
        {
            var wait = HeadWait;
            rule = "waiting queue";
            var head = Waiters.Peek();
            var worst = 0.0;
            for (var i = 0; i < _rules.Length; i++)
            {
                var r = _rules[i];
                var need = r.Unit == RateLimitUnit.Tokens ? _waitingTokens - head.Tokens + tokens : Waiters.Count;
                var capacity = r.Algorithm == RateLimitAlgorithm.TokenBucket ? r.Burst ?? r.Limit : r.Limit;
                if (r.Unit == RateLimitUnit.Tokens && tokens > capacity)
                {
                    rule = r.DisplayName;
                    return TimeSpan.MaxValue; // larger than the rule allows at all
                }

                var seconds = need * r.Window.TotalSeconds / r.Limit;
                if (seconds > worst)
                {
                    worst = seconds;
                    rule = r.DisplayName;
                }
            }

            return wait + TimeSpan.FromSeconds(worst);
        }

        public bool AtRest(long now, long frequency)
        {
            foreach (var l in Limits)
            {
                if (!l.AtRest(now, frequency))
                {
                    return false;
                }
            }

            return true;
        }

        public ITimer? Timer { get; set; }

        public TimeSpan HeadWait { get; set; }

        public string BlockingRule { get; private set; } = string.Empty;

        /// <summary>The longest wait any rule imposes (zero when every rule admits).</summary>
        public TimeSpan TimeUntilAvailable(long now, long tokens, long frequency, out string rule)
        {
            var wait = TimeSpan.Zero;
            rule = string.Empty;
            for (var i = 0; i < _rules.Length; i++)
            {
                var w = Limits[i].TimeUntilAvailable(now, Cost(_rules[i], tokens), frequency);
                if (w > wait)
                {
                    wait = w;
                    rule = _rules[i].DisplayName;
                }
            }

            BlockingRule = rule;
            return wait;
        }

        public RateLimitCharge Charge(long now, long tokens)
        {
            var handles = new long[_rules.Length];
            for (var i = 0; i < _rules.Length; i++)
            {
                handles[i] = Limits[i].Charge(now, Cost(_rules[i], tokens));
            }

            return new RateLimitCharge(this, tokens, handles);
        }

        public void Adjust(RateLimitCharge charge, long delta)
        {
            for (var i = 0; i < _rules.Length; i++)
            {
                if (_rules[i].Unit == RateLimitUnit.Tokens)
                {
                    Limits[i].Adjust(charge.Handles[i], delta);
                }
            }
        }

        private static long Cost(RateLimitRule rule, long tokens) => rule.Unit == RateLimitUnit.Tokens ? tokens : 1;
    }
}
