using CsCheck;
using FluentAssertions;
using PipelineGateway.Providers;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// <c>StreamToolCalls</c> over any stream an upstream could send (CsCheck, fixed seed): tool-call deltas with or without
/// an index, an id new or seen, in chunks of one or two choices, finishing with any reason. The HTTP routes:
/// StreamToolCallsTests.
/// </summary>
public sealed class StreamToolCallsPropertyTests
{
    /// <summary>A delta as generated: its index (null: none), its id (null: none; ids are few, so some repeat).</summary>
    private sealed record Delta(int? Index, string? Id);

    private static readonly Gen<Delta> DeltaGen =
        Gen.Select(Gen.Int[0, 9], Gen.Int[0, 5], Gen.Int[0, 3], static (indexed, id, index) => new Delta(indexed < 3 ? index : null, id < 3 ? $"call_{id}" : null));

    /// <summary>A chunk: per choice (0 or 1) its deltas; a finishing chunk says a reason.</summary>
    private static readonly Gen<(int Choice, Delta[] Deltas)> ChunkGen = Gen.Select(Gen.Int[0, 4], DeltaGen.Array[1, 3], static (c, d) => (c == 0 ? 1 : 0, d));

    private static readonly Gen<((int Choice, Delta[] Deltas)[] Chunks, string Finish, bool Called)> StreamGen =
        Gen.Select(ChunkGen.Array[0, 12], Gen.Int[0, 2].Select(static f => f == 0 ? FinishReasons.Length : f == 1 ? FinishReasons.ContentFilter : FinishReasons.Stop), Gen.Bool, static (c, f, called) => (called ? c : [], f, called));

    [Fact]
    public void Every_delta_gets_an_index_true_to_its_own_its_ids_and_its_call_and_a_stream_that_called_tools_finishes_with_tool_calls()
    {
        foreach (var stream in PipelineGateway.Tests.Server.FrontDoorFuzzTests.Cases(StreamGen, 3_000, seed: 37))
        {
            StreamToolCalls? state = null;
            var seen = new Dictionary<int, (Dictionary<string, int> Ids, int? Last, int Max)>();
            foreach (var (choice, deltas) in stream.Chunks)
            {
                var calls = deltas.Select(static d => new ToolCall { Index = d.Index, Id = d.Id, Function = new FunctionCall { Arguments = "x" } }).ToList();
                var chunk = new ChatCompletionChunk { Id = "s", Model = "m", Choices = [new ChunkChoice { Index = choice, Delta = new ChatCompletionDelta { ToolCalls = calls } }] };

                StreamToolCalls.Normalize(ref state, chunk);

                var (ids, last, max) = seen.TryGetValue(choice, out var s) ? s : (new Dictionary<string, int>(), null, -1);
                for (var i = 0; i < deltas.Length; i++)
                {
                    var given = calls[i].Index;
                    given.Should().NotBeNull("every delta leaves with an index");
                    if (deltas[i].Index is { } own)
                    {
                        given.Should().Be(own, "a delta's own index is kept");
                    }
                    else if (deltas[i].Id is { } id && ids.TryGetValue(id, out var first))
                    {
                        given.Should().Be(first, "a call's later delta (its id seen) is that call's");
                    }
                    else if (deltas[i].Id is not null)
                    {
                        given.Should().BeGreaterThan(max, "a new call's index is none seen before");
                    }
                    else
                    {
                        given.Should().Be(last ?? 0, "a delta without id or index continues the last call");
                    }

                    if (deltas[i].Id is { } named)
                    {
                        ids.TryAdd(named, given!.Value);
                    }

                    last = given;
                    max = Math.Max(max, given!.Value);
                }

                seen[choice] = (ids, last, max);
            }

            var finishing = new ChatCompletionChunk { Id = "s", Model = "m", Choices = [new ChunkChoice { Index = 0, FinishReason = stream.Finish }, new ChunkChoice { Index = 1, FinishReason = stream.Finish }] };
            StreamToolCalls.Normalize(ref state, finishing);
            for (var c = 0; c < 2; c++)
            {
                finishing.Choices[c].FinishReason.Should().Be(stream.Finish == FinishReasons.Stop && seen.ContainsKey(c) ? FinishReasons.ToolCalls : stream.Finish, $"choice {c} called tools: {seen.ContainsKey(c)}");
            }
        }
    }
}
