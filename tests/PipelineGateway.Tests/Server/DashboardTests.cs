using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Playwright;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// /dashboard in a real browser: Chromium from Debian's packages (.ci/run installs it) driven by Playwright, against the
/// real server on 127.0.0.1 (port 0).
/// </summary>
public sealed class DashboardTests : IAsyncLifetime
{
    private const string Chromium = "/usr/bin/chromium";
    private readonly FakeProvider _provider = new("p");
    private volatile bool _failing;
    private WebApplication _app = null!;
    private HttpClient _http = null!;
    private Uri _base = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _provider.OnComplete = (r, _) => _failing ? throw FakeProvider.Fail503() : ValueTask.FromResult(FakeProvider.Answer(r.Model, "ok"));
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Health:ConsecutiveFailures"] = "2",
            ["Gateway:Health:Cooldown"] = "00:00:03",
            ["Gateway:Pipeline:MaxAttempts"] = "1",
        }).Build();
        _app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddPipelineGateway().AddProvider(_provider).AddModel("m", m => m.Deploy("p")));
        _base = await GatewayServer.StartAsync(_app, Ct);
        _http = new HttpClient { BaseAddress = _base };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.DisposeAsync();
    }

    private async Task Chat(int times)
    {
        for (var i = 0; i < times; i++)
        {
            using var body = new StringContent($$"""{"model":"m","messages":[{"role":"user","content":"hello {{i}}"}]}""", Encoding.UTF8, "application/json");
            await _http.PostAsync("v1/chat/completions", body, Ct);
        }
    }

    private static async Task<(IPlaywright, IBrowser)> BrowserAsync()
    {
        if (!File.Exists(Chromium))
        {
            Assert.Skip("Chromium is not installed (apt-get install -y chromium); .ci/run installs it.");
        }

        var playwright = await Playwright.CreateAsync();
        var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = Chromium, Headless = true, Args = ["--no-sandbox"] });
        return (playwright, browser);
    }

    [Fact]
    public async Task The_page_loads_without_console_errors_shows_the_metrics_and_a_fault_turns_the_deployment_open_and_back()
    {
        var (playwright, browser) = await BrowserAsync();
        using var _ = playwright;
        await using var __ = browser;
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1280, Height = 1000 } });
        var errors = new List<string>();
        page.Console += (_, m) =>
        {
            if (m.Type == "error")
            {
                errors.Add(m.Text);
            }
        };
        page.PageError += (_, e) => errors.Add(e);

        await page.GotoAsync(new Uri(_base, "dashboard").ToString());
        await Assertions.Expect(page.Locator("#status")).ToContainTextAsync("live");

        // Traffic through the gateway: the page's numbers are the metrics endpoint's.
        await Chat(7);
        var metrics = await _http.GetFromJsonAsync<JsonElement>("v1/gateway/metrics", Ct);
        var total = metrics.GetProperty("total_requests").GetInt64();
        total.Should().Be(7);
        await Assertions.Expect(page.Locator("#total-requests")).ToHaveTextAsync("7");
        await Assertions.Expect(page.Locator("#provider-p .requests")).ToHaveTextAsync("7");
        await Assertions.Expect(page.Locator("#provider-p .success-rate")).ToHaveTextAsync("100.0 %");
        var deployment = page.Locator("tr[id^='dep-'] .health");
        await Assertions.Expect(deployment).ToHaveTextAsync("closed");
        await Assertions.Expect(page.Locator("tr[id^='dep-'] .success-rate")).ToHaveTextAsync("100.0 %");

        // A scripted fault: two failures open the circuit; the badge turns open, the failures are listed.
        _failing = true;
        await Chat(2);
        await Assertions.Expect(deployment).ToHaveTextAsync("open");
        await Assertions.Expect(page.Locator("#failures")).ToContainTextAsync("m");
        await Assertions.Expect(page.Locator("tr[id^='dep-'] .success-rate")).ToHaveTextAsync("77.8 %"); // 7 of 9 attempts
        // The screenshot in docs/ is this one (PGW_UPDATE_SCREENSHOT=1 writes it there; otherwise a temporary file).
        var shot = Environment.GetEnvironmentVariable("PGW_UPDATE_SCREENSHOT") == "1" ? Path.Combine(RepoDocs(), "dashboard.png") : Path.Combine(Path.GetTempPath(), $"pgw-dashboard-{Guid.NewGuid():N}.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot, FullPage = true });
        new FileInfo(shot).Length.Should().BePositive();

        // Healthy again: after the cooldown a probe succeeds and the badge turns closed.
        _failing = false;
        await Wait.Until(() => ProbeAsync().GetAwaiter().GetResult(), "a request succeeds after the cooldown", 20_000);
        await Assertions.Expect(deployment).ToHaveTextAsync("closed", new LocatorAssertionsToHaveTextOptions { Timeout = 10_000 });

        errors.Should().BeEmpty("the page logs no console errors");
    }

    [Fact]
    public async Task On_a_phone_sized_screen_the_page_fits_its_width_in_one_column()
    {
        var (playwright, browser) = await BrowserAsync();
        using var _ = playwright;
        await using var __ = browser;
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 390, Height = 844 }, IsMobile = true, HasTouch = true });
        await Chat(3);
        await page.GotoAsync(new Uri(_base, "dashboard").ToString());
        await Assertions.Expect(page.Locator("#total-requests")).ToHaveTextAsync("3");

        var width = await page.EvaluateAsync<int>("() => document.documentElement.scrollWidth");
        width.Should().BeLessThanOrEqualTo(390, "nothing runs off the side of the screen (wide tables scroll inside their panel)");
        var columns = await page.EvaluateAsync<int>("() => new Set([...document.querySelectorAll('main > section:not([hidden])')].map(s => s.getBoundingClientRect().left)).size");
        columns.Should().Be(1, "the panels stack in one column");
    }

    private async Task<bool> ProbeAsync()
    {
        using var body = new StringContent("""{"model":"m","messages":[{"role":"user","content":"probe"}]}""", Encoding.UTF8, "application/json");
        return (await _http.PostAsync("v1/chat/completions", body, Ct)).IsSuccessStatusCode;
    }

    /// <summary>docs/ of this repository: the screenshot goes there (docs/dashboard.png).</summary>
    private static string RepoDocs() => Path.GetFullPath(Path.Combine(Path.GetDirectoryName(PgwProcess.PgwDll)!, "..", "..", "..", "..", "..", "docs"));
}
