using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Caching;

/// <summary>
/// Second stage. A cached answer completes the request at once (replayed as chunks for a stream). On a miss,
/// an identical request already in flight is joined (single-flight: one upstream call serves every waiter);
/// otherwise the request goes on to the router as the leader of a new flight.
/// </summary>
internal sealed class CacheStage(
    ChannelReader<WorkItem> input,
    ChannelWriter<WorkItem> router,
    GatewayPipeline pipeline,
    ResponseCache cache,
    Flights flights,
    Metrics.GatewayMetrics metrics,
    TimeProvider time,
    ILogger<CacheStage> logger)
    : PipelineStage(input, pipeline, logger)
{
    protected override string StageName => "cache";

    protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
    {
        if (cache.IsEnabled && cache.IsCacheable(item.Request))
        {
            var key = item.CacheKey ?? CacheKey.Compute(item.Group.Name, item.Request); // computed as it was submitted (GatewayQueue)
            item.CacheKey = key;
            if (item.Request.Gateway?.NoCache != true && cache.TryGet(key, out var cached))
            {
                metrics.OnCacheHit();
                Answer(time, item, cached, cached: true);
                Pipeline.Retire(item);
                return ValueTask.CompletedTask;
            }

            if (cache.HasSecondLevel && item.Request.Gateway?.NoCache != true)
            {
                // The shared second level answers after a round trip: the stage goes on with the next request
                // meanwhile, and this one continues from the lookup's completion.
                _ = LookUpSecondLevelAsync(item, key);
                return ValueTask.CompletedTask;
            }

            Miss(item, key);
            return ValueTask.CompletedTask;
        }

        Route(item);
        return ValueTask.CompletedTask;
    }

    private async Task LookUpSecondLevelAsync(WorkItem item, CacheKey key)
    {
        var shared = await cache.GetSecondLevelAsync(key, CancellationToken.None).ConfigureAwait(false);
        if (item.IsCompleted)
        {
            Pipeline.Retire(item);
        }
        else if (shared is not null)
        {
            metrics.OnCacheHit();
            Answer(time, item, shared, cached: true);
            Pipeline.Retire(item);
        }
        else
        {
            Miss(item, key);
        }
    }

    private void Miss(WorkItem item, CacheKey key)
    {
        metrics.OnCacheMiss();
        if (cache.SingleFlight && !item.IsStream && flights.Join(key, item, cache.MaxFollowers))
        {
            metrics.OnCoalesced();
            return; // answered when the leader's call ends
        }

        Route(item);
    }

    private void Route(WorkItem item) => Forward(item, router);

    /// <summary>
    /// Answers a request from a stored answer — a cache hit, or a follower of an identical request's call — with its
    /// own copy and its own info: charged nothing, the avoided cost in <see cref="GatewayResponseInfo.CostSaved"/>. A
    /// stream gets the copy as chunks, the last carrying the usage and the info.
    /// </summary>
    internal static void Answer(TimeProvider time, WorkItem item, StoredAnswer stored, bool cached)
    {
        var copy = stored.Materialize();
        copy.Gateway = ResponseInfo.Served(item, stored, cached, time);

        if (item.IsStream)
        {
            foreach (var chunk in StreamReplay.ToChunks(copy, copy.Gateway, item.Request.Gateway?.KeepsAnthropicEvents == true))
            {
                // The replay is a handful of chunks, far below the chunk channel's capacity.
                item.Chunks!.Writer.TryWrite(chunk);
            }
        }

        item.TryComplete(copy);
    }
}

/// <summary>
/// Identical requests in flight (single-flight). The first is the leader and goes upstream; followers wait here
/// holding their slots. When the leader ends: a success answers every follower; a failure reaches them all —
/// except the leader's own caller giving up, which must not fail the others: the first follower still waiting
/// then becomes the leader and goes upstream instead.
/// </summary>
internal sealed class Flights(GatewayPipeline pipeline, TimeProvider time) : ICompletionListener
{
    private readonly ConcurrentDictionary<CacheKey, Flight> _flights = new();

    public int Count => _flights.Count;

    /// <summary>
    /// Joins an identical request in flight (true), or makes this one the leader of a new flight (false). A flight
    /// that has <paramref name="maxFollowers"/> already is not joined: the request goes upstream on its own (false).
    /// </summary>
    public bool Join(CacheKey key, WorkItem item, int maxFollowers)
    {
        while (true)
        {
            if (_flights.TryGetValue(key, out var flight))
            {
                lock (flight)
                {
                    if (!flight.Closed)
                    {
                        if (flight.Followers.Count >= maxFollowers)
                        {
                            return false; // full: this one makes its own call (and leads nothing)
                        }

                        item.NeverReuse(); // answered by the leader's thread, retired by this stage's
                        flight.Followers.Add(item);
                        return true;
                    }
                }

                continue; // closing as we looked: start a new one
            }

            item.NeverReuse(); // its followers are answered from its completion
            var mine = new Flight(item);
            if (_flights.TryAdd(key, mine))
            {
                item.Flight = mine;
                return false;
            }
        }
    }

    /// <summary>A request ended: when it led a flight, its followers are answered, failed or handed over.</summary>
    public void OnCompleted(in Completion completion)
    {
        if (completion.Item.Flight is not null)
        {
            OnLeaderCompleted(completion.Item, completion.Error is null ? completion.Item.Stored : null, completion.Error);
        }
    }

    /// <summary>The leader ended (exactly once per item): answer, fail or hand over to a follower.</summary>
    private void OnLeaderCompleted(WorkItem leader, StoredAnswer? answer, Exception? error)
    {
        if (leader.Flight is not { } flight || leader.CacheKey is not { } key)
        {
            return;
        }

        leader.Flight = null;
        List<WorkItem> followers;
        WorkItem? successor = null;
        lock (flight)
        {
            followers = flight.Followers;
            if (error is RequestCancelledException && followers.Exists(f => !f.IsCompleted))
            {
                // The leader's caller gave up; the others still want the answer.
                successor = followers.First(f => !f.IsCompleted);
                followers.Remove(successor);
                flight.Leader = successor;
                successor.Flight = flight;
                successor.CacheKey = key;
                flight.Followers = followers;
            }
            else
            {
                flight.Closed = true;
                _flights.TryRemove(new KeyValuePair<CacheKey, Flight>(key, flight));
            }
        }

        if (successor is not null)
        {
            pipeline.Requeue(successor);
            return;
        }

        foreach (var follower in followers)
        {
            if (answer is not null && error is null)
            {
                CacheStage.Answer(time, follower, answer, cached: false);
            }
            else
            {
                follower.TryFail(error ?? new GatewayUnavailableException("The shared request ended without an answer."));
            }

            pipeline.Retire(follower);
        }
    }

    internal sealed class Flight(WorkItem leader)
    {
        public WorkItem Leader { get; set; } = leader;

        public List<WorkItem> Followers { get; set; } = [];

        public bool Closed { get; set; }
    }
}
