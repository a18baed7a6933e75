using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.OpenAI;

namespace PipelineGateway.Providers.Http;

/// <summary>
/// Each HTTP provider's own connection pool: a <see cref="SocketsHttpHandler"/> (pooled connections recycled every few
/// minutes so DNS changes are seen, a per-provider connection cap, no cookies, no redirects) called through a bare
/// <see cref="HttpMessageInvoker"/>, with nothing in between.
/// </summary>
/// <remarks>
/// Deliberately not an <c>IHttpClientFactory</c> client with handlers: on a real socket every handler's await completes
/// asynchronously, so each layer costs a boxed state machine and its own work per upstream call. Measured at
/// saturation (docs/benchmarks.md, "The upstream HTTP stack"), the layers this replaces — the factory's two logging
/// handlers (their lines were filtered out anyway), the resilience handler's Polly timeout, the redirect and
/// decompression handlers and <see cref="HttpClient"/>'s linked token source — made 2.4 KB of the gateway's 12 KB per
/// request. What they did is done here once: the per-attempt timeout (<see cref="AttemptDeadline"/>), decompression
/// (<see cref="ResponseBody"/>) and logging (the adapters log upstream errors; System.Net.Http's metrics and
/// diagnostics still see every call). Nothing retries here: retries and fallback belong to the dead-letter stage.
/// </remarks>
internal static class ProviderHttp
{
    public static SocketsHttpHandler CreateHandler(ProviderOptions provider) => new()
    {
        PooledConnectionLifetime = TimeSpan.FromMinutes(5),
        PooledConnectionIdleTimeout = TimeSpan.FromSeconds(90),
        MaxConnectionsPerServer = provider.MaxConnections,
        ConnectTimeout = TimeSpan.FromSeconds(10),
        AutomaticDecompression = DecompressionMethods.None,
        AllowAutoRedirect = false,
        EnableMultipleHttp2Connections = true,
        UseCookies = false,
    };
}

/// <summary>Creates the HTTP adapters (OpenAI, OpenAI-compatible, Azure OpenAI, Anthropic) from configuration.</summary>
/// <remarks>
/// It takes its services when it creates a provider, not in its constructor: the options validator lists the
/// factories, and the HTTP client factory depends (through the client options) on the validated options.
/// </remarks>
internal sealed class HttpProviderFactory(string type) : IProviderFactory
{
    public string Type { get; } = type;

    public ILlmProvider Create(ProviderOptions options, IServiceProvider services) =>
        Create(options, services.GetRequiredService<TimeProvider>(), services.GetRequiredService<ILoggerFactory>());

    /// <param name="wrap">Puts a handler in front of the connection pool (tests watch what leaves the adapter).</param>
    public ILlmProvider Create(ProviderOptions options, TimeProvider time, ILoggerFactory loggers, Func<HttpMessageHandler, HttpMessageHandler>? wrap = null)
    {
        HttpMessageHandler handler = ProviderHttp.CreateHandler(options);
        var http = new HttpMessageInvoker(wrap is null ? handler : wrap(handler), disposeHandler: true);
        var key = ApiKeys.Read(options);
        var logger = loggers.CreateLogger("PipelineGateway.Providers." + Type);
        return string.Equals(Type, ProviderTypes.Anthropic, StringComparison.OrdinalIgnoreCase)
            ? new AnthropicChatProvider(options.Name, http, options, key, time, logger)
            : new OpenAIChatProvider(options.Name, http, options, key, time, logger);
    }
}

/// <summary>API keys come only from the environment variable the configuration names.</summary>
internal static class ApiKeys
{
    /// <summary>The provider's key from its environment variable; registered with the redactor as it is read, so it never leaves.</summary>
    public static string? Read(ProviderOptions options)
    {
        var key = string.IsNullOrWhiteSpace(options.ApiKeyEnvironmentVariable) ? null : Environment.GetEnvironmentVariable(options.ApiKeyEnvironmentVariable);
        SecretRedactor.Register(key);
        return key;
    }

    /// <summary>Whether the provider type cannot work without a key.</summary>
    public static bool Required(string type) =>
        type.Equals(ProviderTypes.OpenAI, StringComparison.OrdinalIgnoreCase)
        || type.Equals(ProviderTypes.AzureOpenAI, StringComparison.OrdinalIgnoreCase)
        || type.Equals(ProviderTypes.Anthropic, StringComparison.OrdinalIgnoreCase);
}
