using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Metrics;

namespace PipelineGateway.Server;

/// <summary>
/// What the large request bodies being served hold at once, bounded by <see cref="ServerOptions.MaxBodyBytesInFlight"/>
/// (docs/server.md, "Large request bodies"): a request held in memory costs the process several times its body, so a
/// flood of large ones past the bound is refused (503, <c>Retry-After</c>) rather than taking the process's memory.
/// </summary>
internal sealed class LargeBodies
{
    /// <summary>A body counts from this size on; smaller ones never do and are never refused for it.</summary>
    public const long From = 64 * 1024;

    private readonly ServerOptions _options;
    private readonly Counter<long> _refused;
    private long _bytes;

    /// <param name="options">The bound.</param>
    /// <param name="meters">
    /// Where its instruments go (the gateway's meter, exported with the others): <c>pgw.server.large_bodies.bytes</c>, what
    /// is counted now, and <c>pgw.server.large_bodies.refused</c>, the 503s it gave — what an operator alerts on before
    /// raising the bound.
    /// </param>
    public LargeBodies(ServerOptions options, IMeterFactory meters)
    {
        _options = options;
        var meter = meters.Create(GatewayInstruments.MeterName);
        meter.CreateObservableGauge("pgw.server.large_bodies.bytes", () => InFlight, "By", "Bytes of large request bodies being served, counted toward Gateway:Server:MaxBodyBytesInFlight.");
        _refused = meter.CreateCounter<long>("pgw.server.large_bodies.refused", "{request}", "Requests refused (503 server_busy) because their large bodies did not fit in Gateway:Server:MaxBodyBytesInFlight.");
    }

    /// <summary>What the large bodies being served count now.</summary>
    public long InFlight => Interlocked.Read(ref _bytes);

    /// <summary>Told the new total after every change (tests wait on it rather than on time).</summary>
    internal event Action<long>? Changed;

    public string BusyMessage => $"The gateway is serving as many large request bodies as it holds at once (Gateway:Server:MaxBodyBytesInFlight, {_options.MaxBodyBytesInFlight} bytes); retry shortly.";

    /// <summary>
    /// Counts <paramref name="bytes"/> more of a request's body (<paramref name="mine"/> in all): false when that takes
    /// the large bodies past the bound and the request is not alone (one alone always fits). The caller gives back what
    /// it added (<see cref="Release"/>) either way.
    /// </summary>
    public bool TryAdd(long bytes, long mine)
    {
        var now = Interlocked.Add(ref _bytes, bytes);
        Changed?.Invoke(now);
        if (now <= _options.MaxBodyBytesInFlight || now == mine)
        {
            return true;
        }

        _refused.Add(1);
        return false;
    }

    public void Release(long bytes)
    {
        if (bytes != 0)
        {
            var now = Interlocked.Add(ref _bytes, -bytes); // not inside Changed?.Invoke(…): unevaluated with no listener
            Changed?.Invoke(now);
        }
    }

    /// <summary>A body sent without a length, counted as its bytes arrive from <see cref="From"/> on.</summary>
    public CountedBody Counting(Stream body) => new(body, this);

    /// <summary>
    /// A request body without a length, counted toward the bound as its bytes arrive: past it, a read throws Kestrel's
    /// own refusal of a body, status 503, which every route answers as the 503 <c>server_busy</c>. One request's body is
    /// read by one reader at a time, so the count is this body's alone.
    /// </summary>
    internal sealed class CountedBody(Stream inner, LargeBodies bodies) : Stream
    {
        private long _read;

        /// <summary>What this body has added to the bound so far (given back when its request ends).</summary>
        public long Counted { get; private set; }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            var n = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
            Count(n);
            return n;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override int Read(byte[] buffer, int offset, int count)
        {
            var n = inner.Read(buffer, offset, count);
            Count(n);
            return n;
        }

        private void Count(int n)
        {
            _read += n;
            if (_read < From)
            {
                return;
            }

            var add = _read - Counted;
            Counted = _read;
            if (!bodies.TryAdd(add, Counted))
            {
                // Its room given back now, not when its 503 has been written: bodies growing together past the bound read
                // often, and each would otherwise find the others' refused bytes still counted and be refused too (three
                // 700 KB chunked bodies against a 1 MiB bound all were, by hand).
                bodies.Release(Counted);
                Counted = 0;
                throw new BadHttpRequestException(bodies.BusyMessage, StatusCodes.Status503ServiceUnavailable);
            }
        }

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => _read; set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
