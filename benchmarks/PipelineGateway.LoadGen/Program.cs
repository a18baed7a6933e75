using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;

// An open-loop HTTP load generator: sends POSTs on a fixed schedule whatever the server's speed (a slow answer
// never delays the next request, unlike closed-loop tools such as wrk, whose fixed-concurrency loop hides queueing
// delay: "coordinated omission"). Latency runs from the moment a request is handed to the client, so time spent
// waiting for a free connection counts; "send lag" reports how far behind its schedule the generator itself ran.
// Requests are spaced evenly (one every 1/rate seconds, like wrk2's constant-throughput mode): a dedicated thread
// sleeps until each send time with nanosleep. Task.Delay and Thread.Sleep round to whole milliseconds (and Task.Delay
// often to several), which sends bursts of several requests at once: a burstier load than "a fixed rate", whose
// queueing shows up as latency in whatever is measured.
// Debian's wrk has no fixed-rate mode and wrk2 is not packaged, hence this tool.
//
// Usage: pgw-loadgen URL --rate N --seconds S [--connections C] [--body JSON] [--warmup S]
// Prints one line: rate, sent, ok, errors, achieved rate, p50 / p90 / p99 / max latency in ms.
// Streaming mode: pgw-loadgen URL --streams N --seconds S [--warmup S] (see StreamLoad).
var options = ParseArgs(args);
var url = new Uri(options.Url);
if (options.Streams > 0)
{
    return await StreamLoad.RunAsync(url, options.Streams, options.Seconds, options.WarmupSeconds);
}
var body = Encoding.UTF8.GetBytes(options.Body);

using var handler = new SocketsHttpHandler
{
    MaxConnectionsPerServer = options.Connections,
    PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
    AutomaticDecompression = DecompressionMethods.None,
    UseProxy = false,
};
using var http = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(30) };

if (options.WarmupSeconds > 0)
{
    await RunAsync(http, url, body, options.Rate, options.WarmupSeconds);
}

var result = await RunAsync(http, url, body, options.Rate, options.Seconds);
Console.WriteLine(result);
return result.Errors == 0 ? 0 : 1;

static async Task<Result> RunAsync(HttpClient http, Uri url, byte[] body, int rate, double seconds)
{
    var total = (int)(rate * seconds);
    var latencies = new double[total];
    var lags = new double[total];
    var errors = 0;
    var pending = new Task[total];
    var frequency = Stopwatch.Frequency;
    var start = Stopwatch.GetTimestamp();
    var pacer = new Thread(() =>
    {
        Pacing.UseFineTimerSlack();
        for (var next = 0; next < total; next++)
        {
            var scheduled = start + (long)(next * (double)frequency / rate);
            Pacing.SleepUntil(scheduled);
            lags[next] = (Stopwatch.GetTimestamp() - scheduled) * 1000.0 / frequency;
            pending[next] = SendAsync(http, url, body, latencies, next, () => Interlocked.Increment(ref errors));
        }
    })
    { IsBackground = true, Name = "pgw-loadgen pacer" };
    pacer.Start();
    await Task.Run(pacer.Join);

    var sendSeconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
    await Task.WhenAll(pending);
    Array.Sort(latencies);
    Array.Sort(lags);
    return new Result(rate, total, total - errors, errors, total / sendSeconds,
        Percentile(latencies, 0.50), Percentile(latencies, 0.90), Percentile(latencies, 0.99), latencies[^1], Percentile(lags, 0.50), Percentile(lags, 0.99));
}

static async Task SendAsync(HttpClient http, Uri url, byte[] body, double[] latencies, int index, Action onError)
{
    var sent = Stopwatch.GetTimestamp();
    try
    {
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        using var response = await http.PostAsync(url, content).ConfigureAwait(false);
        await response.Content.CopyToAsync(Stream.Null).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            onError();
        }
    }
    catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
    {
        onError();
    }

    latencies[index] = Stopwatch.GetElapsedTime(sent).TotalMilliseconds;
}

static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

static Options ParseArgs(string[] args)
{
    if (args.Length == 0 || args[0].StartsWith('-'))
    {
        throw new ArgumentException("Usage: pgw-loadgen URL --rate N --seconds S [--connections C] [--body JSON] [--warmup S] | URL --streams N --seconds S [--warmup S]");
    }

    var o = new Options { Url = args[0] };
    for (var i = 1; i + 1 < args.Length; i += 2)
    {
        var v = args[i + 1];
        o = args[i] switch
        {
            "--rate" => o with { Rate = int.Parse(v, CultureInfo.InvariantCulture) },
            "--seconds" => o with { Seconds = double.Parse(v, CultureInfo.InvariantCulture) },
            "--connections" => o with { Connections = int.Parse(v, CultureInfo.InvariantCulture) },
            "--body" => o with { Body = v },
            "--warmup" => o with { WarmupSeconds = double.Parse(v, CultureInfo.InvariantCulture) },
            "--streams" => o with { Streams = int.Parse(v, CultureInfo.InvariantCulture) },
            _ => throw new ArgumentException($"Unknown option {args[i]}"),
        };
    }

    return o;
}

internal sealed record Options
{
    public required string Url { get; init; }

    public int Rate { get; init; } = 2000;

    public double Seconds { get; init; } = 10;

    public int Connections { get; init; } = 64;

    public double WarmupSeconds { get; init; } = 2;

    public int Streams { get; init; }

    public string Body { get; init; } = """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello from the load test"}],"max_tokens":16}""";
}

internal sealed record Result(int Rate, int Sent, int Ok, int Errors, double Achieved, double P50, double P90, double P99, double Max, double P50Lag, double P99Lag)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"rate {Rate}/s: sent {Sent}, ok {Ok}, errors {Errors}, achieved {Achieved:F0}/s, p50 {P50:F3} ms, p90 {P90:F3} ms, p99 {P99:F3} ms, max {Max:F3} ms, send lag p50 {P50Lag:F3} ms, p99 {P99Lag:F3} ms");
}

/// <summary>Sub-millisecond sleeps for the pacer thread (Linux and macOS: nanosleep; elsewhere whole milliseconds).</summary>
internal static partial class Pacing
{
    private const int PrSetTimerSlack = 29;

    public static void SleepUntil(long timestamp)
    {
        while (true)
        {
            var remaining = timestamp - Stopwatch.GetTimestamp();
            if (remaining <= 0)
            {
                return;
            }

            if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
            {
                var ns = remaining * 1_000_000_000 / Stopwatch.Frequency;
                var request = new TimeSpec { Seconds = ns / 1_000_000_000, Nanoseconds = ns % 1_000_000_000 };
                _ = NanoSleep(in request, IntPtr.Zero);
            }
            else
            {
                Thread.Sleep(1);
            }
        }
    }

    /// <summary>Linux delays a sleeping thread's wake-up by up to its timer slack (50 µs by default); 1 µs here.</summary>
    public static void UseFineTimerSlack()
    {
        if (OperatingSystem.IsLinux())
        {
            _ = Prctl(PrSetTimerSlack, 1000, 0, 0, 0);
        }
    }

    [LibraryImport("libc", EntryPoint = "nanosleep")]
    private static partial int NanoSleep(in TimeSpec request, IntPtr remaining);

    [LibraryImport("libc", EntryPoint = "prctl")]
    private static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }
}
