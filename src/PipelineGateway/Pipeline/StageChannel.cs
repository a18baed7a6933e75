using System.Threading.Channels;

namespace PipelineGateway.Pipeline;

/// <summary>
/// The bounded channel in front of a stage, whose writer hands an item straight to that stage on the writer's own
/// thread when the stage is idle and its channel empty (<c>Pipeline:PassThroughIdleStages</c>, issue 21). A write into
/// an idle stage's channel otherwise wakes its loop on another thread: a thread-pool hand-off (a futex wake, a context
/// switch, cold caches) for a handler that runs for a microsecond or two. Under load the loop is busy or its channel
/// holds items, and writes queue exactly as before: the channel stays the burst buffer and the order is kept
/// (see <see cref="PipelineStage.TryHandleInline"/> for why an item never passes one already queued).
/// </summary>
internal sealed class StageChannel : Channel<WorkItem>
{
    private readonly Channel<WorkItem> _inner;
    private PipelineStage? _consumer;
    private volatile bool _completed;

    public StageChannel(BoundedChannelOptions options, bool passThrough)
    {
        _inner = Channel.CreateBounded<WorkItem>(options);
        Reader = _inner.Reader;
        Writer = passThrough ? new PassThroughWriter(this) : _inner.Writer;
    }

    /// <summary>The stage reading this channel: writes may be handed to it directly from now on.</summary>
    public void Attach(PipelineStage consumer) => _consumer = consumer;

    private sealed class PassThroughWriter(StageChannel channel) : ChannelWriter<WorkItem>
    {
        public override bool TryWrite(WorkItem item) =>
            (!channel._completed && channel._consumer is { } stage && stage.TryHandleInline(item)) || channel._inner.Writer.TryWrite(item);

        public override ValueTask<bool> WaitToWriteAsync(CancellationToken cancellationToken = default) =>
            channel._inner.Writer.WaitToWriteAsync(cancellationToken);

        public override bool TryComplete(Exception? error = null)
        {
            channel._completed = true; // a completed channel takes nothing more, not even past its queue
            return channel._inner.Writer.TryComplete(error);
        }

        public override ValueTask WriteAsync(WorkItem item, CancellationToken cancellationToken = default) =>
            TryWrite(item) ? ValueTask.CompletedTask : channel._inner.Writer.WriteAsync(item, cancellationToken);
    }
}
