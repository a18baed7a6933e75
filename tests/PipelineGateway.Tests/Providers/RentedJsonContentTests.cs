using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using FluentAssertions;
using Microsoft.Extensions.Logging.Abstractions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Http;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The upstream body in a rented buffer (<see cref="RentedJsonContent"/>): sent with its length and type, as often as
/// the handler asks while the message lives, and given back to the pool only once it is disposed and no send reads it
/// — a send still writing when the attempt ends (an HTTP/2 upstream that answered early) keeps it until it is done.
/// </summary>
public sealed class RentedJsonContentTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly byte[] Body = Encoding.UTF8.GetBytes("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" + new string('x', 70_000) + "\"}]}");

    [Fact]
    public async Task It_is_sent_with_its_length_and_type_and_as_often_as_asked_until_disposed()
    {
        var content = new RentedJsonContent(Body);
        content.Headers.ContentLength.Should().Be(Body.Length, "the upstream gets a Content-Length, not a chunked body");
        content.Headers.ContentType!.ToString().Should().Be("application/json; charset=utf-8");

        for (var send = 0; send < 2; send++)
        {
            using var sent = new MemoryStream();
            await content.CopyToAsync(sent, Ct);
            sent.ToArray().Should().Equal(Body, "a second send (the handler's retry on a new connection) reads the same bytes");
        }

        content.Returned.Should().BeFalse();
        content.Dispose();
        content.Returned.Should().BeTrue("disposed with no send reading: the buffer is back in the pool");
        content.Dispose(); // twice: nothing more happens

        var late = async () => await content.CopyToAsync(new MemoryStream(), Ct);
        await late.Should().ThrowAsync<ObjectDisposedException>("a send after disposal reads nothing");
    }

    [Fact]
    public async Task A_send_still_writing_at_disposal_keeps_the_buffer_until_it_ends()
    {
        var content = new RentedJsonContent(Body);
        var first = new GatedStream();
        var second = new GatedStream();
        var sending = content.CopyToAsync(first, Ct);
        var alsoSending = content.CopyToAsync(second, Ct);
        await first.Entered.Task.WaitAsync(Ct);
        await second.Entered.Task.WaitAsync(Ct);

        content.Dispose();
        content.Returned.Should().BeFalse("two sends still read the buffer");

        first.Gate.SetResult();
        await sending;
        content.Returned.Should().BeFalse("one send still reads it");
        first.Written.Should().Equal(Body);

        second.Gate.SetResult();
        await alsoSending;
        content.Returned.Should().BeTrue("the last send to end gave it back");
        second.Written.Should().Equal(Body, "what the send wrote was the body, not a buffer someone else rented meanwhile");
    }

    [Theory]
    [InlineData(70_000, true)]
    [InlineData(RentedJsonContent.MaxRentedBytes + 1, false)]
    public void A_body_goes_back_to_the_shared_pool_unless_it_is_larger_than_a_megabyte(int size, bool pooled)
    {
        // (On one thread: the pool's per-thread slot hands the array just given back to the next rent of its size.)
        var content = new RentedJsonContent(new byte[size]);
        ref readonly var first = ref MemoryMarshal.GetReference(content.Json);
        content.Dispose();

        var next = ArrayPool<byte>.Shared.Rent(size);
        var same = Unsafe.AreSame(ref MemoryMarshal.GetArrayDataReference(next), ref Unsafe.AsRef(in first));
        ArrayPool<byte>.Shared.Return(next);
        same.Should().Be(pooled, pooled ? "a body's buffer is the pool's" : "a larger body's array is its own, left to the GC, not kept by the pool");
    }

    [Fact]
    public void The_request_body_is_what_the_upstream_writer_wrote()
    {
        var request = new ChatCompletionRequest { Model = "group", Messages = [ChatCompletionMessage.User("Hello")] };
        using var content = RequestJson.ToUpstreamContent(request, "upstream-model", stream: true);

        Encoding.UTF8.GetString(content.Json).Should().Be(Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "upstream-model", stream: true)));
        Encoding.UTF8.GetString(content.Json).Should().StartWith("{\"model\":\"upstream-model\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]");
    }

    [Fact]
    public async Task An_agent_sized_body_reaches_a_real_upstream_whole_attempt_after_attempt()
    {
        // The upstream (Kestrel on 127.0.0.1) parses the request and answers with its last message: a body cut, or
        // one whose buffer went back to the pool too early and was written over, would not parse or not echo.
        await using var upstream = await ScriptedUpstream.StartAsync(Ct);
        var options = new ProviderOptions { Name = "scripted", Type = ProviderTypes.OpenAICompatible, BaseUrl = new Uri(upstream.BaseAddress, "v1").ToString() };
        options.Headers["x-fault"] = "body-echo";
        using var provider = (HttpChatProvider)new HttpProviderFactory(ProviderTypes.OpenAICompatible).Create(options, TimeProvider.System, NullLoggerFactory.Instance);

        for (var attempt = 0; attempt < 8; attempt++)
        {
            var answer = $"{{\"id\":\"c{attempt}\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"u\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"step {attempt}\"}},\"finish_reason\":\"stop\"}}]}}";
            var request = new ChatCompletionRequest
            {
                Model = "group",
                Messages = [ChatCompletionMessage.System(new string((char)('a' + attempt), 60_000)), ChatCompletionMessage.User(answer)],
            };

            var response = await provider.CompleteAsync(new ProviderRequest(request, "upstream-model"), Ct);
            response.Choices[0].Message!.Content!.Text.Should().Be($"step {attempt}");
        }
    }

    /// <summary>A stream whose write waits for the test's signal, then keeps what it was given (copied at that moment).</summary>
    private sealed class GatedStream : Stream
    {
        public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Gate { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public byte[] Written { get; private set; } = [];

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Entered.TrySetResult();
            await Gate.Task.WaitAsync(cancellationToken);
            Written = buffer.ToArray();
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
