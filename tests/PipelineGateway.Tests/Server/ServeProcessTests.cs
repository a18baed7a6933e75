using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>The real <c>pgw serve</c> process: start-up on an OS-chosen port and the SIGTERM drain.</summary>
public sealed partial class ServeProcessTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // "fast" answers in 1.5 s, within the 3 s grace period; "slow" would take 10 minutes.
    private const string Config = """
        {
          "Gateway": {
            "Pipeline": { "DrainTimeout": "00:00:03" },
            "Providers": [
              { "Name": "fast", "Type": "Simulated", "Simulated": { "LatencyMs": 1500 } },
              { "Name": "slow", "Type": "Simulated", "Simulated": { "LatencyMs": 600000 } }
            ],
            "Models": [
              { "Name": "fast", "Deployments": [ { "Provider": "fast", "Model": "m" } ] },
              { "Name": "slow", "Deployments": [ { "Provider": "slow", "Model": "m" } ] }
            ]
          }
        }
        """;

    [Fact]
    public async Task SIGTERM_turns_readyz_not_ready_lets_in_flight_requests_finish_and_fails_the_rest_explicitly()
    {
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, Config, Ct);
        using var serve = PgwProcess.Start(files.Dir, "serve", "--urls", "http://127.0.0.1:0", "--config", config);
        await Wait.Until(() => Listening().IsMatch(serve.Stdout) || serve.Process.HasExited, "pgw serve is listening", 60_000);
        var address = new Uri(Listening().Match(serve.Stdout).Groups[1].Value);
        using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromMinutes(1) };
        (await http.GetAsync("readyz", Ct)).StatusCode.Should().Be(HttpStatusCode.OK);

        var fast = http.PostAsync("v1/chat/completions", Chat("fast"), Ct);
        var slow = http.PostAsync("v1/chat/completions", Chat("slow"), Ct);
        await Wait.Until(() => InFlight(http) == 2, "both requests are in flight");

        PgwProcess.Signal(serve.Process, "TERM");
        await Wait.Until(() => Ready(http) == HttpStatusCode.ServiceUnavailable, "/readyz turns not ready");
        var late = await http.PostAsync("v1/chat/completions", Chat("fast"), Ct);
        late.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable, "a request after SIGTERM is refused, not queued");

        var finished = await fast;
        finished.StatusCode.Should().Be(HttpStatusCode.OK, "an in-flight request finishes within the grace period");
        (await finished.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString().Should().NotBeEmpty();

        var cut = await slow;
        cut.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable, "what outlasts the grace period fails explicitly");
        (await cut.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("error").GetProperty("code").GetString().Should().Be("unavailable");

        (await serve.ExitCodeAsync(30_000)).Should().Be(0, serve.Stderr);
    }

    /// <summary>
    /// Keys follow the configuration file: replaced as a deploy replaces it (written beside it, then moved over it, as a
    /// mounted ConfigMap changes) and SIGHUP sent, the new key serves and the old one is refused, without a restart; a
    /// file half written keeps the running keys and the process (SIGHUP ended it by default).
    /// </summary>
    [Fact]
    public async Task SIGHUP_applies_the_config_files_keys_and_a_half_written_file_keeps_the_running_ones()
    {
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, KeyedConfig("first", First), Ct);
        using var served = await ServeAsync(files.Dir, "--config", config, "--no-log");
        var serve = served.Process;
        HttpStatusCode Status(string key) => served.ChatStatus(key);

        Status(First).Should().Be(HttpStatusCode.OK);
        Status(Second).Should().Be(HttpStatusCode.Unauthorized);

        var next = config + ".next";
        await File.WriteAllTextAsync(next, KeyedConfig("second", Second), Ct);
        File.Move(next, config, overwrite: true);
        PgwProcess.Signal(serve.Process, "HUP");
        // Waited for in the log, not by asking with the new key until it serves: a key refused again and again is
        // throttled (FrontDoor), and a full run once timed out so, the reload done but the key still held back.
        await Wait.Until(() => serve.Stdout.Contains("Gateway keys reloaded: 1 keys (added: second; removed: first", StringComparison.Ordinal), "the reload is logged", 30_000);
        Status(Second).Should().Be(HttpStatusCode.OK, "the new key serves");
        Status(First).Should().Be(HttpStatusCode.Unauthorized, "the old key is gone");

        await File.WriteAllTextAsync(next, """{ "Gateway": { "Server": { "Keys": [ """, Ct); // cut off mid-write
        File.Move(next, config, overwrite: true);
        PgwProcess.Signal(serve.Process, "HUP");
        await Wait.Until(() => serve.Stdout.Contains("Gateway keys not reloaded", StringComparison.Ordinal), "the refusal is logged");
        serve.Process.HasExited.Should().BeFalse("SIGHUP is the reload's signal, not the end");
        Status(Second).Should().Be(HttpStatusCode.OK, "the running keys kept");

        PgwProcess.Signal(serve.Process, "TERM");
        (await serve.ExitCodeAsync(30_000)).Should().Be(0, serve.Stderr);
    }

    /// <summary>
    /// Without a signal, a Kubernetes ConfigMap's update — its <c>..data</c> link swapped to a new directory whose file
    /// is older than the one it replaces — is picked up: the file is polled by its own timestamp, through the links. And
    /// the process holds no inotify watch: the default watcher watched the file's whole directory tree, so the request
    /// log kept below it (as here) woke it for every page SQLite wrote, and it needed an inotify instance.
    /// </summary>
    [Fact]
    public async Task A_ConfigMaps_swapped_link_is_picked_up_without_a_signal_and_nothing_watches_the_directory()
    {
        using var files = new BatchFiles();
        var log = Path.Combine(files.Dir, "pgw-data", "gateway.db");
        Directory.CreateDirectory(Path.Combine(files.Dir, "..v1"));
        Directory.CreateDirectory(Path.Combine(files.Dir, "..v2"));
        await File.WriteAllTextAsync(Path.Combine(files.Dir, "..v1", "gateway.json"), KeyedConfig("first", First, log), Ct);
        await File.WriteAllTextAsync(Path.Combine(files.Dir, "..v2", "gateway.json"), KeyedConfig("second", Second, log), Ct);
        File.SetLastWriteTimeUtc(Path.Combine(files.Dir, "..v2", "gateway.json"), DateTime.UtcNow.AddDays(-30)); // older than the file it replaces
        Directory.CreateSymbolicLink(Path.Combine(files.Dir, "..data"), "..v1");
        var config = Path.Combine(files.Dir, "gateway.json");
        File.CreateSymbolicLink(config, Path.Combine("..data", "gateway.json"));
        using var served = await ServeAsync(files.Dir, "--config", config);
        var serve = served.Process;
        HttpStatusCode Status(string key) => served.ChatStatus(key);

        Status(First).Should().Be(HttpStatusCode.OK);
        File.Exists(log).Should().BeTrue("the request log is kept below the configuration's directory");
        if (OperatingSystem.IsLinux())
        {
            Directory.GetFiles($"/proc/{serve.Process.Id}/fd").Count(fd => new FileInfo(fd).LinkTarget?.Contains("inotify", StringComparison.Ordinal) == true)
                .Should().Be(0, "the configuration file is polled, not watched with inotify");
        }

        // The ConfigMap's update: a new link made beside ..data, then renamed over it (one atomic step, as the kubelet does).
        Directory.CreateSymbolicLink(Path.Combine(files.Dir, "..data_tmp"), "..v2");
        Rename(Path.Combine(files.Dir, "..data_tmp"), Path.Combine(files.Dir, "..data")).Should().Be(0, "rename(2) replaces the link (File.Move follows it to the directory)");
        // Waited for in the log, not by asking with the new key: a key refused again and again is throttled (FrontDoor).
        await Wait.Until(() => serve.Stdout.Contains("Gateway keys reloaded: 1 keys (added: second; removed: first", StringComparison.Ordinal), "the swap is picked up, no signal sent", 30_000);
        Status(Second).Should().Be(HttpStatusCode.OK, "the new key serves");
        Status(First).Should().Be(HttpStatusCode.Unauthorized, "the old key is gone");

        PgwProcess.Signal(serve.Process, "TERM");
        (await serve.ExitCodeAsync(30_000)).Should().Be(0, serve.Stderr);
    }

    /// <summary>A configuration with one key (its hash), a simulated model <c>m</c>, and the request log at <paramref name="log"/> (null: the default).</summary>
    private static string KeyedConfig(string id, string key, string? log = null) => $$"""
        {
          "Gateway": {
            "Providers": [ { "Name": "sim", "Type": "Simulated", "Simulated": { "LatencyMs": 0 } } ],
            "Models": [ { "Name": "m", "Deployments": [ { "Provider": "sim" } ] } ],
            {{(log is null ? string.Empty : $"\"RequestLog\": {{ \"Path\": \"{log}\" }},")}}
            "Server": { "Keys": [ { "Id": "{{id}}", "Sha256": "{{PipelineGateway.Server.GatewayKeys.Hash(key)}}" } ] }
          }
        }
        """;

    /// <summary>The two keys of the key tests (<see cref="KeyedConfig"/>).</summary>
    private const string First = "sk-gw-serve-first-0123456789";
    private const string Second = "sk-gw-serve-second-0123456789";

    /// <summary>The real <c>pgw serve</c> with <paramref name="args"/>, once it listens, and a client for it.</summary>
    private static async Task<Served> ServeAsync(string dir, params string[] args)
    {
        var serve = PgwProcess.Start(dir, ["serve", "--urls", "http://127.0.0.1:0", .. args]);
        await Wait.Until(() => Listening().IsMatch(serve.Stdout) || serve.Process.HasExited, "pgw serve is listening", 60_000);
        return new Served(serve, new HttpClient { BaseAddress = new Uri(Listening().Match(serve.Stdout).Groups[1].Value), Timeout = TimeSpan.FromMinutes(1) });
    }

    private sealed class Served(PgwProcess process, HttpClient http) : IDisposable
    {
        public PgwProcess Process { get; } = process;

        /// <summary>A chat request's status under <paramref name="key"/>.</summary>
        public HttpStatusCode ChatStatus(string key)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = Chat("m") };
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
            using var response = http.Send(request, Ct);
            return response.StatusCode;
        }

        public void Dispose()
        {
            http.Dispose();
            Process.Dispose();
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "rename", SetLastError = true)]
    private static extern int Rename(string oldPath, string newPath);

    [Fact]
    public async Task A_port_in_use_is_one_clear_line_and_exit_code_1()
    {
        using var taken = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, Config, Ct);

        using var serve = PgwProcess.Start(files.Dir, "serve", "--urls", $"http://127.0.0.1:{port}", "--config", config);

        (await serve.ExitCodeAsync(60_000)).Should().Be(1);
        var error = serve.Stderr.Trim();
        error.Should().Contain($"127.0.0.1:{port}").And.Contain("cannot listen");
        error.Split('\n').Should().ContainSingle("one line, no stack trace: " + error);
        serve.Stdout.Should().NotContain("   at ");
    }

    [Fact]
    public async Task An_invalid_config_is_one_clear_line_per_problem_and_exit_code_1()
    {
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, """{ "Gateway": { "Models": [ { "Name": "m", "Deployments": [ { "Provider": "missing" } ] } ] } }""", Ct);

        using var serve = PgwProcess.Start(files.Dir, "serve", "--urls", "http://127.0.0.1:0", "--config", config);

        (await serve.ExitCodeAsync(60_000)).Should().Be(1);
        serve.Stderr.Should().Contain("missing").And.NotContain("   at ");
        serve.Stdout.Should().NotContain("   at ");
    }

    [Fact]
    public async Task No_route_compiles_an_expression_tree_so_the_process_never_loads_System_Linq_Expressions()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "reads the process's mappings from /proc");
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, Config, Ct);
        using var serve = PgwProcess.Start(files.Dir, "serve", "--urls", "http://127.0.0.1:0", "--config", config, "--no-log");
        await Wait.Until(() => Listening().IsMatch(serve.Stdout) || serve.Process.HasExited, "pgw serve is listening", 60_000);
        using var http = new HttpClient { BaseAddress = new Uri(Listening().Match(serve.Stdout).Groups[1].Value) };

        // Every route once: the endpoints are built at the first request, and a route whose handler is not a
        // RequestDelegate gets an expression tree compiled by RequestDelegateFactory — resident for the process's life.
        foreach (var route in new[] { "healthz", "readyz", "v1/models", "v1/gateway/metrics", "metrics", "dashboard", "nowhere" })
        {
            using var answer = await http.GetAsync(route, Ct);
            answer.StatusCode.Should().NotBe(HttpStatusCode.InternalServerError, route);
        }

        (await http.PostAsync("v1/chat/completions", Chat("fast"), Ct)).StatusCode.Should().Be(HttpStatusCode.OK);
        var maps = await File.ReadAllTextAsync($"/proc/{serve.Process.Id}/maps", Ct);
        maps.Should().Contain("System.Private.CoreLib.dll", "the mappings were read").And.NotContain("System.Linq.Expressions.dll");
    }

    /// <summary>
    /// The GC settings pgw ships (its runtime configuration: server GC with DATAS, gen0 budget at most 32 MiB — the
    /// peak-memory cap measured in docs/benchmarks.md) are the ones its GC runs with, and the line that says so reads
    /// the runtime, not the configuration file: an operator's variables change it, a misspelt name (the runtime reads
    /// them exactly) changes nothing.
    /// </summary>
    [Fact]
    public async Task The_start_line_says_the_GC_settings_the_runtime_runs_with()
    {
        using var files = new BatchFiles();
        var config = Path.Combine(files.Dir, "gateway.json");
        await File.WriteAllTextAsync(config, Config, Ct);
        string[] gcVariables = ["DOTNET_gcServer", "DOTNET_GCGen0MaxBudget", "DOTNET_GCgen0MaxBudget", "DOTNET_GCHeapHardLimit", "DOTNET_GCHeapHardLimitPercent", "DOTNET_GCConserveMemory", "DOTNET_GCDynamicAdaptationMode"];
        var shipped = gcVariables.ToDictionary(v => v, _ => (string?)null); // whatever the test host's environment has: not passed on
        var changed = new Dictionary<string, string?>(shipped)
        {
            ["DOTNET_gcServer"] = "0",
            ["DOTNET_GCGen0MaxBudget"] = "0x1000000",
            ["DOTNET_GCHeapHardLimit"] = "0xC800000",
            ["DOTNET_GCConserveMemory"] = "3",
        };
        var misspelt = new Dictionary<string, string?>(shipped) { ["DOTNET_GCgen0MaxBudget"] = "0x1000000" };

        (await RuntimeLineAsync(shipped)).Should().Be("pgw serve: runtime: server GC, DATAS, gen0 budget at most 32 MiB.");
        (await RuntimeLineAsync(changed)).Should().Be("pgw serve: runtime: workstation GC, gen0 budget at most 16 MiB, heap limit 200 MiB, conserve memory 3.");
        (await RuntimeLineAsync(misspelt)).Should().Be("pgw serve: runtime: server GC, DATAS, gen0 budget at most 32 MiB.");

        async Task<string> RuntimeLineAsync(Dictionary<string, string?> environment)
        {
            using var serve = PgwProcess.Start(files.Dir, environment, "serve", "--urls", "http://127.0.0.1:0", "--config", config, "--no-log");
            await Wait.Until(() => serve.Stdout.Contains("pgw serve: runtime:", StringComparison.Ordinal) || serve.Process.HasExited, "pgw serve says its runtime settings", 60_000);
            PgwProcess.Signal(serve.Process, "TERM");
            (await serve.ExitCodeAsync(30_000)).Should().Be(0, serve.Stderr);
            return serve.Stdout.Split('\n').Single(l => l.StartsWith("pgw serve: runtime:", StringComparison.Ordinal)).TrimEnd('\r');
        }
    }

    private static StringContent Chat(string model) =>
        new($$"""{"model":"{{model}}","messages":[{"role":"user","content":"hi"}]}""", System.Text.Encoding.UTF8, "application/json");

    private static long InFlight(HttpClient http)
    {
        var metrics = http.GetFromJsonAsync<JsonElement>("v1/gateway/metrics").GetAwaiter().GetResult();
        return metrics.GetProperty("in_flight").GetInt64();
    }

    private static HttpStatusCode? Ready(HttpClient http)
    {
        try
        {
            return http.GetAsync("readyz").GetAwaiter().GetResult().StatusCode;
        }
        catch (HttpRequestException)
        {
            return null;
        }
    }

    [GeneratedRegex(@"listening on (http://127\.0\.0\.1:\d+/)")]
    private static partial Regex Listening();
}
