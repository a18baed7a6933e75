using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Large request bodies (docs/server.md, "Large request bodies"): a photo inline as base64 (several megabytes) is within
/// the default bound (32 MiB; it was 4 MiB and such a request was a 413), and what large bodies hold at once is bounded
/// (<c>MaxBodyBytesInFlight</c>): past it another large one is a 503 with <c>Retry-After</c>, while a small request is
/// answered as ever — shown with a large body held half-sent by the test.
/// </summary>
public sealed class LargeBodiesTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<(WebApplication App, Uri Root)> StartAsync(Dictionary<string, string?> more)
    {
        var app = GatewayServer.Build(TestServerConfig.Simulated(more), "http://127.0.0.1:0", _ => { });
        return (app, await GatewayServer.StartAsync(app, Ct));
    }

    /// <summary>A chat request with an image inline of <paramref name="imageBytes"/> bytes (base64 in a data URL).</summary>
    private static byte[] ChatWithImage(int imageBytes) => Encoding.UTF8.GetBytes(
        "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is in this photo?\"},"
        + "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/jpeg;base64," + Convert.ToBase64String(new byte[imageBytes]) + "\"}}]}]}");

    /// <summary>A gateway whose bodies, uploads and large bodies at once are all bounded by 1 MiB.</summary>
    private static Task<(WebApplication App, Uri Root)> StartWithOneMiBAsync() => StartAsync(new Dictionary<string, string?>
    {
        ["Gateway:Server:MaxRequestBodyBytes"] = "1048576",
        ["Gateway:Server:MaxUploadBytes"] = "1048576",
        ["Gateway:Server:MaxBodyBytesInFlight"] = "1048576",
    });

    /// <summary>A large request with its length, half sent and held, once the gateway counts it (from its headers on).</summary>
    private static async Task<(HeldContent Held, Task<HttpResponseMessage> First)> HoldAsync(WebApplication app, HttpClient http, byte[] large)
    {
        var counted = CountedAsync(app, large.Length);
        var held = new HeldContent(large);
        var first = http.PostAsync("v1/chat/completions", held, Ct);
        await counted.WaitAsync(Ct);
        return (held, first);
    }

    /// <summary>The 503 of a large body past the bound: <c>server_busy</c> naming the setting, with <c>Retry-After</c>.</summary>
    private static async Task ShouldBeBusyAsync(HttpResponseMessage response)
    {
        response.StatusCode.Should().Be(HttpStatusCode.ServiceUnavailable);
        response.Headers.RetryAfter.Should().NotBeNull();
        var error = JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!["error"]!;
        error["code"]!.GetValue<string>().Should().Be("server_busy");
        error["message"]!.GetValue<string>().Should().Contain("MaxBodyBytesInFlight");
    }

    /// <summary>Done once the large bodies being served count at least <paramref name="bytes"/> (a signal, not a wait).</summary>
    private static Task CountedAsync(WebApplication app, long bytes)
    {
        var bodies = app.Services.GetRequiredService<LargeBodies>();
        var counted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bodies.Changed += total =>
        {
            if (total >= bytes)
            {
                counted.TrySetResult();
            }
        };
        return counted.Task;
    }

    /// <summary>Done once the large bodies being served count nothing.</summary>
    private static Task ReleasedAsync(WebApplication app)
    {
        var bodies = app.Services.GetRequiredService<LargeBodies>();
        var released = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bodies.Changed += total =>
        {
            if (total == 0)
            {
                released.TrySetResult();
            }
        };
        if (bodies.InFlight == 0)
        {
            released.TrySetResult();
        }

        return released.Task;
    }

    [Fact]
    public async Task A_photo_sent_inline_is_within_the_default_bound()
    {
        var (app, root) = await StartAsync([]);
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = root };
        var body = ChatWithImage(5 * 1024 * 1024); // a phone photo: ~7 MB as base64
        body.Length.Should().BeGreaterThan(4 * 1024 * 1024, "past the old bound");

        using var response = await http.PostAsync("v1/chat/completions", new ByteArrayContent(body) { Headers = { ContentType = new("application/json") } }, Ct);

        response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync(Ct));
    }

    [Fact]
    public async Task Past_what_large_bodies_may_hold_at_once_another_large_one_is_a_503_and_a_small_one_is_answered()
    {
        var (app, root) = await StartWithOneMiBAsync();
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = root };
        var large = ChatWithImage(450 * 1024); // ~600 KB: two do not fit in 1 MiB

        // The first large request sends half its body and waits: the gateway counts it from its headers on.
        var (held, first) = await HoldAsync(app, http, large);

        using (var second = await http.PostAsync("v1/chat/completions", new ByteArrayContent(large) { Headers = { ContentType = new("application/json") } }, Ct))
        {
            await ShouldBeBusyAsync(second);
        }

        using (var small = await http.PostAsync("v1/chat/completions", new StringContent("""{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"), Ct))
        {
            small.StatusCode.Should().Be(HttpStatusCode.OK, "small requests never count");
        }

        held.Release.TrySetResult();
        using (var answered = await first)
        {
            answered.StatusCode.Should().Be(HttpStatusCode.OK, await answered.Content.ReadAsStringAsync(Ct));
        }

        // Its room is given back once the request has ended on the server, which can be after its client has the answer
        // (a scrape right after the response once read 144,831 bytes still counted; the next large body may find it).
        await ReleasedAsync(app).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        using var after = await http.PostAsync("v1/chat/completions", new ByteArrayContent(large) { Headers = { ContentType = new("application/json") } }, Ct);
        after.StatusCode.Should().Be(HttpStatusCode.OK, "the first one's room is given back");
        await ReleasedAsync(app).WaitAsync(TimeSpan.FromSeconds(30), Ct);

        // The refusal is counted where operators look (Prometheus), beside what is counted now.
        var scraped = await http.GetStringAsync("metrics", Ct);
        scraped.Should().MatchRegex(@"(?m)^pgw_server_large_bodies_refused_total\{[^}]*\} 1$").And.MatchRegex(@"(?m)^pgw_server_large_bodies_bytes\{[^}]*\} 0$");
    }

    [Fact]
    public async Task Large_bodies_sent_one_after_another_are_each_answered_even_when_two_do_not_fit()
    {
        // The count was given back when the request ended on the server, which can be after its client has the answer:
        // the next large body could find it still counted (a 503 when two do not fit). It is given back as the whole
        // answer starts, before the client can have it.
        var (app, root) = await StartWithOneMiBAsync();
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = root };
        var large = ChatWithImage(450 * 1024); // ~600 KB: two do not fit in 1 MiB
        var bodies = app.Services.GetRequiredService<LargeBodies>();
        for (var i = 0; i < 10; i++)
        {
            using var announced = await http.PostAsync("v1/chat/completions", new ByteArrayContent(large) { Headers = { ContentType = new("application/json") } }, Ct);
            bodies.InFlight.Should().Be(0, $"request {i}'s count is given back before its answer went out");
            announced.StatusCode.Should().Be(HttpStatusCode.OK, $"request {i} with its length: {await announced.Content.ReadAsStringAsync(Ct)}");
            using var chunked = await http.PostAsync("v1/chat/completions", new HeldContent(large, chunked: true, hold: false), Ct);
            bodies.InFlight.Should().Be(0, $"request {i}'s count is given back before its answer went out");
            chunked.StatusCode.Should().Be(HttpStatusCode.OK, $"request {i} without a length: {await chunked.Content.ReadAsStringAsync(Ct)}");
        }
    }

    [Theory]
    [InlineData("application/json", true)]
    [InlineData("text/event-stream", false)]
    [InlineData("text/event-stream; charset=utf-8", false)]
    public async Task A_large_bodys_count_is_given_back_as_its_whole_answer_starts_and_a_streams_when_it_ends(string contentType, bool givenBackAtStart)
    {
        var feature = new StartingResponse();
        var ctx = new Microsoft.AspNetCore.Http.DefaultHttpContext();
        ctx.Features.Set<Microsoft.AspNetCore.Http.Features.IHttpResponseFeature>(feature);
        var released = 0;
        var counted = new FrontDoor.CountedUntilAnswered(() => released++);
        counted.ReleaseWhenAnswered(ctx);

        ctx.Response.ContentType = contentType;
        await feature.StartAsync();
        released.Should().Be(givenBackAtStart ? 1 : 0);
        counted.Release(); // the request's end
        released.Should().Be(1, "given back once, whichever comes first");
    }

    [Fact]
    public void A_body_given_back_counts_nothing_when_read_further()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var bodies = OneMiB(services);
        var body = bodies.Counting(new MemoryStream(new byte[600 * 1024]));
        Read(body, 200 * 1024);
        bodies.InFlight.Should().Be(200 * 1024);
        bodies.Release(body); // its answer started
        bodies.InFlight.Should().Be(0);
        Read(body, 400 * 1024); // the rest read afterwards (drained)
        bodies.InFlight.Should().Be(0, "a body given back is never counted again");
        bodies.Release(body);
        bodies.InFlight.Should().Be(0);
    }

    [Fact]
    public async Task Small_bodies_sent_without_a_length_never_count()
    {
        // Defaults (32 MiB bodies, 64 MiB at once). A body without a length counted as a whole 32 MiB from its headers:
        // with two such requests under way (.NET's PostAsJsonAsync sends chunked), a third was a 503.
        var (app, root) = await StartAsync([]);
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = root };
        var chat = Encoding.UTF8.GetBytes("""{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}""");
        var bodies = app.Services.GetRequiredService<LargeBodies>();
        var changes = 0;
        bodies.Changed += _ => Interlocked.Increment(ref changes);
        var held = Enumerable.Range(0, 3).Select(_ => new HeldContent(chat, chunked: true)).ToList();
        var pending = held.Select(h => http.PostAsync("v1/chat/completions", h, Ct)).ToList();
        await Task.WhenAll(held.Select(h => h.HalfSent.Task)).WaitAsync(Ct);

        // The held ones' headers may reach the gateway after these (other connections): sent a number of times, each
        // answered — bounded, not timed.
        for (var i = 0; i < 50; i++)
        {
            using var response = await http.PostAsJsonAsync("v1/chat/completions", new { model = "gpt-4o-mini", messages = new[] { new { role = "user", content = "hi" } } }, Ct);
            response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync(Ct));
        }

        Volatile.Read(ref changes).Should().Be(0, "no body here is large");
        held.ForEach(h => h.Release.TrySetResult());
        foreach (var answered in await Task.WhenAll(pending))
        {
            using (answered)
            {
                answered.StatusCode.Should().Be(HttpStatusCode.OK);
            }
        }
    }

    [Fact]
    public async Task A_large_body_sent_without_a_length_counts_as_it_arrives()
    {
        var (app, root) = await StartWithOneMiBAsync();
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = root };
        var large = ChatWithImage(450 * 1024); // ~600 KB
        var (held, first) = await HoldAsync(app, http, large);

        // Another ~600 KB without a length is refused once what has arrived passes the room left.
        using (var refused = await http.PostAsync("v1/chat/completions", new HeldContent(large, chunked: true, hold: false), Ct))
        {
            await ShouldBeBusyAsync(refused);
        }

        // ~300 KB without a length fits in the room left (it counted as the whole 1 MiB bound, and was refused), again and
        // again: the refused one's bytes were given back.
        var fits = ChatWithImage(220 * 1024);
        for (var i = 0; i < 3; i++)
        {
            using var response = await http.PostAsync("v1/chat/completions", new HeldContent(fits, chunked: true, hold: false), Ct);
            response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync(Ct));
        }

        held.Release.TrySetResult();
        using (var answered = await first)
        {
            answered.StatusCode.Should().Be(HttpStatusCode.OK, await answered.Content.ReadAsStringAsync(Ct));
        }

        // Its room given back as above (on the server, possibly after its client has the answer).
        await ReleasedAsync(app).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        using var after = await http.PostAsync("v1/chat/completions", new HeldContent(large, chunked: true, hold: false), Ct);
        after.StatusCode.Should().Be(HttpStatusCode.OK, "alone, a body always fits");
    }

    [Fact]
    public async Task Large_bodies_without_a_length_growing_together_are_not_all_refused_and_give_their_room_back()
    {
        var (app, root) = await StartWithOneMiBAsync();
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = root };
        var large = ChatWithImage(300 * 1024); // ~400 KB: two fit in 1 MiB, four do not

        for (var round = 0; round < 3; round++)
        {
            var held = Enumerable.Range(0, 4).Select(_ => new HeldContent(large, chunked: true)).ToList();
            var pending = held.Select(h => http.PostAsync("v1/chat/completions", h, Ct)).ToList();
            await Task.WhenAll(held.Select(h => h.HalfSent.Task)).WaitAsync(Ct);
            held.ForEach(h => h.Release.TrySetResult());
            var answers = await Task.WhenAll(pending);
            var codes = answers.Select(a => a.StatusCode).ToList();
            answers.ToList().ForEach(a => a.Dispose());

            codes.Should().Contain(HttpStatusCode.OK, "one body at least is served whatever the order");
            codes.Should().OnlyContain(c => c == HttpStatusCode.OK || c == HttpStatusCode.ServiceUnavailable);
            // Every request gives its room back as it ends (just after its answer is sent: waited for by signal, listened
            // to only from here — while they ran nothing listened to the count, as in a live gateway).
            await ReleasedAsync(app).WaitAsync(TimeSpan.FromSeconds(30), Ct);
        }
    }

    /// <summary>The bodies' count alone, bounded by 1 MiB.</summary>
    private static LargeBodies OneMiB(ServiceProvider services) =>
        new(new ServerOptions { MaxRequestBodyBytes = 1024 * 1024, MaxUploadBytes = 1024 * 1024, MaxBodyBytesInFlight = 1024 * 1024 }, services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>());

    /// <summary>Reads <paramref name="bytes"/> more of a counted body, in reads of 16 KiB at most.</summary>
    private static void Read(Stream body, int bytes)
    {
        var buffer = new byte[16 * 1024];
        while (bytes > 0)
        {
            var n = body.Read(buffer, 0, Math.Min(bytes, buffer.Length));
            n.Should().BePositive();
            bytes -= n;
        }
    }

    private static void ShouldBeRefused(Action read) =>
        read.Should().Throw<Microsoft.AspNetCore.Http.BadHttpRequestException>().Which.StatusCode.Should().Be(503);

    [Fact]
    public async Task A_body_refused_as_it_arrives_gives_its_room_back_before_its_refusal_is_answered()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var bodies = OneMiB(services);
        bodies.TryAdd(900 * 1024).Should().BeTrue("another request's body");
        var body = bodies.Counting(new MemoryStream(new byte[300 * 1024]));
        var buffer = new byte[16 * 1024];

        var read = async () =>
        {
            while (await body.ReadAsync(buffer, Ct) > 0)
            {
            }
        };

        (await read.Should().ThrowAsync<Microsoft.AspNetCore.Http.BadHttpRequestException>()).Which.StatusCode.Should().Be(503);
        bodies.InFlight.Should().Be(900 * 1024, "the refused body's bytes are given back as it is refused");
        body.Counted.Should().Be(0, "nothing left for its request's end to give back");

        // Read again (a route that caught the refusal): refused again, never counted again.
        ShouldBeRefused(() => body.ReadExactly(buffer, 0, 1));
        bodies.InFlight.Should().Be(900 * 1024);
    }

    [Fact]
    public void The_oldest_body_growing_is_never_refused_for_the_younger_ones_bytes()
    {
        // Bodies growing together each see the others' bytes: when each refused itself for them, all four of a CI run's
        // were refused at once. Here the younger one has taken nearly all the room when the oldest grows past the bound.
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var bodies = OneMiB(services);
        var oldest = bodies.Counting(new MemoryStream(new byte[600 * 1024]));
        var younger = bodies.Counting(new MemoryStream(new byte[1000 * 1024]));
        Read(oldest, 64 * 1024);
        Read(younger, 900 * 1024);
        bodies.InFlight.Should().Be(964 * 1024, "both fit so far");

        Read(oldest, 536 * 1024); // its whole body: past the bound, by the younger one's bytes only
        bodies.InFlight.Should().Be(1500 * 1024);
        ShouldBeRefused(() => Read(younger, 16 * 1024)); // the younger one's next read
        bodies.InFlight.Should().Be(600 * 1024, "the refused one's bytes given back");
        oldest.Read(new byte[1], 0, 1).Should().Be(0, "the oldest was read whole");

        bodies.Release(oldest);
        bodies.Release(younger);
        bodies.InFlight.Should().Be(0);

        // Its place given up, the next body is the oldest: one body alone always fits.
        var next = bodies.Counting(new MemoryStream(new byte[1000 * 1024]));
        Read(next, 1000 * 1024);
        bodies.Release(next);
        bodies.InFlight.Should().Be(0);
    }

    [Fact]
    public void The_oldest_body_growing_is_refused_when_the_announced_bodies_leave_it_no_room()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var bodies = OneMiB(services);
        bodies.TryAdd(700 * 1024).Should().BeTrue("a body whose length was announced");
        var oldest = bodies.Counting(new MemoryStream(new byte[600 * 1024]));
        Read(oldest, 320 * 1024);
        ShouldBeRefused(() => Read(oldest, 16 * 1024));
        bodies.InFlight.Should().Be(700 * 1024);

        bodies.TryAdd(400 * 1024).Should().BeFalse("an announced body is refused whole, before it is read");
        bodies.InFlight.Should().Be(700 * 1024, "nothing of a refused announced body is counted");
        bodies.Release(700 * 1024);
        bodies.TryAdd(2 * 1024 * 1024).Should().BeTrue("alone, a body always fits");
        bodies.Release(2 * 1024 * 1024);
        bodies.InFlight.Should().Be(0);
    }

    [Fact]
    public void The_bound_must_hold_one_largest_body()
    {
        var options = new ServerOptions { MaxRequestBodyBytes = 32 * 1024 * 1024, MaxBodyBytesInFlight = 16 * 1024 * 1024 };
        options.Validate().Should().ContainSingle(m => m.Contains("MaxBodyBytesInFlight", StringComparison.Ordinal));
        new ServerOptions().Validate().Should().BeEmpty("the defaults hold together");
    }

    /// <summary>A response feature whose start runs the callbacks registered with <c>OnStarting</c>, as Kestrel's does.</summary>
    private sealed class StartingResponse : Microsoft.AspNetCore.Http.Features.HttpResponseFeature
    {
        private readonly List<(Func<object, Task> Callback, object State)> _starting = [];

        public override void OnStarting(Func<object, Task> callback, object state) => _starting.Add((callback, state));

        public async Task StartAsync()
        {
            foreach (var (callback, state) in Enumerable.Reverse(_starting))
            {
                await callback(state);
            }
        }
    }

    /// <summary>
    /// A body sent half, then (held) the rest once the test says so; with its whole length announced or (chunked) without.
    /// </summary>
    private sealed class HeldContent : HttpContent
    {
        private readonly byte[] _bytes;
        private readonly bool _chunked;
        private readonly bool _hold;

        public HeldContent(byte[] bytes, bool chunked = false, bool hold = true)
        {
            _bytes = bytes;
            _chunked = chunked;
            _hold = hold;
            Headers.ContentType = new("application/json");
        }

        public TaskCompletionSource HalfSent { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            var half = _bytes.Length / 2;
            await stream.WriteAsync(_bytes.AsMemory(0, half));
            await stream.FlushAsync();
            HalfSent.TrySetResult();
            if (_hold)
            {
                await Release.Task;
            }

            await stream.WriteAsync(_bytes.AsMemory(half));
        }

        protected override bool TryComputeLength(out long length)
        {
            length = _bytes.Length;
            return !_chunked;
        }
    }
}
