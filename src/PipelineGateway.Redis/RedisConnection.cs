using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace PipelineGateway.Redis;

/// <summary>
/// The one multiplexer of the process. Connects in the background and reconnects by itself; while Redis is
/// down every command fails at once (no backlog), so nothing piles up in memory and callers fall back at once.
/// </summary>
internal sealed partial class RedisConnection : IDisposable
{
    private readonly Lazy<ConnectionMultiplexer> _multiplexer;
    private readonly ILogger _logger;

    public RedisConnection(IOptions<RedisOptions> options, ILogger<RedisConnection> logger)
    {
        Options = options.Value;
        _logger = logger;
        _multiplexer = new Lazy<ConnectionMultiplexer>(Connect, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public RedisOptions Options { get; }

    public ConnectionMultiplexer Multiplexer => _multiplexer.Value;

    public IDatabase Database => _multiplexer.Value.GetDatabase();

    public ISubscriber Subscriber => _multiplexer.Value.GetSubscriber();

    public bool IsConnected => _multiplexer.Value.IsConnected;

    private ConnectionMultiplexer Connect()
    {
        var config = ConfigurationOptions.Parse(Options.Configuration);
        PipelineGateway.Providers.SecretRedactor.Register(config.Password); // never in a log line or an answer
        config.AbortOnConnectFail = false;                       // start even if Redis is down; reconnect later
        config.BacklogPolicy = BacklogPolicy.FailFast;           // bounded memory while down: fail, don't queue
        config.ConnectTimeout = (int)Math.Max(100, Options.OperationTimeout.TotalMilliseconds * 4);
        config.AsyncTimeout = (int)Options.OperationTimeout.TotalMilliseconds;
        config.SyncTimeout = (int)Options.OperationTimeout.TotalMilliseconds;
        config.ReconnectRetryPolicy = new ExponentialRetry(250, 5000);
        config.ClientName ??= "pipeline-gateway";
        var multiplexer = ConnectionMultiplexer.Connect(config);
#pragma warning disable CA1873 // connection events are rare; formatting the endpoint costs nothing that matters
        multiplexer.ConnectionFailed += (_, e) => LogConnectionFailed(_logger, e.EndPoint?.ToString() ?? "?", e.FailureType);
        multiplexer.ConnectionRestored += (_, e) => LogConnectionRestored(_logger, e.EndPoint?.ToString() ?? "?");
#pragma warning restore CA1873
        return multiplexer;
    }

    public void Dispose()
    {
        if (_multiplexer.IsValueCreated)
        {
            _multiplexer.Value.Dispose();
        }
    }

    // The configuration string may hold a password: only endpoints are logged.
    [LoggerMessage(EventId = 1, Level = LogLevel.Error, Message = "Redis connection to {EndPoint} failed ({FailureType}); reconnecting in the background.")]
    private static partial void LogConnectionFailed(ILogger logger, string endPoint, ConnectionFailureType failureType);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Redis connection to {EndPoint} restored.")]
    private static partial void LogConnectionRestored(ILogger logger, string endPoint);
}
