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

    protected PipelineStage(ChannelReader<WorkItem> input, GatewayPipeline pipeline, ILogger logger)
    {
        _input = input;
        Pipeline = pipeline;
        Logger = logger;
    }

    /// <summary>The work item's lifecycle: let go of it, fail it, give back or take its slot.</summary>
    protected GatewayPipeline Pipeline { get; }

    protected ILogger Logger { get; }

    /// <summary>Fires when the stage stops.</summary>
    protected CancellationToken Stopping => _stop.Token;

    protected abstract string StageName { get; }

    protected abstract ValueTask HandleAsync(WorkItem item, CancellationToken stopping);

    public virtual Task StartAsync(CancellationToken cancellationToken)
    {
        _loop = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    public virtual async Task StopAsync(CancellationToken cancellationToken)
    {
        // Stages stop after admission has drained the pipeline (hosted services stop in reverse order).
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
                while (reader.TryRead(out var item))
                {
                    if (item.IsCompleted)
                    {
                        // Ended while it waited in this stage's channel (its caller, its deadline): nothing to do
                        // but let go of it — here, once, for every stage.
                        Pipeline.Retire(item);
                        continue;
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
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
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
