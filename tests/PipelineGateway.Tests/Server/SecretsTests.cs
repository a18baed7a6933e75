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
/// No fragment of a secret leaves the gateway. Provider keys of several shapes (<c>gsk_</c>, <c>xai-</c>,
/// <c>sk-ant-</c>, <c>AIza</c>, one with no known shape) sit in front of a hostile upstream that echoes them back in
/// every fault class it has — whole, masked (<c>****</c>, <c>…</c>), across the 500-character cut, in HTML and plain
/// text, in a stream before and after content, in a broken 200. Every answer (chat, SSE, <c>/v1/messages</c>, both
/// streamed), both metrics pages and every log line at every level are searched for any six characters of any key,
/// and for a key's first eight and last four.
/// </summary>
public sealed class SecretsTests : IAsyncLifetime
{
    private const string GatewayKey = "gw-Pq7Rw2Tz9Vb4Xn6Yc8Md";
    private const string AdminKey = "gw-admin-Hs3Jk5Lf7Gd9Qa2We";

    /// <summary>Provider type, the key (each ends in four letters found nowhere else), and the env variable holding it.</summary>
    private static readonly (string Type, string Key, string Env)[] Keys =
    [
        ("OpenAICompatible", "gsk_Zq81LmNoPqRsTuVwKqZv", "PGW_TEST_SECRET_GROQ"),
        ("OpenAICompatible", "xai-Qm4kPz9RtYwBv2NcRtPw", "PGW_TEST_SECRET_XAI"),
        ("Anthropic", "sk-ant-api03-Hj7Kd2Lm9Np4MnJx", "PGW_TEST_SECRET_ANTHROPIC"),
        ("OpenAICompatible", "AIzaSyBq3Wd5Fg7Hj9KlHgLs", "PGW_TEST_SECRET_GEMINI"),
        ("OpenAICompatible", "plainsecret4f9cXoBeTuRk", "PGW_TEST_SECRET_PLAIN"),
    ];

    private readonly CapturingLoggerProvider _logs = new();
    private ScriptedUpstream _upstream = null!;
    private WebApplication _app = null!;
    private Uri _base = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static IEnumerable<(string Model, int Key, string Fault)> Models() =>
        ScriptedUpstream.Faults.SelectMany((fault, f) => Keys.Select((_, k) => ($"m-{f}-{k}", k, fault)));

    public async ValueTask InitializeAsync()
    {
        _upstream = await ScriptedUpstream.StartAsync(Ct);
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:Server:Keys:0:Id"] = "team",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(GatewayKey),
            ["Gateway:Server:Keys:1:Id"] = "ops",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(AdminKey),
            ["Gateway:Server:Keys:1:Admin"] = "true",
            ["Gateway:Pipeline:RetryBaseDelay"] = "00:00:00.001",
            ["Gateway:Pipeline:RetryMaxDelay"] = "00:00:00.002",
            ["Gateway:Health:RejectedCooldown"] = "00:00:00.001",
        };
        var p = 0;
        foreach (var (model, k, fault) in Models())
        {
            var (type, key, env) = Keys[k];
            Environment.SetEnvironmentVariable(env, key);
            settings[$"Gateway:Providers:{p}:Name"] = "p-" + model;
            settings[$"Gateway:Providers:{p}:Type"] = type;
            settings[$"Gateway:Providers:{p}:BaseUrl"] = new Uri(_upstream.BaseAddress, "v1").ToString();
            settings[$"Gateway:Providers:{p}:ApiKeyEnvironmentVariable"] = env;
            settings[$"Gateway:Providers:{p}:Headers:x-fault"] = fault;
            settings[$"Gateway:Models:{p}:Name"] = model;
            settings[$"Gateway:Models:{p}:Deployments:0:Provider"] = "p-" + model;
            settings[$"Gateway:Models:{p}:Deployments:0:Model"] = "upstream-model";
            p++;
        }

        _app = GatewayServer.Build(new ConfigurationBuilder().AddInMemoryCollection(settings).Build(), "http://127.0.0.1:0",
            l => l.AddProvider(_logs).SetMinimumLevel(LogLevel.Trace));
        _base = await GatewayServer.StartAsync(_app, Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        await _upstream.DisposeAsync();
    }

    [Fact]
    public async Task No_fragment_of_any_key_reaches_a_body_a_stream_a_metrics_page_or_a_log_line()
    {
        using var http = new HttpClient { BaseAddress = _base, Timeout = TimeSpan.FromSeconds(30) };
        var seen = new List<(string What, string Text)>();
        foreach (var (model, _, fault) in Models())
        {
            foreach (var stream in new[] { false, true })
            {
                seen.Add(($"{fault} chat stream={stream}", await PostAsync(http, "v1/chat/completions", GatewayKey,
                    $$"""{"model":"{{model}}","stream":{{(stream ? "true" : "false")}},"messages":[{"role":"user","content":"hi"}]}""")));
                seen.Add(($"{fault} messages stream={stream}", await PostAsync(http, "v1/messages", GatewayKey,
                    $$"""{"model":"{{model}}","max_tokens":16,"stream":{{(stream ? "true" : "false")}},"messages":[{"role":"user","content":"hi"}]}""")));
            }
        }

        // The gateway's own keys: a wrong one close to a real one, sent in both headers, is never echoed either.
        seen.Add(("wrong gateway key", await PostAsync(http, "v1/chat/completions", GatewayKey[..^1] + "Q", """{"model":"m-0-0","messages":[{"role":"user","content":"hi"}]}""")));
        seen.Add(("metrics JSON", await GetAsync(http, "v1/gateway/metrics")));
        seen.Add(("Prometheus", await GetAsync(http, "metrics")));
        seen.Add(("logs", _logs.All));

        seen.Where(s => s.What != "logs").Should().OnlyContain(s => s.Text.Length > 0, "every fault got an answer");
        if (Environment.GetEnvironmentVariable("PGW_TEST_DUMP") is { } dump)
        {
            File.WriteAllText(dump, string.Join("\n----\n", seen.Select(s => $"{s.What}\n{s.Text}")));
        }

        seen.First(s => s.What == "echo-400 chat stream=False").Text.Should().StartWith("400 ").And.Contain("[redacted]", "the upstream's 400 reaches the caller, its message redacted");
        seen.First(s => s.What == "stream-error-mid messages stream=True").Text.Should().Contain("Hello").And.Contain("event: error", "the stream failed after content");
        seen.Single(s => s.What == "metrics JSON").Text.Should().Contain("p-m-0-0", "the metrics list the providers that failed");
        _logs.Lines.Should().Contain(l => l.Contains("answered 401", StringComparison.Ordinal), "the upstream errors were logged, so the logs were searched for something");

        var leaks = (
            from s in seen
            from secret in Keys.Select(k => k.Key).Append(GatewayKey).Append(AdminKey)
            from fragment in Fragments(secret)
            where s.Text.Contains(fragment, StringComparison.Ordinal)
            select $"{s.What}: '{fragment}' of {secret[..3]}… in …{Around(s.Text, fragment)}…").Distinct().ToList();
        leaks.Should().BeEmpty(string.Join("\n", leaks.Take(20)));
    }

    [Fact]
    public async Task The_Redis_password_never_reaches_a_log_line_an_answer_or_a_metrics_page()
    {
        const string password = "rd-pass-Vx8Kq2Lm5NzWb";
        var redis = RedisServer.Shared();
        var logs = new CapturingLoggerProvider();
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Providers:0:Type"] = "Simulated",
            ["Gateway:Models:0:Name"] = "gpt-4o-mini",
            ["Gateway:Models:0:Deployments:0:Provider"] = "sim",
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Server:Keys:0:Id"] = "ops",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(AdminKey),
            ["Gateway:Server:Keys:0:Admin"] = "true",

            // The shared test Redis has no password, so its AUTH fails; the gateway runs on without Redis (fail-open).
            ["Gateway:Redis:Configuration"] = $"{redis},password={password}",
        }).Build();
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", l => l.AddProvider(logs).SetMinimumLevel(LogLevel.Trace));
        var root = await GatewayServer.StartAsync(app, Ct);
        using var http = new HttpClient { BaseAddress = root };

        var answer = await PostAsync(http, "v1/chat/completions", AdminKey, """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}""");
        answer.Should().StartWith("200 ", "Redis failing open does not fail requests");
        var texts = new[] { answer, await GetAsync(http, "v1/gateway/metrics"), await GetAsync(http, "metrics"), logs.All };
        await app.StopAsync(Ct);

        texts.Should().OnlyContain(t => Fragments(password).All(f => !t.Contains(f, StringComparison.Ordinal)));
    }

    /// <summary>Every six characters of the secret, its first eight and its last four.</summary>
    private static IEnumerable<string> Fragments(string secret) =>
        Enumerable.Range(0, secret.Length - 5).Select(i => secret.Substring(i, 6))
            .Where(f => !f.StartsWith("sk-ant", StringComparison.Ordinal) && !f.StartsWith("gw-adm", StringComparison.Ordinal)) // a key's public prefix is not a fragment of it
            .Append(secret[..8]).Append(secret[^4..]).Distinct();

    private static string Around(string text, string fragment)
    {
        var at = text.IndexOf(fragment, StringComparison.Ordinal);
        return text.Substring(Math.Max(0, at - 60), Math.Min(text.Length - Math.Max(0, at - 60), 120 + fragment.Length));
    }

    private static async Task<string> PostAsync(HttpClient http, string path, string key, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        using var response = await http.SendAsync(request, Ct);
        return $"{(int)response.StatusCode} {response.Headers} {await response.Content.ReadAsStringAsync(Ct)}";
    }

    private static async Task<string> GetAsync(HttpClient http, string path)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
        using var response = await http.SendAsync(request, Ct);
        return await response.Content.ReadAsStringAsync(Ct);
    }
}
