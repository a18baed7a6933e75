using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Configuration;

// The baseline every .NET gateway is measured against in the HTTP benchmark: a plain YARP reverse proxy (the
// best-kept .NET proxy), one route, one cluster, YARP's defaults — no parsing, routing logic, limits or metrics of
// ours. benchmarks/http/run.sh runs it beside the gateway with the same runtime settings.
//
// Usage: pgw-yarp --urls http://127.0.0.1:PORT --upstream http://127.0.0.1:UPSTREAM_PORT
var upstream = ArgValue(args, "--upstream") ?? throw new ArgumentException("--upstream URL is required");
var urls = ArgValue(args, "--urls") ?? "http://127.0.0.1:18183";

var builder = WebApplication.CreateSlimBuilder();
builder.Logging.ClearProviders();
builder.WebHost.UseUrls(urls);
if (args.Contains("--inline") || Environment.GetEnvironmentVariable("YARP_INLINE_SCHEDULING") == "1")
{
    builder.WebHost.UseSockets(o => o.UnsafePreferInlineScheduling = true);
}

builder.Services.AddReverseProxy().LoadFromMemory(
    [new RouteConfig { RouteId = "all", ClusterId = "upstream", Match = new RouteMatch { Path = "{**path}" } }],
    [new ClusterConfig { ClusterId = "upstream", Destinations = new Dictionary<string, DestinationConfig> { ["simulator"] = new() { Address = upstream } } }]);
var app = builder.Build();
app.MapReverseProxy();
await app.RunAsync();

static string? ArgValue(string[] args, string name)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}
