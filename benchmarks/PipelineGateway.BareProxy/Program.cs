using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

// The floor for any .NET HTTP gateway in the load benchmark: a bare forwarding proxy on the same stack the gateway
// uses (Kestrel in, SocketsHttpHandler out, server GC), that copies the request body to the upstream and the
// answer back byte for byte — no parsing, no validation, no routing, no limits, no metrics, no logging.
// Whatever it costs per request over the upstream alone, every gateway built on Kestrel and HttpClient costs too;
// benchmarks/http/run.sh measures it next to the gateway so the gateway's own cost is the difference.
//
// Usage: pgw-bareproxy --urls http://127.0.0.1:PORT --upstream http://127.0.0.1:UPSTREAM_PORT
var upstream = new Uri(ArgValue(args, "--upstream") ?? throw new ArgumentException("--upstream URL is required"));
var urls = ArgValue(args, "--urls") ?? "http://127.0.0.1:18182";

var builder = WebApplication.CreateSlimBuilder();
builder.Logging.ClearProviders();
builder.WebHost.UseUrls(urls);
var app = builder.Build();

using var http = new HttpClient(new SocketsHttpHandler
{
    MaxConnectionsPerServer = int.MaxValue, // as YARP: the slow-upstream mode keeps thousands of requests in flight
    UseCookies = false,
    AllowAutoRedirect = false,
    AutomaticDecompression = DecompressionMethods.None,
    PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
})
{ Timeout = Timeout.InfiniteTimeSpan };

app.MapPost("/v1/chat/completions", async (HttpContext ctx) =>
{
    using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(upstream, "/v1/chat/completions"))
    {
        Content = new StreamContent(ctx.Request.Body),
    };
    request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
    if (ctx.Request.ContentLength is { } length)
    {
        request.Content.Headers.ContentLength = length;
    }

    using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ctx.RequestAborted);
    ctx.Response.StatusCode = (int)response.StatusCode;
    ctx.Response.ContentType = response.Content.Headers.ContentType?.ToString();
    ctx.Response.ContentLength = response.Content.Headers.ContentLength;
    await response.Content.CopyToAsync(ctx.Response.Body, ctx.RequestAborted);
});

await app.RunAsync();

static string? ArgValue(string[] args, string name)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}
