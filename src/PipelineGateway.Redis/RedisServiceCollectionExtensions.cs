using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using PipelineGateway.Admission;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.Caching.StackExchangeRedis;
using Microsoft.Extensions.Options;
using PipelineGateway.Caching;
using StackExchange.Redis;
using PipelineGateway.Cost;
using PipelineGateway.Routing.Health;
using PipelineGateway.Hosting;

namespace PipelineGateway.Redis;

public static class RedisServiceCollectionExtensions
{
    /// <summary>
    /// Distributed mode from the <c>Gateway:Redis</c> section (nothing happens when the section is absent):
    /// the admission rate limits, the response cache, deployment health (open circuits, 429 cooldowns) and budget
    /// accounts are shared by every instance that uses the same Redis and key prefix.
    /// </summary>
    public static IServiceCollection AddPipelineGatewayRedis(this IServiceCollection services, IConfiguration configuration)
    {
        var section = configuration.GetSection(RedisOptions.SectionName);
        if (!section.Exists())
        {
            return services;
        }

        services.AddPipelineGatewayRedis(o => section.Bind(o));
        if (Hosting.UnknownSettings.InSection(section, typeof(RedisOptions)) is { Count: > 0 } unknown)
        {
            // A setting nothing reads (a typo) stops start-up naming it, as everywhere in the Gateway section.
            services.AddOptions<RedisOptions>().Validate(_ => false, string.Join(" ", unknown));
        }

        return services;
    }

    /// <summary>Distributed mode configured in code.</summary>
    public static IServiceCollection AddPipelineGatewayRedis(this IServiceCollection services, Action<RedisOptions> configure)
    {
        services.AddOptions<RedisOptions>().Configure(configure).ValidateDataAnnotations().ValidateOnStart();
        services.TryAddSingleton<RedisConnection>();
        var probe = new RedisOptions();
        configure(probe);
        RegisterPassword(probe.Configuration);
        if (probe.RateLimits)
        {
            services.TryAddSingleton<IDistributedRateLimitStore, RedisRateLimitStore>();
        }

        if (probe.Budgets)
        {
            services.TryAddSingleton<IDistributedBudgetStore, RedisBudgetStore>();
        }

        if (probe.Health)
        {
            services.TryAddSingleton<IDistributedHealthChannel, RedisHealthChannel>();
        }

        if (probe.StoredResponses)
        {
            // The server's stored responses, in Redis under their own prefix (Microsoft's Redis IDistributedCache on the
            // gateway's multiplexer, as the response cache's second level).
            services.AddKeyedSingleton<IDistributedCache>(RedisOptions.StoredResponsesServiceKey, static (sp, _) =>
            {
                var connection = sp.GetRequiredService<RedisConnection>();
                return new RedisCache(Options.Create(new RedisCacheOptions
                {
                    InstanceName = connection.Options.KeyPrefix + ":r:",
                    ConnectionMultiplexerFactory = () => Task.FromResult<IConnectionMultiplexer>(connection.Multiplexer),
                }));
            });
        }

        if (probe.Cache)
        {
            // The second level is Microsoft's Redis IDistributedCache on the gateway's own multiplexer (so it shares
            // the fail-fast, reconnecting connection), behind the gateway's in-memory cache.
            services.AddStackExchangeRedisCache(_ => { });
            services.AddOptions<RedisCacheOptions>().Configure<RedisConnection>((o, connection) =>
            {
                o.InstanceName = connection.Options.KeyPrefix + ":c:";
                o.ConnectionMultiplexerFactory = () => Task.FromResult<IConnectionMultiplexer>(connection.Multiplexer);
            });
            services.AddPipelineGatewayDistributedCache(probe.CacheMaxEntryBytes);
        }

        return services;
    }

    /// <summary>
    /// The password is a secret from the moment it is configured: registered with the redactor before anything
    /// (a validation message, a connection error) could write the configuration string.
    /// </summary>
    private static void RegisterPassword(string? configuration)
    {
        if (string.IsNullOrWhiteSpace(configuration))
        {
            return;
        }

        try
        {
            PipelineGateway.Providers.SecretRedactor.Register(ConfigurationOptions.Parse(configuration, ignoreUnknown: true).Password);
        }
        catch (ArgumentException)
        {
            // An unparsable string is reported by the connection; nothing in it is known to be a password.
        }
    }
}

/// <summary>Distributed mode on the gateway's builder: <c>services.AddPipelineGateway(config).AddRedis(config)</c>.</summary>
public static class RedisGatewayBuilderExtensions
{
    /// <summary>Shares limits, the cache's second level, cooldowns and budgets through Redis (the <c>Gateway:Redis</c> section; none = off).</summary>
    public static TBuilder AddRedis<TBuilder>(this TBuilder builder, IConfiguration configuration)
        where TBuilder : IGatewayBuilder
    {
        builder.Services.AddPipelineGatewayRedis(configuration);
        return builder;
    }

    /// <summary>Shares limits, the cache's second level, cooldowns and budgets through the Redis at <paramref name="configuration"/>.</summary>
    public static TBuilder AddRedis<TBuilder>(this TBuilder builder, string configuration, RedisFailureMode failureMode = RedisFailureMode.FailOpen, string keyPrefix = "pgw")
        where TBuilder : IGatewayBuilder =>
        builder.AddRedis(o =>
        {
            o.Configuration = configuration;
            o.FailureMode = failureMode;
            o.KeyPrefix = keyPrefix;
        });

    /// <summary>Shares limits, the cache's second level, cooldowns and budgets through Redis, configured in code.</summary>
    public static TBuilder AddRedis<TBuilder>(this TBuilder builder, Action<RedisOptions> configure)
        where TBuilder : IGatewayBuilder
    {
        builder.Services.AddPipelineGatewayRedis(configure);
        return builder;
    }
}
