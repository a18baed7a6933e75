using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// ASP.NET Core's per-request hosting log is off unless configured: while it is enabled at any level, ASP.NET Core
/// starts an Activity for every request (docs/benchmarks.md, "The upstream HTTP stack and the request's Activity").
/// </summary>
public sealed class HostingRequestLoggingTests
{
    private static async Task<bool> HostingLogEnabled(Dictionary<string, string?> settings)
    {
        await using var app = GatewayServer.Build(
            TestServerConfig.Simulated(settings),
            "http://127.0.0.1:0",
            b => b.AddProvider(new CapturingLoggerProvider()).SetMinimumLevel(LogLevel.Information));
        var loggers = app.Services.GetRequiredService<ILoggerFactory>();
        loggers.CreateLogger("PipelineGateway.Server").IsEnabled(LogLevel.Information).Should().BeTrue("only the hosting category is quieted");
        return loggers.CreateLogger(HostingRequestLogging.Category).IsEnabled(LogLevel.Critical);
    }

    [Fact]
    public async Task It_is_off_by_default_even_under_a_Microsoft_AspNetCore_rule()
    {
        (await HostingLogEnabled([])).Should().BeFalse();
        (await HostingLogEnabled(new() { ["Logging:LogLevel:Microsoft.AspNetCore"] = "Warning" })).Should().BeFalse();
    }

    [Theory]
    [InlineData("Microsoft.AspNetCore.Hosting.Diagnostics")]
    [InlineData("Microsoft.AspNetCore.Hosting")]
    public async Task A_level_configured_for_the_category_wins(string category) =>
        (await HostingLogEnabled(new() { [$"Logging:LogLevel:{category}"] = "Information" })).Should().BeTrue();

    /// <summary>
    /// A configuration without a Logging section (a user's own file) does not log two lines per request from ASP.NET
    /// Core's endpoint middleware: ASP.NET Core is at Warning unless the configuration names one of its categories.
    /// </summary>
    [Fact]
    public async Task AspNetCore_is_at_Warning_unless_the_configuration_names_it()
    {
        static async Task<(bool Info, bool Warning)> Endpoint(Dictionary<string, string?> settings)
        {
            await using var app = GatewayServer.Build(TestServerConfig.Simulated(settings), "http://127.0.0.1:0", b => b.AddProvider(new CapturingLoggerProvider()).SetMinimumLevel(LogLevel.Information));
            var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Microsoft.AspNetCore.Routing.EndpointMiddleware");
            return (logger.IsEnabled(LogLevel.Information), logger.IsEnabled(LogLevel.Warning));
        }

        (await Endpoint([])).Should().Be((false, true));
        (await Endpoint(new() { ["Logging:LogLevel:Microsoft.AspNetCore"] = "Information" })).Should().Be((true, true));
        (await Endpoint(new() { ["Logging:LogLevel:Microsoft.AspNetCore.Routing"] = "Debug" })).Should().Be((true, true));
    }
}
