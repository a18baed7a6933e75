using System.Net;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Per end-user budgets over HTTP (<c>Gateway:Budgets</c> with <c>Scope: User</c>): the user a request names — the chat
/// route's <c>user</c>, the messages route's <c>metadata.user_id</c> — is one account whichever route it comes by; a
/// spent user's answer is the 429 <c>budget_exceeded</c> in the route's error shape, telling the SDKs not to retry; the
/// dashboard lists the accounts, a user's name redacted when it is key-shaped.
/// </summary>
public sealed class UserBudgetTests : IAsyncLifetime
{
    private WebApplication _app = null!;
    private HttpClient _http = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        _app = GatewayServer.Build(TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Models:0:Deployments:0:InputPricePerMillion"] = "1000000", // $1 a token
            ["Gateway:Models:0:Deployments:0:OutputPricePerMillion"] = "1000000",
            ["Gateway:Budgets:0:Name"] = "per user",
            ["Gateway:Budgets:0:Scope"] = "User",
            ["Gateway:Budgets:0:Period"] = "Day",
            ["Gateway:Budgets:0:LimitUsd"] = "100",
        }), "http://127.0.0.1:0", _ => { });
        _http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(_app, Ct) };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private Task<HttpResponseMessage> Chat(string? user) => _http.PostAsync("v1/chat/completions", new StringContent(
        JsonSerializer.Serialize(new { model = "gpt-4o-mini", max_tokens = 8, user, messages = new[] { new { role = "user", content = "Hello there" } } }), Encoding.UTF8, "application/json"), Ct);

    private Task<HttpResponseMessage> Messages(string user)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/messages")
        {
            Content = new StringContent(JsonSerializer.Serialize(new { model = "gpt-4o-mini", max_tokens = 8, metadata = new { user_id = user }, messages = new[] { new { role = "user", content = "Hello there" } } }), Encoding.UTF8, "application/json"),
        };
        request.Headers.Add("anthropic-version", "2023-06-01");
        return _http.SendAsync(request, Ct);
    }

    private async Task<JsonElement> Standing(string user)
    {
        var json = JsonDocument.Parse(await _http.GetStringAsync($"v1/gateway/budgets?user={Uri.EscapeDataString(user)}", Ct)).RootElement;
        return json.GetProperty("data").EnumerateArray().Should().ContainSingle("the one budget a request naming a user is under").Subject;
    }

    [Fact]
    public async Task A_spent_user_is_refused_on_either_route_and_other_users_and_unnamed_requests_are_not()
    {
        const string keyShaped = "sk-proj-UserNameThatLooksLikeAKey1234567890";
        var served = 0;
        HttpResponseMessage? refused = null;
        for (var i = 0; i < 100 && refused is null; i++)
        {
            var response = i % 2 == 0 ? await Chat("alice") : await Messages("alice");
            if (response.StatusCode == HttpStatusCode.OK)
            {
                served++;
            }
            else
            {
                refused = response;
            }
        }

        served.Should().BeInRange(2, 20, "alice spends her $100 a few dollars at a time, by both routes");
        refused!.StatusCode.Should().Be(HttpStatusCode.TooManyRequests);
        refused.Headers.GetValues("x-should-retry").Should().Equal("false");
        var error = JsonDocument.Parse(await refused.Content.ReadAsStringAsync(Ct)).RootElement;
        var route = served % 2 == 0 ? "chat" : "messages";
        if (route == "chat")
        {
            error.GetProperty("error").GetProperty("code").GetString().Should().Be("budget_exceeded");
        }
        else
        {
            error.GetProperty("type").GetString().Should().Be("error", "the messages route's error shape");
        }

        error.ToString().Should().Contain("per user");
        ((await Chat("alice")).StatusCode, (await Messages("alice")).StatusCode).Should().Be((HttpStatusCode.TooManyRequests, HttpStatusCode.TooManyRequests));

        (await Chat("bob")).StatusCode.Should().Be(HttpStatusCode.OK);
        (await Chat(keyShaped)).StatusCode.Should().Be(HttpStatusCode.OK);
        for (var i = 0; i < served + 2; i++)
        {
            (await Chat(null)).StatusCode.Should().Be(HttpStatusCode.OK, "a request that names no user is under no per-user budget");
        }

        // Where each stands (admin surface): alice has less left than a request may cost; asking of another makes no account.
        var alice = await Standing("alice");
        alice.GetProperty("budget").GetString().Should().Be("per user");
        (alice.GetProperty("scope").GetString(), alice.GetProperty("period").GetString(), alice.GetProperty("limit_usd").GetDecimal()).Should().Be(("user", "day", 100m));
        var (spent, reserved, remaining) = (alice.GetProperty("spent_usd").GetDecimal(), alice.GetProperty("reserved_usd").GetDecimal(), alice.GetProperty("remaining_usd").GetDecimal());
        (spent, reserved).Should().Match<(decimal Spent, decimal Reserved)>(t => t.Spent > 90m && t.Spent <= 100m && t.Reserved == 0m);
        remaining.Should().Be(100m - spent);
        alice.GetProperty("resets_at").GetString().Should().Be(DateTime.UtcNow.Date.AddDays(1).ToString("yyyy-MM-dd'T'00:00:00'Z'", System.Globalization.CultureInfo.InvariantCulture));
        (await Standing("nobody-yet")).GetProperty("spent_usd").GetDecimal().Should().Be(0);

        // The dashboard's accounts: each user's, the key-shaped name redacted.
        using var events = await _http.GetAsync("dashboard/events", HttpCompletionOption.ResponseHeadersRead, Ct);
        using var reader = new StreamReader(await events.Content.ReadAsStreamAsync(Ct));
        string? line;
        while ((line = await reader.ReadLineAsync(Ct)) is not null && !line.StartsWith("data: ", StringComparison.Ordinal))
        {
        }

        var budgets = JsonDocument.Parse(line![6..]).RootElement.GetProperty("budgets").EnumerateArray().Select(b => b.GetProperty("budget").GetString()!).ToList();
        budgets.Should().HaveCount(3).And.Contain(["per user:alice", "per user:bob"]);
        budgets.Should().NotContain(b => b.Contains("UserNameThatLooksLikeAKey", StringComparison.Ordinal), "a key-shaped name is redacted");
    }
}
