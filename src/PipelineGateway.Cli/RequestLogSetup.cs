using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.RequestLog;
using PipelineGateway.Sqlite;

namespace PipelineGateway.Cli;

/// <summary>
/// The request log of <c>pgw serve</c> and <c>pgw batch</c>: SQLite at <c>Gateway:RequestLog:Path</c>, a relative path
/// taken beside the configuration file (the working directory for the embedded default), unless <c>--no-log</c> or
/// <c>Gateway:RequestLog:Enabled = false</c>.
/// </summary>
internal static class RequestLogSetup
{
    public static Action<IServiceCollection> Register(string? configDirectory, bool disabled, string? path = null) => services =>
    {
        services.AddPipelineGateway().AddSqliteRequestLog();
        services.PostConfigure<GatewayOptions>(o =>
        {
            if (disabled)
            {
                o.RequestLog.Enabled = false;
            }

            o.RequestLog.Path = Resolve(path ?? o.RequestLog.Path, configDirectory);
        });
    };

    /// <summary>The log file a configuration names (for <c>pgw usage</c>).</summary>
    public static string PathOf(IConfiguration configuration, string? configDirectory)
    {
        var options = new RequestLogOptions();
        configuration.GetSection("Gateway:RequestLog").Bind(options);
        return Resolve(options.Path, configDirectory);
    }

    private static string Resolve(string path, string? configDirectory) =>
        Path.IsPathRooted(path) ? path : Path.GetFullPath(Path.Combine(configDirectory ?? Environment.CurrentDirectory, path));
}
