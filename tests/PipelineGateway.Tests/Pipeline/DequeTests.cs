using CsCheck;
using FluentAssertions;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>
/// The ring buffer under the waiting rooms and the admission door (<see cref="Deque{T}"/>): it starts with no storage
/// (most tenants never queue a waiter), and must behave as a list whatever the order of operations and wrap-arounds.
/// </summary>
public sealed class DequeTests
{
    [Fact]
    public void Property_the_deque_says_what_a_list_says_after_any_sequence_of_operations()
    {
        // CsCheck, fixed seed: runs of up to 200 operations (add at the end, take from either end, remove any one item),
        // starting from an empty deque, so growth from no storage, wrap-around and shrinking to empty all happen; after
        // every operation the deque's count and items in order are the reference list's.
        var pcg = new PCG(1, 33);
        for (var run = 0; run < 500; run++)
        {
            var ops = Gen.Int[0, 9].Array[0, 200].Generate(pcg, null, out _);
            var deque = new Deque<int>();
            var expected = new List<int>();
            var next = 0;
            foreach (var op in ops)
            {
                switch (op)
                {
                    case < 5:
                        deque.AddLast(next);
                        expected.Add(next++);
                        break;
                    case 5 or 6 when expected.Count > 0:
                        deque.RemoveFirst().Should().Be(expected[0]);
                        expected.RemoveAt(0);
                        break;
                    case 7 when expected.Count > 0:
                        deque.RemoveLast().Should().Be(expected[^1]);
                        expected.RemoveAt(expected.Count - 1);
                        break;
                    case 8 when expected.Count > 0:
                        var victim = expected[(int)(pcg.Next() % (uint)expected.Count)];
                        deque.Remove(victim).Should().BeTrue();
                        expected.Remove(victim);
                        break;
                    case 9:
                        deque.Remove(-1).Should().BeFalse("an item never added is not found");
                        break;
                }

                deque.Count.Should().Be(expected.Count);
                Enumerable.Range(0, deque.Count).Select(i => deque[i]).Should().Equal(expected);
            }

            if (deque.Count == 0)
            {
                deque.Invoking(d => d.RemoveFirst()).Should().Throw<InvalidOperationException>();
                deque.Invoking(d => d.RemoveLast()).Should().Throw<InvalidOperationException>();
            }
        }
    }
}
