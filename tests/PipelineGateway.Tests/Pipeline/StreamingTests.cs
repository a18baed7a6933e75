using System.Runtime.CompilerServices;
using FluentAssertions;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

public sealed class StreamingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_stream_yields_the_provider_chunks_and_the_first_carries_the_gateway_info()
    {
        var a = new FakeProvider("a");
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);

        var chunks = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        chunks.Select(c => c.Choices[0].Delta.Content).Should().Equal("hello", " world");
        chunks[0].Gateway!.Provider.Should().Be("a");
        chunks[0].Gateway!.Attempts.Should().ContainSingle();
        chunks[^1].Choices[0].FinishReason.Should().Be(FinishReasons.Stop);
    }

    [Fact]
    public async Task A_stream_that_fails_before_its_first_chunk_falls_back_to_the_next_provider()
    {
        var a = new FakeProvider("a") { OnStream = (_, _) => FailingStream() };
        var b = new FakeProvider("b");
        await using var gateway = await TestGateway.With(a, b).StartAsync(Ct);

        var chunks = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        chunks.Should().HaveCount(2);
        chunks[0].Gateway!.Provider.Should().Be("b");
        chunks[0].Gateway!.Attempts.Select(x => x.Outcome).Should().Equal(AttemptOutcome.RetryableError, AttemptOutcome.Success);
    }

    [Fact]
    public async Task A_stream_that_breaks_after_its_first_chunk_ends_with_an_error_and_no_fallback()
    {
        var a = new FakeProvider("a") { OnStream = (r, _) => BreaksAfterFirst(r.Model) };
        var b = new FakeProvider("b");
        await using var gateway = await TestGateway.With(a, b).StartAsync(Ct);
        var received = new List<string?>();

        var act = async () =>
        {
            await foreach (var c in gateway.StreamAsync(TestGateway.Request(), Ct))
            {
                received.Add(c.Choices[0].Delta.Content);
            }
        };

        (await act.Should().ThrowAsync<AllProvidersFailedException>()).Which.Message.Should().Contain("broke after it started");
        received.Should().Equal("partial");
        b.Calls.Should().Be(0, "output already reached the caller");
    }

    [Fact]
    public async Task Stopping_enumeration_early_cancels_the_upstream_stream()
    {
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = new FakeProvider("a") { OnStream = (r, ct) => Endless(r.Model, cancelled, ct) };
        await using var gateway = await TestGateway.With(a).StartAsync(Ct);

        await foreach (var _ in gateway.StreamAsync(TestGateway.Request(), Ct))
        {
            break;
        }

        await cancelled.Task.WaitAsync(TimeSpan.FromSeconds(20), Ct);
        await Wait.Until(() => gateway.Metrics.GetSnapshot().TotalRequests == 1, "the request ends");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.CancelledRequests.Should().Be(1, "the request ends as a cancellation, whatever order the cancellation callbacks ran in");
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> FailingStream()
    {
        await Task.Yield();
        throw FakeProvider.Fail503();
#pragma warning disable CS0162 // an iterator needs a yield
        yield break;
#pragma warning restore CS0162
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> BreaksAfterFirst(string model)
    {
        yield return FakeProvider.Chunk(model, "partial");
        await Task.Yield();
        throw new ProviderException(AttemptOutcome.RetryableError, "connection reset");
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> Endless(string model, TaskCompletionSource cancelled, [EnumeratorCancellation] CancellationToken ct)
    {
        // Observed in finally rather than with ct.Register: a registration can be disposed by the iterator's own
        // unwinding (when another cancellation callback resumes it inline) before its callback runs.
        try
        {
            for (var i = 0; ; i++)
            {
                yield return FakeProvider.Chunk(model, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                await Task.Delay(1, ct);
            }
        }
        finally
        {
            if (ct.IsCancellationRequested)
            {
                cancelled.TrySetResult();
            }
        }
    }
}
