using System.Net;
using System.Net.Http.Headers;
using System.Text;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Gateway keys follow a reloaded configuration while the gateway runs (a real server over HTTP; the configuration's
/// source replaced and its reload raised, as a changed file or SIGHUP does in <c>pgw serve</c>): a key added serves at
/// once, one removed is a 401, a key's models and admin right change; a reload with an invalid key, with no key at all
/// (a half-written file reads so) or that cannot be bound keeps the running keys and says why, naming no hash.
/// </summary>
public sealed class KeyReloadTests : IAsyncLifetime
{
    private const string First = "sk-gw-reload-first-0123456789";
    private const string Second = "sk-gw-reload-second-0123456789";
    private readonly ReloadableSource _source = new();
    private readonly CapturingLoggerProvider _logs = new();
    private WebApplication _app = null!;
    private HttpClient _http = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Dictionary<string, string?> Settings(params (string Id, string Key, bool Admin, string[] Models)[] keys)
    {
        var settings = TestServerConfig.SimulatedSettings(new()
        {
            ["Gateway:Models:1:Name"] = "other",
            ["Gateway:Models:1:Deployments:0:Provider"] = "sim",
            ["Gateway:Server:BatchDirectory"] = string.Empty,
        });
        for (var i = 0; i < keys.Length; i++)
        {
            settings[$"Gateway:Server:Keys:{i}:Id"] = keys[i].Id;
            settings[$"Gateway:Server:Keys:{i}:Sha256"] = keys[i].Key.StartsWith("sk-", StringComparison.Ordinal) ? GatewayKeys.Hash(keys[i].Key) : keys[i].Key;
            settings[$"Gateway:Server:Keys:{i}:Admin"] = keys[i].Admin ? "true" : "false";
            for (var m = 0; m < keys[i].Models.Length; m++)
            {
                settings[$"Gateway:Server:Keys:{i}:AllowedModels:{m}"] = keys[i].Models[m];
            }
        }

        return settings;
    }

    public async ValueTask InitializeAsync()
    {
        _source.Provider.Replace(Settings(("first", First, true, [])));
        var configuration = new ConfigurationBuilder().Add(_source).Build();
        _app = GatewayServer.Build(configuration, "http://127.0.0.1:0", logging => logging.AddProvider(_logs).SetMinimumLevel(LogLevel.Information));
        _http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(_app, Ct) };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.StopAsync(CancellationToken.None);
        await _app.DisposeAsync();
    }

    private async Task<HttpStatusCode> ChatAsync(string key, string model = "gpt-4o-mini")
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent($$"""{"model":"{{model}}","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        using var response = await _http.SendAsync(request, Ct);
        return response.StatusCode;
    }

    private async Task<HttpStatusCode> MetricsAsync(string key)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, "v1/gateway/metrics");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        using var response = await _http.SendAsync(request, Ct);
        return response.StatusCode;
    }

    private string[] Logged(string text) => [.. _logs.Lines.Where(l => l.Contains(text, StringComparison.Ordinal))];

    [Fact]
    public async Task A_key_added_serves_at_once_one_removed_is_refused_and_a_keys_models_and_admin_right_follow()
    {
        (await ChatAsync(First)).Should().Be(HttpStatusCode.OK);
        (await ChatAsync(Second)).Should().Be(HttpStatusCode.Unauthorized);

        _source.Provider.Replace(Settings(("first", First, false, ["other"]), ("second", Second, true, [])));
        (await ChatAsync(Second)).Should().Be(HttpStatusCode.OK, "added");
        (await MetricsAsync(Second)).Should().Be(HttpStatusCode.OK);
        (await ChatAsync(First, "gpt-4o-mini")).Should().Be(HttpStatusCode.Forbidden, "its models are now 'other' only");
        (await ChatAsync(First, "other")).Should().Be(HttpStatusCode.OK);
        (await MetricsAsync(First)).Should().Be(HttpStatusCode.Forbidden, "its admin right was taken away");
        Logged("Gateway keys reloaded").Should().ContainSingle().Which.Should().Contain("2 keys").And.Contain("added: second").And.Contain("removed: none").And.Contain("changed: first");

        _source.Provider.Replace(Settings(("second", Second, true, [])));
        (await ChatAsync(First)).Should().Be(HttpStatusCode.Unauthorized, "removed");
        (await ChatAsync(Second)).Should().Be(HttpStatusCode.OK);
        Logged("Gateway keys reloaded").Should().HaveCount(2).And.Contain(l => l.Contains("removed: first", StringComparison.Ordinal));

        _source.Provider.Replace(Settings(("second", Second, true, [])));
        Logged("Gateway keys reloaded").Should().HaveCount(2, "the same keys again change nothing and say nothing");
        _logs.All.Should().NotContain(GatewayKeys.Hash(First)).And.NotContain(GatewayKeys.Hash(Second));
    }

    [Fact]
    public async Task A_reload_with_an_invalid_key_or_none_or_one_that_cannot_be_read_keeps_the_running_keys()
    {
        // An invalid hash (and a duplicated id): refused, the reason named by setting, the running key still served.
        _source.Provider.Replace(Settings(("first", First, true, []), ("second", "not-a-hash", false, [])));
        (await ChatAsync(First)).Should().Be(HttpStatusCode.OK);
        (await ChatAsync(Second)).Should().Be(HttpStatusCode.Unauthorized);
        Logged("not reloaded").Should().ContainSingle().Which.Should().Contain("Keys:1:Sha256");

        _source.Provider.Replace(Settings(("first", First, true, []), ("first", Second, false, [])));
        Logged("not reloaded").Should().HaveCount(2).And.Contain(l => l.Contains("used by more than one key", StringComparison.Ordinal));

        // No keys at all (a file half written reads so): the gateway would serve anyone — refused.
        _source.Provider.Replace(Settings());
        (await ChatAsync("sk-anything-at-all-0123456789")).Should().Be(HttpStatusCode.Unauthorized);
        (await ChatAsync(First)).Should().Be(HttpStatusCode.OK);
        Logged("not reloaded").Should().HaveCount(3).And.Contain(l => l.Contains("no keys", StringComparison.Ordinal));

        // A value the binder cannot read: logged, nothing changed.
        var unreadable = Settings(("second", Second, true, []));
        unreadable["Gateway:Server:Keys:0:Admin"] = "maybe";
        _source.Provider.Replace(unreadable);
        (await ChatAsync(First)).Should().Be(HttpStatusCode.OK);
        (await ChatAsync(Second)).Should().Be(HttpStatusCode.Unauthorized);
        Logged("could not be read").Should().ContainSingle(_logs.All);
        Logged("Gateway keys reloaded").Should().BeEmpty();
    }

    /// <summary>
    /// At start too: the binder drops a key it cannot read (an <c>Admin</c> that is not true or false) without a word — the
    /// gateway started without it, its holder answered 401. Now start-up stops naming the key.
    /// </summary>
    [Fact]
    public void A_key_that_cannot_be_read_stops_start_up_naming_it()
    {
        var settings = Settings(("first", First, true, []), ("second", Second, false, []));
        settings["Gateway:Server:Keys:1:Admin"] = "maybe";
        var build = () => GatewayServer.Build(new ConfigurationBuilder().AddInMemoryCollection(settings).Build(), "http://127.0.0.1:0", _ => { });

        build.Should().Throw<Microsoft.Extensions.Options.OptionsValidationException>().Which.Message.Should().Contain("Gateway:Server:Keys:1").And.Contain("Admin");
    }

    /// <summary>A configuration source whose settings a test replaces, raising the reload a changed file raises.</summary>
    private sealed class ReloadableSource : IConfigurationSource
    {
        public ReloadableProvider Provider { get; } = new();

        public IConfigurationProvider Build(IConfigurationBuilder builder) => Provider;
    }

    private sealed class ReloadableProvider : ConfigurationProvider
    {
        public void Replace(Dictionary<string, string?> settings)
        {
            Data = new Dictionary<string, string?>(settings, StringComparer.OrdinalIgnoreCase);
            OnReload();
        }
    }
}
