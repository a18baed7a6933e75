using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;

/// <summary>
/// The streaming mode (issue 21): <c>--streams N</c> SSE streams kept open at once, closed loop — each of N tasks opens
/// a streamed chat completion, reads it to its end, and opens the next until the time is up. Starts are spread over the
/// first second so N connections do not all open in the same instant. Reports streams completed, SSE events received
/// (an event ends with a blank line, so events are counted without parsing them, the same way for every target), the
/// time to the first byte of each response body, and each stream's whole duration.
/// </summary>
internal static class StreamLoad
{
    private const string Body = """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello from the streaming load test"}],"stream":true}""";

    public static async Task<int> RunAsync(Uri url, int streams, double seconds, double warmupSeconds)
    {
        using var handler = new SocketsHttpHandler
        {
            MaxConnectionsPerServer = streams,
            PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
            AutomaticDecompression = DecompressionMethods.None,
            UseProxy = false,
        };
        using var http = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(60) };
        var body = Encoding.UTF8.GetBytes(Body);
        if (warmupSeconds > 0)
        {
            await RunOnceAsync(http, url, body, streams, warmupSeconds);
        }

        var result = await RunOnceAsync(http, url, body, streams, seconds);
        Console.WriteLine(result);
        return result.Errors == 0 ? 0 : 1;
    }

    private static async Task<StreamResult> RunOnceAsync(HttpClient http, Uri url, byte[] body, int streams, double seconds)
    {
        var start = Stopwatch.GetTimestamp();
        var end = start + (long)(seconds * Stopwatch.Frequency);
        var runs = new StreamRun[streams];
        var tasks = new Task[streams];
        for (var i = 0; i < streams; i++)
        {
            var run = runs[i] = new StreamRun();
            var delay = TimeSpan.FromMilliseconds(1000.0 * i / streams);
            tasks[i] = Task.Run(async () =>
            {
                await Task.Delay(delay);
                while (Stopwatch.GetTimestamp() < end)
                {
                    await OneStreamAsync(http, url, body, run);
                }
            });
        }

        await Task.WhenAll(tasks);
        var elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
        var firstBytes = runs.SelectMany(r => r.FirstByteMs).Order().ToArray();
        var durations = runs.SelectMany(r => r.DurationMs).Order().ToArray();
        return new StreamResult(streams, durations.Length, runs.Sum(r => r.Errors), runs.Sum(r => r.Events), elapsed,
            Percentile(firstBytes, 0.50), Percentile(firstBytes, 0.99), Percentile(durations, 0.50), Percentile(durations, 0.99));
    }

    private static async Task OneStreamAsync(HttpClient http, Uri url, byte[] body, StreamRun run)
    {
        var sent = Stopwatch.GetTimestamp();
        try
        {
            using var content = new ByteArrayContent(body);
            content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = content };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                run.Errors++;
                return;
            }

            await using var stream = await response.Content.ReadAsStreamAsync().ConfigureAwait(false);
            var buffer = run.Buffer;
            var first = true;
            var previous = (byte)0;
            var events = 0;
            int read;
            while ((read = await stream.ReadAsync(buffer).ConfigureAwait(false)) > 0)
            {
                if (first)
                {
                    run.FirstByteMs.Add(Stopwatch.GetElapsedTime(sent).TotalMilliseconds);
                    first = false;
                }

                foreach (var b in buffer.AsSpan(0, read))
                {
                    if (b == (byte)'\n' && previous == (byte)'\n')
                    {
                        events++;
                    }

                    previous = b;
                }
            }

            run.Events += events;
            run.DurationMs.Add(Stopwatch.GetElapsedTime(sent).TotalMilliseconds);
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or IOException)
        {
            run.Errors++;
        }
    }

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

    /// <summary>One task's streams, one after another (no sharing: no locks).</summary>
    private sealed class StreamRun
    {
        public byte[] Buffer { get; } = new byte[4096];

        public List<double> FirstByteMs { get; } = [];

        public List<double> DurationMs { get; } = [];

        public int Errors { get; set; }

        public long Events { get; set; }
    }
}

internal sealed record StreamResult(int Streams, int Completed, int Errors, long Events, double Seconds, double FirstByteP50, double FirstByteP99, double DurationP50, double DurationP99)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"streams {Streams}: completed {Completed}, errors {Errors}, events {Events} ({Events / Seconds:F0}/s), first byte p50 {FirstByteP50:F3} ms, p99 {FirstByteP99:F3} ms, stream p50 {DurationP50:F1} ms, p99 {DurationP99:F1} ms");
}
