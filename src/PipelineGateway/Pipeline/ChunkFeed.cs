using System.Diagnostics.CodeAnalysis;

namespace PipelineGateway.Pipeline;

/// <summary>
/// One streamed request's chunks as the gateway's SSE endpoints read them: <see cref="TryRead"/> takes what is queued,
/// <see cref="WaitToReadAsync"/> waits only when nothing is, and <see cref="End"/> says how the stream ended once a wait
/// returned false. A loop: <c>while (true) { if (!feed.TryRead(out var c)) { if (await feed.WaitToReadAsync()) continue;
/// feed.End(); break; } … }</c>.
/// </summary>
/// <remarks>
/// Why not the enumerator a library caller gets (<see cref="IGatewayQueue.StreamAsync(ChatCompletionRequest, SubmitMode, CancellationToken)"/>):
/// an endpoint awaiting the chunk channel's own wait is resumed straight by the worker's write, where through an
/// enumerator the enumerator's state machine is resumed first and it then resumes the endpoint — one asynchronous layer
/// more on every streamed event that waits for the upstream (docs/benchmarks.md, "One asynchronous layer fewer on each
/// side of a streamed event").
/// </remarks>
internal abstract class ChunkFeed : IAsyncDisposable
{
    /// <summary>A chunk already queued; <see cref="WorkItem.BurstEnd"/> where a burst ended (the gateway's own queue's inline feed only).</summary>
    public abstract bool TryRead([MaybeNullWhen(false)] out ChatCompletionChunk chunk);

    /// <summary>Waits until <see cref="TryRead"/> has a chunk; false when the stream ended (then call <see cref="End"/>).</summary>
    public abstract ValueTask<bool> WaitToReadAsync();

    /// <summary>After a wait returned false: throws the stream's failure as it is, if it failed; returns when it ended well.</summary>
    public abstract void End();

    /// <summary>Stops the request when it has not ended (its reader gave up: the upstream call is cancelled).</summary>
    public abstract ValueTask DisposeAsync();

    /// <summary>The chunks of a queue that is not the gateway's own (an application's in front of it, a test double).</summary>
    public static ChunkFeed Of(IAsyncEnumerator<ChatCompletionChunk> chunks) => new EnumeratorFeed(chunks);

    private sealed class EnumeratorFeed(IAsyncEnumerator<ChatCompletionChunk> chunks) : ChunkFeed
    {
        private bool _moved; // a wait was made: when it returned true, Current is the next chunk

        public override bool TryRead([MaybeNullWhen(false)] out ChatCompletionChunk chunk)
        {
            if (_moved)
            {
                _moved = false;
                chunk = chunks.Current;
                return true;
            }

            chunk = null;
            return false;
        }

        public override ValueTask<bool> WaitToReadAsync()
        {
            _moved = true;
            return chunks.MoveNextAsync();
        }

        public override void End()
        {
            // The enumerator threw its failure from the move that found it.
        }

        public override ValueTask DisposeAsync() => chunks.DisposeAsync();
    }
}
