using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

public sealed class ProviderClientLoggingTests
{
    private const string ClientCategory = "System.Net.Http.HttpClient.pgw-provider:sim.ClientHandler";

    private static ServiceProvider Build(Action<ILoggingBuilder>? logging = null)
    {
        var services = new ServiceCollection();
        services.AddLogging(b =>
        {
            b.SetMinimumLevel(LogLevel.Information).AddProvider(new CapturingLoggerProvider());
            logging?.Invoke(b);
        });
        services.AddPipelineGateway(_ => { });
        return services.BuildServiceProvider();
    }

    [Fact]
    public void The_per_request_lines_of_the_provider_clients_are_off_at_Information()
    {
        using var services = Build();
        var loggers = services.GetRequiredService<ILoggerFactory>();

        loggers.CreateLogger(ClientCategory).IsEnabled(LogLevel.Information).Should().BeFalse();
        loggers.CreateLogger(ClientCategory).IsEnabled(LogLevel.Warning).Should().BeTrue();
        loggers.CreateLogger("System.Net.Http.HttpClient.someone-elses-client.ClientHandler").IsEnabled(LogLevel.Information).Should().BeTrue("only the gateway's own clients are quieted");
        loggers.CreateLogger("PipelineGateway.Pipeline.GatewayPipeline").IsEnabled(LogLevel.Information).Should().BeTrue();
    }

    [Fact]
    public void A_level_configured_for_HttpClient_logging_wins()
    {
        using var services = Build(b => b.AddFilter("System.Net.Http.HttpClient", LogLevel.Information));

        services.GetRequiredService<ILoggerFactory>().CreateLogger(ClientCategory).IsEnabled(LogLevel.Information).Should().BeTrue();
    }
}
