using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Caching;

/// <summary>
/// Second stage: a cached answer completes the request at once; a miss goes on to the router.
/// </summary>
internal sealed class CacheStage(GatewayPipeline pipeline, ResponseCache cache, ILogger<CacheStage> logger)
    : PipelineStage(pipeline, logger)
{
    protected override string StageName => "cache";

    protected override ChannelReader<WorkItem> Input => Pipeline.CacheLookup.Reader;

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
            return ValueTask.CompletedTask;
        }

        if (cache.IsEnabled && !item.IsStream && cache.IsCacheable(item.Request))
        {
            var key = CacheKey.Compute(item.Group.Name, item.Request);
            item.CacheKey = key;
            if (item.Request.Gateway?.NoCache != true && cache.TryGet(key, out var cached))
            {
                Pipeline.Metrics.OnCacheHit();
                item.TryComplete(CloneForHit(cached, item));
                Pipeline.Retire(item);
                return ValueTask.CompletedTask;
            }

            Pipeline.Metrics.OnCacheMiss();
        }

        // Never waits: the router channel holds MaxInFlight items (see GatewayPipeline).
        if (!Pipeline.Routing.Writer.TryWrite(item))
        {
            Pipeline.FailAndRetire(item, new GatewayUnavailableException("The gateway is shutting down."));
        }

        return ValueTask.CompletedTask;
    }

    private ChatCompletionResponse CloneForHit(ChatCompletionResponse cached, WorkItem item) => new()
    {
        Id = cached.Id,
        Object = cached.Object,
        Created = cached.Created,
        Model = cached.Model,
        Choices = cached.Choices,
        Usage = cached.Usage,
        SystemFingerprint = cached.SystemFingerprint,
        AdditionalProperties = cached.AdditionalProperties,
        Gateway = new GatewayResponseInfo
        {
            Provider = cached.Gateway?.Provider ?? "cache",
            ProviderModel = cached.Gateway?.ProviderModel ?? cached.Model,
            Attempts = [],
            Cached = true,
            Cost = 0,
            Latency = Pipeline.Time.GetElapsedTime(item.StartTimestamp),
            RequestSequence = item.Sequence,
        },
    };
}
