using System.Net.Http.Headers;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// The Batch API tests' gateways: a temporary directory for their batch directories and every gateway started in it,
/// stopped and deleted together; with a client carrying a key and a JSON reader.
/// </summary>
public sealed class BatchGateways : IAsyncDisposable
{
    private readonly BatchFiles _dir = new();
    private readonly List<WebApplication> _apps = [];

    public string Dir => _dir.Dir;

    /// <summary>The gateways started so far, in order.</summary>
    public IReadOnlyList<WebApplication> Apps => _apps;

    /// <summary>Keeps <paramref name="app"/> to stop and dispose with the others.</summary>
    public WebApplication Add(WebApplication app)
    {
        _apps.Add(app);
        return app;
    }

    /// <summary>A client of the gateway at <paramref name="root"/> sending <paramref name="key"/> as a bearer token.</summary>
    public static HttpClient Client(Uri root, string key)
    {
        var http = new HttpClient { BaseAddress = root };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return http;
    }

    public static async Task<JsonElement> JsonAsync(HttpResponseMessage response, CancellationToken cancellationToken) =>
        JsonDocument.Parse(await response.Content.ReadAsStringAsync(cancellationToken)).RootElement.Clone();

    public async ValueTask DisposeAsync()
    {
        foreach (var app in _apps)
        {
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }

        _dir.Dispose();
    }
}
