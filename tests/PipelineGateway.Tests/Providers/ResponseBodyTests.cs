using FluentAssertions;
using PipelineGateway.Providers.Http;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A whole answer read into memory: every byte as sent, around the pooled/own-array boundary, announced or not (a big
/// answer not announced is read in pooled segments and joined once), and never past the bound.
/// </summary>
public sealed class ResponseBodyTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A body sent in reads of awkward sizes, with or without its length announced.</summary>
    private static HttpContent Content(byte[] body, bool announce)
    {
        var content = new StreamContent(new Support.SlicedStream(body, new CsCheck.PCG(1, (ulong)body.Length), 7919));
        content.Headers.ContentLength = announce ? body.Length : null;
        return content;
    }

    [Theory]
    [InlineData(0, true)]
    [InlineData(100, false)]
    [InlineData(PooledBody.MaxPooled - 1, false)]
    [InlineData(PooledBody.MaxPooled, false)]
    [InlineData(PooledBody.MaxPooled, true)]
    [InlineData(PooledBody.MaxPooled + 1, false)]
    [InlineData(PooledBody.MaxPooled + 1, true)]
    [InlineData((PooledBody.MaxPooled * 3) + 12345, false)]
    [InlineData((PooledBody.MaxPooled * 3) + 12345, true)]
    public async Task Every_byte_is_read_as_sent_and_big_answers_are_their_own_arrays(int size, bool announce)
    {
        var body = new byte[size];
        new Random(size).NextBytes(body);

        using var read = await ResponseBody.ReadAsync(Content(body, announce), max: 8 * PooledBody.MaxPooled, Ct);

        read.Span.SequenceEqual(body).Should().BeTrue();
        if (size != PooledBody.MaxPooled)
        {
            // (At exactly the boundary either is right: an array of that size is the pool's size too.)
            read.Pooled.Should().Be(size < PooledBody.MaxPooled, "only a big answer is an array of its own, kept past the read (embeddings)");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_answer_past_the_bound_is_refused_and_not_read_further(bool announce)
    {
        var body = new byte[(3 * PooledBody.MaxPooled) + 1];
        var read = async () => await ResponseBody.ReadAsync(Content(body, announce), max: 3 * PooledBody.MaxPooled, Ct);
        await read.Should().ThrowAsync<InvalidDataException>();
    }
}
