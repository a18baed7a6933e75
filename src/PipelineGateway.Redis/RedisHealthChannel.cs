using System.Globalization;
using Microsoft.Extensions.Logging;
using PipelineGateway.Routing.Health;
using StackExchange.Redis;

namespace PipelineGateway.Redis;

/// <summary>
/// Health verdicts over Redis pub/sub (<c>PREFIX:health</c>): a cooldown or an open circuit seen by one instance
/// reaches the others in milliseconds. Messages are <c>instance␟kind␟duration-ms␟deployment-id</c>; an instance
/// ignores its own. Pub/sub keeps no history, so each verdict is also kept as a key that expires with it
/// (<c>PREFIX:health:v:KIND:DEPLOYMENT</c>): an instance that starts while a verdict runs reads the keys once it
/// has subscribed and applies what is left of each, and so does an instance whose connection to Redis comes back
/// (the messages sent while it was away are lost to it). StackExchange.Redis re-subscribes after a reconnect by
/// itself; a subscription that could not be made at start is retried in the background.
/// </summary>
internal sealed partial class RedisHealthChannel(RedisConnection redis, ILogger<RedisHealthChannel> logger) : IDistributedHealthChannel, IDisposable
{
    private const char Separator = '\u001f';
    private readonly string _instance = Guid.NewGuid().ToString("N")[..12];
    private readonly RedisChannel _channel = RedisChannel.Literal(redis.Options.KeyPrefix + ":health");
    private readonly CancellationTokenSource _stop = new();

    public void Publish(HealthSignal signal)
    {
        var message = string.Join(Separator, _instance, (int)signal.Kind, ((long)signal.Duration.TotalMilliseconds).ToString(CultureInfo.InvariantCulture), signal.DeploymentId);
        try
        {
            redis.Subscriber.Publish(_channel, message, CommandFlags.FireAndForget);
            redis.Database.StringSet(VerdictKey(signal.Kind, signal.DeploymentId), _instance, signal.Duration, When.Always, CommandFlags.FireAndForget);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            // Redis is away: the other instances learn of this outage through their own attempts.
        }
    }

    public void Subscribe(Action<HealthSignal> onSignal) => _ = SubscribeAsync(onSignal);

    private async Task SubscribeAsync(Action<HealthSignal> onSignal)
    {
        var delay = TimeSpan.FromMilliseconds(250);
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await redis.Subscriber.SubscribeAsync(_channel, (_, message) => Deliver(message, onSignal)).ConfigureAwait(false);
                await ReplayRunningVerdictsAsync(onSignal).ConfigureAwait(false);

                // Each restored connection (the subscription's and the commands') replays the kept verdicts, each
                // until it has read them (ReplayAfterReconnectAsync). Applying a verdict twice changes nothing.
                redis.Multiplexer.ConnectionRestored += (_, _) => _ = ReplayAfterReconnectAsync(onSignal);
                return;
            }
            catch (Exception ex) when (ex is RedisException or TimeoutException)
            {
                LogSubscribeFailed(logger, ex.Message);
                try
                {
                    await Task.Delay(delay, _stop.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    private RedisKey VerdictKey(HealthSignalKind kind, string deploymentId) =>
        $"{redis.Options.KeyPrefix}:health:v:{(int)kind}:{deploymentId}";

    /// <summary>
    /// Verdicts given before this instance listened: applied for what is left of them. False when no primary was
    /// connected to read them from (a restored subscription's connection can come back before the commands' one).
    /// </summary>
    private async Task<bool> ReplayRunningVerdictsAsync(Action<HealthSignal> onSignal)
    {
        var prefix = $"{redis.Options.KeyPrefix}:health:v:";
        var read = false;
        foreach (var server in redis.Multiplexer.GetServers().Where(s => s.IsConnected && !s.IsReplica))
        {
            read = true;
            await foreach (var key in server.KeysAsync(pattern: prefix + "*", pageSize: 500).ConfigureAwait(false))
            {
                var rest = ((string)key!)[prefix.Length..].Split(':', 2);
                var ttl = await redis.Database.KeyTimeToLiveAsync(key).ConfigureAwait(false);
                if (rest.Length == 2 && int.TryParse(rest[0], CultureInfo.InvariantCulture, out var kind) && Enum.IsDefined((HealthSignalKind)kind) && ttl is { } left && left > TimeSpan.Zero)
                {
                    onSignal(new HealthSignal(rest[1], (HealthSignalKind)kind, left));
                }
            }
        }

        return read;
    }

    public void Recall(IReadOnlyList<string> deploymentIds, Action<HealthSignal> onSignal) => _ = RecallAsync(deploymentIds, onSignal);

    /// <summary>The verdicts on a deployment (a provider's pause is on its name, read at start).</summary>
    private static readonly HealthSignalKind[] DeploymentVerdicts = [HealthSignalKind.Cooldown, HealthSignalKind.CircuitOpen, HealthSignalKind.Rejected];

    /// <summary>The kept verdicts on these deployments (each kind a deployment can have), applied for what is left of them.</summary>
    private async Task RecallAsync(IReadOnlyList<string> deploymentIds, Action<HealthSignal> onSignal)
    {
        try
        {
            foreach (var id in deploymentIds)
            {
                foreach (var kind in DeploymentVerdicts)
                {
                    if (await redis.Database.KeyTimeToLiveAsync(VerdictKey(kind, id)).ConfigureAwait(false) is { } left && left > TimeSpan.Zero)
                    {
                        onSignal(new HealthSignal(id, kind, left));
                    }
                }
            }
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or ObjectDisposedException)
        {
            // Redis is away: this instance learns of the deployment's health through its own attempts.
        }
    }

    /// <summary>
    /// The replay after a connection came back, tried again until it has read the kept verdicts (every 250 ms, for up to
    /// 10 s): relying on the other connection's own restore to replay left a verdict unread when that restore came first
    /// or its replay failed — once in a full test run, an instance kept sending to a deployment another had paused.
    /// </summary>
    private async Task ReplayAfterReconnectAsync(Action<HealthSignal> onSignal)
    {
        for (var attempt = 0; attempt < 40 && !_stop.IsCancellationRequested; attempt++)
        {
            try
            {
                if (await ReplayRunningVerdictsAsync(onSignal).ConfigureAwait(false))
                {
                    return;
                }
            }
            catch (Exception ex) when (ex is RedisException or TimeoutException)
            {
                // Not back yet: tried again below.
            }
            catch (ObjectDisposedException)
            {
                return; // the gateway is stopping
            }

            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(250), _stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
        }
    }

    private void Deliver(RedisValue message, Action<HealthSignal> onSignal)
    {
        var parts = ((string?)message ?? string.Empty).Split(Separator, 4);
        if (parts.Length != 4 || parts[0] == _instance
            || !int.TryParse(parts[1], CultureInfo.InvariantCulture, out var kind) || !Enum.IsDefined((HealthSignalKind)kind)
            || !long.TryParse(parts[2], CultureInfo.InvariantCulture, out var ms))
        {
            return; // this instance's own, or not a message of ours
        }

        onSignal(new HealthSignal(parts[3], (HealthSignalKind)kind, TimeSpan.FromMilliseconds(ms)));
    }

    public void Dispose()
    {
        _stop.Cancel();
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 10, Level = LogLevel.Warning, Message = "Could not subscribe to shared health signals ({Reason}); retrying.")]
    private static partial void LogSubscribeFailed(ILogger logger, string reason);
}
