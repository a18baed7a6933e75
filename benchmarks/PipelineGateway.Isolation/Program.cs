using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;

// The isolation load run (issue: one slow provider or one noisy tenant never stalls the rest). Against a gateway URL:
//   flood  - C connections, closed loop, on the slow model with the flood key, for S seconds; a refused request's
//            connection waits its Retry-After before sending again (--honor-retry-after false: sends again at once);
//   probe  - R requests a second, open loop, on the fast model (its own key);
//   modest - M requests a second, open loop, on the slow model with a second key;
//   after  - once the flood stops, one request on the slow model with the modest key and one with the flood key.
// The first --warmup seconds (2) are left out of the figures (the connections open, the first refusals are compiled),
// and reported on their own line. Prints what each saw: status counts, refusal latency and Retry-After, accepted latency, probe latency, and the
// checks against the targets. Usage:
//   pgw-isolation URL --slow-model M --fast-model M --flood-key K --modest-key K --probe-key K
//                 [--connections 800] [--seconds 30] [--probe-rate 10] [--modest-rate 2] [--service-ms 1500] [--max-queue-wait-ms 10000] [--honor-retry-after true]
var o = Options.Parse(args);
var url = new Uri(o.Url.TrimEnd('/') + "/v1/chat/completions");
using var handler = new SocketsHttpHandler { MaxConnectionsPerServer = o.Connections + 64, PooledConnectionLifetime = Timeout.InfiniteTimeSpan, UseProxy = false };
using var http = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(30) };

var started = Stopwatch.GetTimestamp();
var measureFrom = started + (long)(o.WarmupSeconds * Stopwatch.Frequency);
var flood = new Recorder(measureFrom);
var probe = new Recorder(measureFrom);
var modest = new Recorder(measureFrom);
using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(o.Seconds));

var floodTasks = Enumerable.Range(0, o.Connections).Select(async _ =>
{
    while (!stop.IsCancellationRequested)
    {
        var retryAfter = await SendAsync(http, url, o.SlowModel, o.FloodKey, flood).ConfigureAwait(false);
        if (o.HonorRetryAfter && retryAfter is { } wait)
        {
            // What the official SDKs do with a 429/503 that says when to come back.
            try
            {
                await Task.Delay(wait, stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }
}).ToArray();
var probeTask = PacedAsync(o.ProbeRate, () => SendAsync(http, url, o.FastModel, o.ProbeKey, probe), stop.Token);
var modestTask = PacedAsync(o.ModestRate, () => SendAsync(http, url, o.SlowModel, o.ModestKey, modest), stop.Token);
await Task.WhenAll(probeTask, modestTask).ConfigureAwait(false);
await Task.WhenAll(floodTasks).ConfigureAwait(false);
var floodEnded = Stopwatch.GetElapsedTime(started);

// After the flood: a request of the modest tenant and one of the flood's own tenant.
var afterModest = new Recorder(0);
var afterFlood = new Recorder(0);
await Task.WhenAll(SendAsync(http, url, o.SlowModel, o.ModestKey, afterModest), SendAsync(http, url, o.SlowModel, o.FloodKey, afterFlood)).ConfigureAwait(false);

Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"flood ran {floodEnded.TotalSeconds:F1} s with {o.Connections} connections, {(o.HonorRetryAfter ? "each waiting out a refusal's Retry-After (as the official SDKs do)" : "each sending again at once after a refusal (a hostile client)")}"));
Console.WriteLine($"flood   {flood.Describe()}");
Console.WriteLine($"        slowest refusals: {flood.Slowest(started, 5, refused: true)}");
Console.WriteLine($"modest  {modest.Describe()}");
Console.WriteLine($"probe   {probe.Describe()}");
Console.WriteLine($"        slowest probes: {probe.Slowest(started, 5)}");
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"warm-up (first {o.WarmupSeconds} s, not in the figures above: 800 connections opening, first refusals): probe max {probe.WarmupMax:F0} ms, flood refusal max {flood.WarmupRefusalMax:F0} ms"));
Console.WriteLine($"after   modest key: {afterModest.Describe()}");
Console.WriteLine($"after   flood key:  {afterFlood.Describe()}");

var maxQueueWait = o.MaxQueueWaitMs;
var checks = new (string Name, bool Ok, string Value)[]
{
    ("probe p99 <= 50 ms, 0 failures", probe.P(0.99, ok: true) <= 50 && probe.Failures == 0, string.Create(CultureInfo.InvariantCulture, $"p99 {probe.P(0.99, ok: true):F1} ms, {probe.Failures} failed")),
    ("flood refusals p99 <= 100 ms", flood.P(0.99, ok: false) <= 100, string.Create(CultureInfo.InvariantCulture, $"p99 {flood.P(0.99, ok: false):F1} ms over {flood.Refused} refusals")),
    ("every refusal has Retry-After", flood.RefusedWithoutRetryAfter == 0 && modest.RefusedWithoutRetryAfter == 0, $"{flood.RefusedWithoutRetryAfter + modest.RefusedWithoutRetryAfter} without"),
    ("no accepted request waited longer than MaxQueueWait", flood.Max(ok: true) - o.ServiceMs <= maxQueueWait, string.Create(CultureInfo.InvariantCulture, $"longest accepted {flood.Max(ok: true):F0} ms (service {o.ServiceMs} ms + wait <= {maxQueueWait} ms)")),
    ("modest key success >= 99%", modest.SuccessRate >= 0.99, string.Create(CultureInfo.InvariantCulture, $"{modest.SuccessRate:P1} of {modest.Count}")),
    ("a normal request succeeds within 1 s of its service time after the flood", afterModest.Failures == 0 && afterModest.Max(ok: true) <= o.ServiceMs + 1000, string.Create(CultureInfo.InvariantCulture, $"{afterModest.Max(ok: true):F0} ms")),
};
foreach (var (name, ok, value) in checks)
{
    Console.WriteLine($"{(ok ? "PASS" : "FAIL")}  {name}: {value}");
}

return checks.All(c => c.Ok) ? 0 : 1;

static async Task<TimeSpan?> SendAsync(HttpClient http, Uri url, string model, string key, Recorder recorder)
{
    var body = $$"""{"model":"{{model}}","messages":[{"role":"user","content":"isolation {{Guid.NewGuid():N}}"}],"max_tokens":16}""";
    var sent = Stopwatch.GetTimestamp();
    int status;
    TimeSpan? retryAfter = null;
    try
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        using var response = await http.SendAsync(request).ConfigureAwait(false);
        await response.Content.CopyToAsync(Stream.Null).ConfigureAwait(false);
        status = (int)response.StatusCode;
        // retry-after-ms first, as the OpenAI SDKs read it; then Retry-After.
        retryAfter = response.Headers.TryGetValues("retry-after-ms", out var ms) && double.TryParse(ms.First(), CultureInfo.InvariantCulture, out var millis)
            ? TimeSpan.FromMilliseconds(millis)
            : response.Headers.RetryAfter?.Delta;
    }
    catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
    {
        status = ex is TaskCanceledException ? 1 : 0; // 1: client timeout, 0: connection failure
    }

    recorder.Add(status, Stopwatch.GetElapsedTime(sent).TotalMilliseconds, retryAfter is not null, sent);
    return status is 429 or 503 ? retryAfter : null;
}

static async Task PacedAsync(double rate, Func<Task> send, CancellationToken stop)
{
    var pending = new List<Task>();
    var interval = TimeSpan.FromSeconds(1 / rate);
    var start = Stopwatch.GetTimestamp();
    for (var n = 0; !stop.IsCancellationRequested; n++)
    {
        var due = interval * n - Stopwatch.GetElapsedTime(start);
        if (due > TimeSpan.Zero)
        {
            try
            {
                await Task.Delay(due, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }

        pending.Add(send());
    }

    await Task.WhenAll(pending).ConfigureAwait(false);
}

internal sealed class Recorder(long measureFrom)
{
    private readonly ConcurrentBag<(int Status, double Ms, bool RetryAfter, long At)> _results = [];
    private readonly ConcurrentBag<(int Status, double Ms)> _warmup = [];

    public void Add(int status, double ms, bool retryAfter, long at)
    {
        if (at < measureFrom)
        {
            _warmup.Add((status, ms));
            return;
        }

        _results.Add((status, ms, retryAfter, at));
    }

    public double WarmupMax => _warmup.Select(r => r.Ms).DefaultIfEmpty(0).Max();

    public double WarmupRefusalMax => _warmup.Where(r => r.Status is 429 or 503).Select(r => r.Ms).DefaultIfEmpty(0).Max();

    /// <summary>The slowest requests, with when they were sent (seconds from <paramref name="start"/>).</summary>
    public string Slowest(long start, int n, bool refused = false) => string.Join(", ", _results.Where(r => !refused || r.Status is 429 or 503).OrderByDescending(r => r.Ms).Take(n)
        .Select(r => string.Create(CultureInfo.InvariantCulture, $"{r.Ms:F0} ms at {Stopwatch.GetElapsedTime(start, r.At).TotalSeconds:F1} s")));

    public int Count => _results.Count;

    public int Failures => _results.Count(r => r.Status != 200);

    public int Refused => _results.Count(r => r.Status is 429 or 503);

    public int RefusedWithoutRetryAfter => _results.Count(r => r.Status is 429 or 503 && !r.RetryAfter);

    public double SuccessRate => Count == 0 ? 0 : (double)_results.Count(r => r.Status == 200) / Count;

    public double P(double p, bool ok)
    {
        var sorted = _results.Where(r => ok ? r.Status == 200 : r.Status is 429 or 503).Select(r => r.Ms).Order().ToArray();
        return sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
    }

    public double Max(bool ok) => P(1.0, ok);

    public string Describe()
    {
        var statuses = string.Join(", ", _results.GroupBy(r => r.Status).OrderBy(g => g.Key).Select(g => $"{Name(g.Key)}: {g.Count()}"));
        return string.Create(CultureInfo.InvariantCulture,
            $"{Count} requests ({statuses}); ok p50 {P(0.5, true):F1} / p99 {P(0.99, true):F1} / max {Max(true):F1} ms; refused p50 {P(0.5, false):F1} / p99 {P(0.99, false):F1} ms");
    }

    private static string Name(int status) => status switch { 0 => "connection failed", 1 => "client timeout", _ => status.ToString(CultureInfo.InvariantCulture) };
}

internal sealed record Options
{
    public required string Url { get; init; }

    public string SlowModel { get; init; } = "slow";

    public string FastModel { get; init; } = "fast";

    public string FloodKey { get; init; } = "";

    public string ModestKey { get; init; } = "";

    public string ProbeKey { get; init; } = "";

    public int Connections { get; init; } = 800;

    public double Seconds { get; init; } = 30;

    public double ProbeRate { get; init; } = 10;

    public double ModestRate { get; init; } = 2;

    public double ServiceMs { get; init; } = 1500;

    public double MaxQueueWaitMs { get; init; } = 10_000;

    public bool HonorRetryAfter { get; init; } = true;

    public double WarmupSeconds { get; init; } = 2;

    public static Options Parse(string[] args)
    {
        if (args.Length == 0 || args[0].StartsWith('-'))
        {
            throw new ArgumentException("Usage: pgw-isolation URL --slow-model M --fast-model M --flood-key K --modest-key K --probe-key K [--connections N] [--seconds S] [--probe-rate R] [--modest-rate R] [--service-ms MS] [--max-queue-wait-ms MS]");
        }

        var o = new Options { Url = args[0] };
        for (var i = 1; i + 1 < args.Length; i += 2)
        {
            var v = args[i + 1];
            double D() => double.Parse(v, CultureInfo.InvariantCulture);
            o = args[i] switch
            {
                "--slow-model" => o with { SlowModel = v },
                "--fast-model" => o with { FastModel = v },
                "--flood-key" => o with { FloodKey = v },
                "--modest-key" => o with { ModestKey = v },
                "--probe-key" => o with { ProbeKey = v },
                "--connections" => o with { Connections = (int)D() },
                "--seconds" => o with { Seconds = D() },
                "--probe-rate" => o with { ProbeRate = D() },
                "--modest-rate" => o with { ModestRate = D() },
                "--service-ms" => o with { ServiceMs = D() },
                "--max-queue-wait-ms" => o with { MaxQueueWaitMs = D() },
                "--honor-retry-after" => o with { HonorRetryAfter = bool.Parse(v) },
                "--warmup" => o with { WarmupSeconds = D() },
                _ => throw new ArgumentException($"Unknown option {args[i]}"),
            };
        }

        return o;
    }
}
