using CsCheck;
using FluentAssertions;
using PipelineGateway.Caching;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Caching;

/// <summary>The cache's store: exact bounds at every size, LRU order, per-entry expiry, on a fake clock.</summary>
public sealed class LruStoreTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(49)]
    [InlineData(1_999)]
    [InlineData(9_992)]
    [InlineData(10_000)]
    public void A_full_store_never_holds_more_than_MaxEntries(int max)
    {
        // 49, 1,999 and 9,992 are sizes where MemoryCache.Compact(1.0 / Count) removed nothing (issue 19).
        var store = new LruStore<int, string>(max, long.MaxValue, TestGateway.Clock());

        for (var i = 0; i < max + 100; i++)
        {
            store.Set(i, "v", 10, TimeSpan.FromHours(1));
            store.Count.Should().BeLessThanOrEqualTo(max);
        }

        store.Count.Should().Be(max);
        store.Evictions.Should().Be(100);
        store.Bytes.Should().Be(max * 10L);
        store.TryGet(99, out _).Should().BeFalse("the oldest 100 left");
        store.TryGet(100, out _).Should().BeTrue();
        store.TryGet(max + 99, out _).Should().BeTrue();
    }

    [Fact]
    public void The_byte_bound_holds_and_the_least_recently_used_leave_first()
    {
        var store = new LruStore<string, string>(100, 300, TestGateway.Clock());
        store.Set("a", "a", 100, TimeSpan.FromHours(1));
        store.Set("b", "b", 100, TimeSpan.FromHours(1));
        store.Set("c", "c", 100, TimeSpan.FromHours(1));
        store.TryGet("a", out _).Should().BeTrue(); // a is now the most recently used

        store.Set("d", "d", 150, TimeSpan.FromHours(1)); // needs 150 bytes: b and c leave, in that order

        store.Bytes.Should().Be(250);
        store.TryGet("b", out _).Should().BeFalse();
        store.TryGet("c", out _).Should().BeFalse();
        store.TryGet("a", out _).Should().BeTrue();
        store.TryGet("d", out _).Should().BeTrue();
        store.Set("huge", "x", 301, TimeSpan.FromHours(1)).Should().BeFalse("larger than the whole store: nothing is evicted for it");
        store.Count.Should().Be(2);
    }

    [Fact]
    public void Each_entry_expires_at_its_own_ttl_and_a_sweep_drops_the_expired_ones_unread()
    {
        var clock = TestGateway.Clock();
        var store = new LruStore<string, string>(100, long.MaxValue, clock);
        store.Set("short", "s", 1, TimeSpan.FromSeconds(5));
        store.Set("long", "l", 1, TimeSpan.FromMinutes(5));

        clock.Advance(TimeSpan.FromSeconds(5) - TimeSpan.FromTicks(1));
        store.TryGet("short", out _).Should().BeTrue();
        clock.Advance(TimeSpan.FromTicks(1));
        store.TryGet("short", out _).Should().BeFalse("expired at exactly its TTL");
        store.Count.Should().Be(1);

        store.Set("other", "o", 1, TimeSpan.FromSeconds(1));
        clock.Advance(LruStore<string, string>.SweepInterval);
        store.Set("trigger", "t", 1, TimeSpan.FromMinutes(5)); // an insert after the sweep interval drops "other", unread
        store.Count.Should().Be(2);
        store.Evictions.Should().Be(0, "expiry is not eviction");
    }

    [Fact]
    public void Replacing_a_key_keeps_one_entry_and_its_new_size()
    {
        var store = new LruStore<string, string>(10, 1000, TestGateway.Clock());
        store.Set("k", "one", 100, TimeSpan.FromHours(1));
        store.Set("k", "two", 40, TimeSpan.FromHours(1));

        store.Count.Should().Be(1);
        store.Bytes.Should().Be(40);
        store.TryGet("k", out var v).Should().BeTrue();
        v.Should().Be("two");
    }

    [Fact]
    public void Any_sequence_of_sets_and_gets_keeps_both_bounds_and_matches_a_model_LRU()
    {
        // Property (CsCheck, fixed seed): against a plain list model of an LRU, the store holds exactly the model's
        // keys after every step, and never more than its bounds.
        var ops = Gen.Select(Gen.Bool, Gen.Int[0, 30], Gen.Int[1, 120]).Array[1, 400];
        var pcg = new PCG(3, 19);
        for (var run = 0; run < 200; run++)
        {
            var steps = ops.Generate(pcg, null, out _);
            var store = new LruStore<int, int>(12, 600, TestGateway.Clock());
            var model = new List<(int Key, int Size)>(); // most recent first
            foreach (var (isSet, key, size) in steps)
            {
                if (isSet)
                {
                    store.Set(key, key, size, TimeSpan.FromHours(1));
                    model.RemoveAll(e => e.Key == key);
                    while (model.Count > 0 && (model.Count + 1 > 12 || model.Sum(e => e.Size) + size > 600))
                    {
                        model.RemoveAt(model.Count - 1);
                    }

                    model.Insert(0, (key, size));
                }
                else
                {
                    var hit = store.TryGet(key, out _);
                    var at = model.FindIndex(e => e.Key == key);
                    hit.Should().Be(at >= 0);
                    if (at > 0)
                    {
                        var e = model[at];
                        model.RemoveAt(at);
                        model.Insert(0, e);
                    }
                }

                store.Count.Should().Be(model.Count).And.BeLessThanOrEqualTo(12);
                store.Bytes.Should().Be(model.Sum(e => e.Size)).And.BeLessThanOrEqualTo(600);
            }
        }
    }
}
