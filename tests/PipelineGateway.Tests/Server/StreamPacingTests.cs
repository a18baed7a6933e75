using System.Text;
using System.Threading.Channels;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// When a stream's bytes leave (docs/server.md, "Streaming"). <c>Server:StreamKeepAlive</c>: until a stream's first
/// chunk the client gets an SSE comment every interval (on both streaming routes), so a long-thinking model does not trip an idle timeout on the
/// way, and the wait leaves no timer armed once the chunk came. Flushes: once per burst of chunks the upstream had
/// ready, never later than the moment the gateway starts waiting for the upstream's next one.
/// </summary>
public sealed class StreamPacingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("v1/chat/completions", """{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello there"}]}""", "\"content\"", "data: [DONE]\n\n")]
    [InlineData("v1/messages", """{"model":"gpt-4o-mini","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hello there"}]}""", "event: message_start", "\"type\":\"message_stop\"}\n\n")]
    public async Task A_stream_gets_a_comment_every_interval_until_its_first_chunk_and_then_no_keep_alive_timer_is_left(string route, string json, string answers, string ends)
    {
        var interval = TimeSpan.FromSeconds(15);
        var time = new TimerWatch(new FakeTimeProvider(DateTimeOffset.UtcNow), interval);
        var config = TestServerConfig.Simulated(new()
        {
            ["Gateway:Providers:0:Simulated:LatencyMs"] = "40000", // the first chunk comes after 40 s (fake time)
            ["Gateway:Server:StreamKeepAlive"] = "00:00:15",
        });
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddSingleton<TimeProvider>(time));
        var root = await GatewayServer.StartAsync(app, Ct);
        using var http = new HttpClient { BaseAddress = root };
        using var request = new HttpRequestMessage(HttpMethod.Post, route) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        var sent = http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);

        // Nothing goes out before the interval: the headers come with the first keep-alive.
        await time.NextWaitAsync(Ct);
        sent.IsCompleted.Should().BeFalse("no byte is written before the first interval passes");
        time.Advance(interval);
        using var response = await sent;
        response.Content.Headers.ContentType!.MediaType.Should().Be("text/event-stream");
        using var body = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
        (await body.ReadLineAsync(Ct)).Should().Be(": keep-alive");
        (await body.ReadLineAsync(Ct)).Should().BeEmpty();

        await time.NextWaitAsync(Ct); // the next interval's wait
        time.Advance(interval);
        (await body.ReadLineAsync(Ct)).Should().Be(": keep-alive");
        (await body.ReadLineAsync(Ct)).Should().BeEmpty();

        await time.NextWaitAsync(Ct);
        time.Advance(TimeSpan.FromSeconds(10)); // 40 s: the answer starts, 5 s before a third keep-alive would be due
        var rest = await body.ReadToEndAsync(Ct);
        rest.Should().NotContain("keep-alive").And.Contain(answers).And.EndWith(ends);
        time.Live.Should().Be(0, "the wait that the first chunk ended took its timer with it");
        await app.StopAsync(Ct);
    }

    [Theory]
    [InlineData("v1/chat/completions", """{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello there"}]}""", "\"content\":\"", "data: [DONE]\n\n")]
    [InlineData("v1/messages", """{"model":"gpt-4o-mini","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hello there"}]}""", "\"text_delta\"", "\"type\":\"message_stop\"}\n\n")]
    public async Task Each_chunk_reaches_the_client_before_the_upstream_produces_the_next(string route, string json, string content, string ends)
    {
        // One token a second (fake time): every chunk ends a burst, so each must be on the wire while the next is
        // still a second away. A gateway that held written chunks until the next one would block the read below.
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var config = TestServerConfig.Simulated(new()
        {
            ["Gateway:Providers:0:Simulated:PerTokenDelayMs"] = "1000",
            ["Gateway:Providers:0:Simulated:CompletionWords"] = "4",
        });
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddSingleton<TimeProvider>(time));
        var root = await GatewayServer.StartAsync(app, Ct);
        using var http = new HttpClient { BaseAddress = root, Timeout = TimeSpan.FromSeconds(20) }; // an unflushed stream fails here, not after 100 s
        using var request = new HttpRequestMessage(HttpMethod.Post, route) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        using var body = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
        var contents = 0;
        while (contents < 4)
        {
            // Generous real-time bound: a chunk not flushed would never come without the clock moving.
            var line = await body.ReadLineAsync(Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), Ct);
            line.Should().NotBeNull();
            if (line!.StartsWith("data: {", StringComparison.Ordinal) && line.Contains(content, StringComparison.Ordinal))
            {
                contents++;
                if (contents < 4)
                {
                    time.Advance(TimeSpan.FromSeconds(1)); // only now may the upstream produce the next word
                }
            }
        }

        (await body.ReadToEndAsync(Ct)).Should().EndWith(ends);
        await app.StopAsync(Ct);
    }

    [Fact]
    public async Task Over_a_real_upstream_what_it_sent_reaches_the_client_while_it_pauses()
    {
        // The same over HTTP: the OpenAI adapter awaits the upstream body's read itself (SseEventReader.ReadAsync), and
        // the burst must end where it starts to wait. The upstream (a real Kestrel) sends its opening and first content,
        // then waits until the client has them.
        await using var upstream = await ScriptedUpstream.StartAsync(Ct);
        await using var gateway = await GatewayApp.StartAsync(upstream.EchoSettings("sse-gated"), Ct);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent("""{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"),
        };
        using var response = await gateway.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        using var body = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
        string? line;
        do
        {
            // Generous real-time bound: an unflushed burst would never come while the upstream waits for the client.
            line = await body.ReadLineAsync(Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), Ct);
            line.Should().NotBeNull("the stream ended before its first content");
        }
        while (!line!.Contains("\"Hello\"", StringComparison.Ordinal));

        upstream.StreamGate.SetResult();
        var rest = await body.ReadToEndAsync(Ct);
        rest.Should().Contain("\" world\"").And.EndWith("data: [DONE]\n\n");
    }

    /// <summary>A fake clock that counts the live timers of one due time (the keep-alive's) and reports each new one.</summary>
    private sealed class TimerWatch(FakeTimeProvider inner, TimeSpan watched) : TimeProvider
    {
        private int _live;

        public Channel<bool> ArmedChannel { get; } = Channel.CreateUnbounded<bool>();

        public ChannelReader<bool> Armed => ArmedChannel.Reader;

        /// <summary>
        /// The next keep-alive wait being armed. Guarded by 30 s of real time, so a route that arms none fails here
        /// instead of hanging the run (the clock the test drives is fake; this only bounds a broken build's wait).
        /// </summary>
        public async Task NextWaitAsync(CancellationToken cancellationToken) =>
            await Armed.ReadAsync(cancellationToken).AsTask().WaitAsync(TimeSpan.FromSeconds(30), cancellationToken);

        public int Live => Volatile.Read(ref _live);

        public void Advance(TimeSpan by) => inner.Advance(by);

        public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

        public override long GetTimestamp() => inner.GetTimestamp();

        public override long TimestampFrequency => inner.TimestampFrequency;

        public override TimeZoneInfo LocalTimeZone => inner.LocalTimeZone;

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = inner.CreateTimer(callback, state, dueTime, period);
            if (dueTime != watched)
            {
                return timer;
            }

            Interlocked.Increment(ref _live);
            ArmedChannel.Writer.TryWrite(true);
            return new Watched(timer, this);
        }

        private sealed class Watched(ITimer timer, TimerWatch owner) : ITimer
        {
            private int _disposed;

            public bool Change(TimeSpan dueTime, TimeSpan period) => timer.Change(dueTime, period);

            public void Dispose()
            {
                if (Interlocked.Exchange(ref _disposed, 1) == 0)
                {
                    Interlocked.Decrement(ref owner._live);
                }

                timer.Dispose();
            }

            public ValueTask DisposeAsync()
            {
                Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }
}
