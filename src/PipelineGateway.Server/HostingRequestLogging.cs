using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace PipelineGateway.Server;

/// <summary>
/// Turns ASP.NET Core's per-request hosting log (<c>Microsoft.AspNetCore.Hosting.Diagnostics</c>: "Request starting",
/// "Request finished") off, unless the configuration names that category (or <c>Microsoft.AspNetCore.Hosting</c>), and
/// the rest of ASP.NET Core to Warning unless the configuration names a <c>Microsoft.AspNetCore</c> category.
/// </summary>
/// <remarks>
/// Not for the lines (they are Information, below the usual Warning), for what their mere possibility costs: while that
/// logger is enabled at any level, ASP.NET Core starts an <see cref="System.Diagnostics.Activity"/> for every request
/// (its ids for log scopes), 4% of the gateway's allocations per request, whether or not anything reads it. The
/// gateway's own request log records every request; the caller's <c>traceparent</c> still parents the gateway's spans
/// (<see cref="TraceContext"/>), and an OpenTelemetry listener on ASP.NET Core's own source still gets its activity.
/// </remarks>
internal sealed class HostingRequestLogging : IPostConfigureOptions<LoggerFilterOptions>
{
    public const string Category = "Microsoft.AspNetCore.Hosting.Diagnostics";

    public const string AspNetCore = "Microsoft.AspNetCore";

    public void PostConfigure(string? name, LoggerFilterOptions options)
    {
        if (!options.Rules.Any(r => r.CategoryName is { } c && (c.Equals(Category, StringComparison.OrdinalIgnoreCase) || c.Equals("Microsoft.AspNetCore.Hosting", StringComparison.OrdinalIgnoreCase))))
        {
            options.Rules.Add(new LoggerFilterRule(null, Category, LogLevel.None, null));
        }

        // A configuration without a Logging section (a user's own file given to --config) would log ASP.NET Core at
        // Information: two lines per request from the endpoint middleware ("Executing endpoint", "Executed endpoint"),
        // each formatted and written to the console. ASP.NET Core's own templates set it to Warning; so does the
        // gateway, unless the configuration names a Microsoft.AspNetCore category itself.
        if (!options.Rules.Any(r => r.CategoryName is { } c && c.StartsWith(AspNetCore, StringComparison.OrdinalIgnoreCase) && !c.Equals(Category, StringComparison.OrdinalIgnoreCase)))
        {
            options.Rules.Add(new LoggerFilterRule(null, AspNetCore, LogLevel.Warning, null));
        }
    }
}
