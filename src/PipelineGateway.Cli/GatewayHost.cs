using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Redis;

namespace PipelineGateway.Cli;

/// <summary>The in-process gateway host of the batch-style commands (demo, batch).</summary>
internal static class GatewayHost
{
    public static async Task<IHost> StartAsync(IConfiguration configuration, CancellationToken cancellationToken, Action<IServiceCollection>? services = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Error);

        // The command owns Ctrl+C and SIGTERM (stop admitting, finish what is in flight); the host's console
        // lifetime would otherwise take those signals for itself.
        builder.Services.AddSingleton<IHostLifetime, CommandLifetime>();
        services?.Invoke(builder.Services);
        builder.Services.AddPipelineGateway(configuration);
        builder.Services.AddPipelineGatewayRedis(configuration);
        var host = builder.Build();
        try
        {
            await host.StartAsync(cancellationToken).ConfigureAwait(false);
            return host;
        }
        catch (InvalidOperationException ex) when (ex.Message.StartsWith("Gateway:", StringComparison.Ordinal))
        {
            // A setting that cannot be used (the request log's path): one line naming it.
            host.Dispose();
            throw new CliException(ex.Message, exitCode: 1);
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    private sealed class CommandLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
