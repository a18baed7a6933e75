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

    // One lock for the count and the growing bodies' order: only requests with bodies of 64 KiB or more take it (a
    // chunked body once per read of its own), never a small request — measured nowhere near a hot path.
    private readonly Lock _lock = new();

    /// <summary>The bodies sent without a length that count now, the oldest first (<see cref="CountedBody"/>).</summary>
    private readonly LinkedList<CountedBody> _growing = new();

    private long _bytes;
    private long _growingBytes;

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

    /// <summary>Told the new total after every change, in the order of the changes (tests wait on it rather than on time).</summary>
    internal event Action<long>? Changed;

    public string BusyMessage => $"The gateway is serving as many large request bodies as it holds at once (Gateway:Server:MaxBodyBytesInFlight, {_options.MaxBodyBytesInFlight} bytes); retry shortly.";

    /// <summary>
    /// Counts a body of <paramref name="bytes"/> whose length was announced, whole, before it is read: false (nothing
    /// counted) when it does not fit in the room left and other large bodies are being served (one alone always fits).
    /// Counted, it is given back with <see cref="Release"/> when its request ends.
    /// </summary>
    public bool TryAdd(long bytes)
    {
        lock (_lock)
        {
            if (_bytes != 0 && _bytes + bytes > _options.MaxBodyBytesInFlight)
            {
                _refused.Add(1);
                return false;
            }

            Change(bytes);
            return true;
        }
    }

    /// <summary>Gives back what <see cref="TryAdd"/> counted.</summary>
    public void Release(long bytes)
    {
        if (bytes != 0)
        {
            lock (_lock)
            {
                Change(-bytes);
            }
        }
    }

    /// <summary>A body sent without a length, counted as its bytes arrive from <see cref="From"/> on.</summary>
    public CountedBody Counting(Stream body) => new(body, this);

    /// <summary>Under the lock: the count moved by <paramref name="bytes"/>, told to listeners in order.</summary>
    private void Change(long bytes)
    {
        var now = _bytes + bytes;
        Interlocked.Exchange(ref _bytes, now); // written under the lock; read without it by the gauge
        Changed?.Invoke(now);
    }

    /// <summary>
    /// Counts <paramref name="add"/> more bytes of a growing <paramref name="body"/> (its first count makes it one, after
    /// any counting already). False — its bytes given back — when it no longer fits: a younger body when the count is
    /// past the bound; the oldest one only when the bodies with announced lengths leave it no room (or not even then
    /// when there are none). The oldest is never refused for the younger ones' bytes: bodies growing together each see
    /// the others' bytes, and when each refused itself for them, all of four were refused at once (a CI run's fresh
    /// clone). The bound is then passed by at most that one body, until the younger ones' next reads refuse them.
    /// </summary>
    private bool TryGrow(CountedBody body, long add)
    {
        lock (_lock)
        {
            if (body.Done)
            {
                return true; // read after its count was given back (its answer had started): no longer counted
            }

            body.Place ??= _growing.AddLast(body);
            body.Counted += add;
            _growingBytes += add;
            Change(add);
            var announced = _bytes - _growingBytes;
            var fits = ReferenceEquals(_growing.First, body.Place)
                ? announced == 0 || announced + body.Counted <= _options.MaxBodyBytesInFlight
                : _bytes <= _options.MaxBodyBytesInFlight;
            if (fits)
            {
                return true;
            }

            _refused.Add(1);
            Ended(body);
            return false;
        }
    }

    /// <summary>Under the lock: a growing body's bytes given back and its place left (refused, or its request ended).</summary>
    private void Ended(CountedBody body)
    {
        if (body.Place is { } place)
        {
            _growing.Remove(place);
            body.Place = null;
        }

        _growingBytes -= body.Counted;
        Change(-body.Counted);
        body.Counted = 0;
    }

    /// <summary>Gives back what a growing body counts, once its answer has started or its request ended; it no longer counts.</summary>
    public void Release(CountedBody body)
    {
        lock (_lock)
        {
            body.Done = true;
            if (body.Counted != 0 || body.Place is not null)
            {
                Ended(body);
            }
        }
    }

    /// <summary>
    /// A request body without a length, counted toward the bound as its bytes arrive: past it, a read throws Kestrel's
    /// own refusal of a body, status 503, which every route answers as the 503 <c>server_busy</c>. One request's body is
    /// read by one reader at a time.
    /// </summary>
    internal sealed class CountedBody(Stream inner, LargeBodies bodies) : Stream
    {
        private long _read;
        private bool _refused;

        /// <summary>What this body has added to the bound so far (given back when its request ends). Under the bodies' lock.</summary>
        public long Counted { get; set; }

        /// <summary>Given back for good (<see cref="Release(CountedBody)"/>): read further, it counts nothing. Under the bodies' lock.</summary>
        internal bool Done { get; set; }

        /// <summary>Its place among the growing bodies, oldest first, once it counts. Under the bodies' lock.</summary>
        internal LinkedListNode<CountedBody>? Place { get; set; }

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
            if (_refused)
            {
                throw Busy(); // read again after its refusal (a route that caught it): refused again, never counted again
            }

            _read += n;
            if (_read < From || n == 0)
            {
                return;
            }

            // Refused, its room is given back now, not when its 503 has been written: bodies growing together past the
            // bound read often, and each would otherwise find the others' refused bytes still counted and be refused too
            // (three 700 KB chunked bodies against a 1 MiB bound all were, by hand).
            if (!bodies.TryGrow(this, _read - Counted))
            {
                _refused = true;
                throw Busy();
            }
        }

        private BadHttpRequestException Busy() => new(bodies.BusyMessage, StatusCodes.Status503ServiceUnavailable);

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
