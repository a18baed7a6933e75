using Microsoft.Extensions.Configuration;

namespace PipelineGateway.Tests.Support;

/// <summary>The server tests' usual configuration: one instant simulated provider "sim" serving "gpt-4o-mini", plus each test's own settings.</summary>
public static class TestServerConfig
{
    public static IConfiguration Simulated(Dictionary<string, string?> more) =>
        new ConfigurationBuilder().AddInMemoryCollection(SimulatedSettings(more)).Build();

    /// <summary>The same settings as a dictionary (for a configuration source a test replaces).</summary>
    public static Dictionary<string, string?> SimulatedSettings(Dictionary<string, string?> more)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Providers:0:Type"] = "Simulated",
            ["Gateway:Providers:0:Simulated:LatencyMs"] = "0",
            ["Gateway:Models:0:Name"] = "gpt-4o-mini",
            ["Gateway:Models:0:Deployments:0:Provider"] = "sim",
        };
        foreach (var (key, value) in more)
        {
            settings[key] = value;
        }

        return settings;
    }
}
