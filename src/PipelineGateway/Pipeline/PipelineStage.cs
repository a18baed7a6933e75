using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Pipeline;

/// <summary>
/// A hosted stage: one loop reading its input channel (<c>WaitToReadAsync</c> + <c>TryRead</c>) and
/// handling each item that is still running (one that ended while it waited is retired here, before any handler
/// sees it). A handler that throws fails only that item, never the loop. A stage is given its input reader, the
/// writer it feeds (if any), the pipeline's lifecycle calls (<see cref="GatewayPipeline"/>: retire, fail, slots) and
/// its own folder's services — nothing else.
/// </summary>
internal abstract partial class PipelineStage : IHostedService, IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly ChannelReader<WorkItem> _input;
    private Task _loop = Task.CompletedTask;

    /// <summary>How many stages one thread may handle inline, nested (admission → cache → router is three).</summary>
    private const int MaxInlineDepth = 4;

    [ThreadStatic]
    private static int t_inlineDepth;

    private int _owner; // 1 while the loop or a writer handles items: the stage's state has one owner at a time
    private volatile bool _running;

    protected PipelineStage(ChannelReader<WorkItem> input, GatewayPipeline pipeline, ILogger logger)
    {
        _input = input;
        Pipeline = pipeline;
        Logger = logger;
    }

    /// <summary>The work item's lifecycle: let go of it, fail it, give back or take its slot.</summary>
    protected GatewayPipeline Pipeline { get; }

    protected ILogger Logger { get; }

    /// <summary>The loop or a writer is handling items (for tests).</summary>
    internal bool IsOwned => Volatile.Read(ref _owner) != 0;

    /// <summary>Fires when the stage stops.</summary>
    protected CancellationToken Stopping => _stop.Token;

    protected abstract string StageName { get; }

    protected abstract ValueTask HandleAsync(WorkItem item, CancellationToken stopping);

    public virtual Task StartAsync(CancellationToken cancellationToken)
    {
        _loop = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
        _running = true;
        return Task.CompletedTask;
    }

    public virtual async Task StopAsync(CancellationToken cancellationToken)
    {
        // Stages stop after admission has drained the pipeline (hosted services stop in reverse order).
        _running = false;
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    private async Task RunAsync(CancellationToken stopping)
    {
        var reader = _input;
        try
        {
            while (await reader.WaitToReadAsync(stopping).ConfigureAwait(false))
            {
                // The loop owns the stage while it drains its channel; a writer finding the stage owned queues.
                Acquire();
                try
                {
                    while (reader.TryRead(out var item))
                    {
                        await ProcessAsync(item, stopping).ConfigureAwait(false);
                    }
                }
                finally
                {
                    Volatile.Write(ref _owner, 0);
                }
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    private async ValueTask ProcessAsync(WorkItem item, CancellationToken stopping)
    {
        if (item.IsCompleted)
        {
            // Ended while it waited in this stage's channel (its caller, its deadline): nothing to do
            // but let go of it — here, once, for every stage.
            Pipeline.Retire(item);
            return;
        }

        try
        {
            await HandleAsync(item, stopping).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway shut down before the request completed."));
            throw;
        }
        catch (Exception ex)
        {
            LogHandlerFailed(Logger, ex, StageName);
            Pipeline.FailAndRetire(item, new GatewayUnavailableException($"The gateway's {StageName} stage failed while handling the request."));
        }
    }

    /// <summary>
    /// Handles <paramref name="item"/> on the calling thread, as the loop would have, when the stage is running, idle
    /// (nobody owns it) and its channel empty; false otherwise (the caller queues it). Taking ownership before looking
    /// at the channel is what keeps the order: the loop takes ownership before it reads, so while a writer owns the
    /// stage no item is in the loop's hands, and one already queued is seen by that look and goes first.
    /// Nesting is bounded per thread (<see cref="MaxInlineDepth"/>): a stage handled inline may hand on to the next, or
    /// retire an item whose slot goes to a waiting request, but a run of those never deepens the stack without limit.
    /// </summary>
    internal bool TryHandleInline(WorkItem item)
    {
        if (!_running || t_inlineDepth >= MaxInlineDepth || Interlocked.CompareExchange(ref _owner, 1, 0) != 0)
        {
            return false;
        }

        if (_input.Count != 0)
        {
            Volatile.Write(ref _owner, 0);
            return false;
        }

        t_inlineDepth++;
        try
        {
            var handled = ProcessAsync(item, _stop.Token); // never throws: ProcessAsync is async
            if (handled.IsCompletedSuccessfully)
            {
                Volatile.Write(ref _owner, 0);
            }
            else
            {
                // Only a handler that finishes at once runs inline (every stage's does: waiting is always a callback);
                // one that did not keeps the stage owned until it is done, as the loop would have.
                _ = ReleaseWhenDoneAsync(handled);
            }

            return true;
        }
        finally
        {
            t_inlineDepth--;
        }
    }

    private async Task ReleaseWhenDoneAsync(ValueTask handled)
    {
        try
        {
            await handled.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Stopping: the item was failed by ProcessAsync.
        }
        finally
        {
            Volatile.Write(ref _owner, 0);
        }
    }

    /// <summary>Waits for a writer handling an item inline (a few microseconds at most) to let go of the stage.</summary>
    private void Acquire()
    {
        var spin = default(SpinWait);
        while (Interlocked.CompareExchange(ref _owner, 1, 0) != 0)
        {
            spin.SpinOnce();
        }
    }

    /// <summary>
    /// Hands the item to the next stage's channel. Never waits: every channel past admission holds MaxInFlight items
    /// (see <see cref="PipelineChannels"/>), so a full one means the gateway is shutting down.
    /// </summary>
    protected void Forward(WorkItem item, ChannelWriter<WorkItem> next)
    {
        if (!next.TryWrite(item))
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }
    }

    public void Dispose() => _stop.Dispose();

    [LoggerMessage(EventId = 10, Level = LogLevel.Error, Message = "The {Stage} stage failed while handling a request.")]
    private static partial void LogHandlerFailed(ILogger logger, Exception exception, string stage);
}
