using System.Runtime.CompilerServices;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Admission;
using PipelineGateway.Cost;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Metrics;

/// <summary>
/// A stream that fails after its content reached the caller — the caller leaves (reads the answer and disconnects before
/// the last event), its deadline passes, the upstream breaks — was generated upstream, and the provider bills it: the
/// gateway bills it too, the same figure in the metrics, every budget and the token limits (docs/metrics.md). Before,
/// such a stream cost nothing, so a tenant could read whole answers past its budget.
/// </summary>
public sealed class InterruptedStreamAccountingTests
{
    private const long TokenLimit = AccountingTests.TokenLimit;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // $1 per prompt token and $2 per completion token (AccountingTests.Accounted).
    private static async Task<Gateway> StartAsync(FakeProvider provider, Action<GatewayOptions>? tweak = null) =>
        await AccountingTests.Accounted(provider).Configure(o => tweak?.Invoke(o)).StartAsync(Ct);

    /// <summary>
    /// Three content events, then (when <paramref name="usage"/>) the finish and the usage — <paramref name="usageTaken"/>
    /// set once the gateway asked for the event after it, so it has read the usage — then nothing until cancelled or
    /// <paramref name="then"/> throws.
    /// </summary>
    private static async IAsyncEnumerable<ChatCompletionChunk> ThreeWordsThen(ProviderRequest r, TokenUsage? usage, Exception? then, [EnumeratorCancellation] CancellationToken ct, TaskCompletionSource? usageTaken = null)
    {
        await Task.Yield();
        yield return FakeProvider.Chunk(r.Model, "one");
        yield return FakeProvider.Chunk(r.Model, " two");
        yield return FakeProvider.Chunk(r.Model, " three");
        if (usage is not null)
        {
            yield return FakeProvider.Chunk(r.Model, string.Empty, FinishReasons.Stop);
            yield return new ChatCompletionChunk { Id = "fake", Model = r.Model, Choices = [], Usage = usage };
            usageTaken?.TrySetResult();
        }

        if (then is not null)
        {
            throw then;
        }

        await FakeProvider.UntilCancelled(ct);
    }

    /// <summary>
    /// Reads the stream's chunks until <paramref name="content"/> arrived and <paramref name="before"/> (if any) is done,
    /// then leaves it (the enumerator disposed: the caller went away).
    /// </summary>
    private static async Task<string> ReadThenLeaveAsync(Gateway gateway, string content, Task? before = null)
    {
        var read = string.Empty;
        await foreach (var chunk in gateway.StreamAsync(TestGateway.Request(), Ct))
        {
            read += chunk.Choices.Count > 0 ? chunk.Choices[0].Delta?.Content : null;
            if (read == content)
            {
                await (before ?? Task.CompletedTask).WaitAsync(Ct);
                break;
            }
        }

        return read;
    }

    private static (decimal Spent, decimal Reserved, long TokensCharged) Charged(Gateway gateway)
    {
        var (spent, reserved) = gateway.Services.GetRequiredService<BudgetTracker>().Balances().Values.Single();
        var tokens = gateway.Services.GetRequiredService<AdmissionRateLimiter>().GetStatus(TestGateway.Request()).Single();
        return (spent, reserved, TokenLimit - tokens.Remaining);
    }

    [Fact]
    public async Task A_stream_the_caller_leaves_after_its_content_is_billed_the_estimate_of_what_it_consumed()
    {
        var provider = new FakeProvider("p") { OnStream = (r, ct) => ThreeWordsThen(r, null, null, ct) };
        await using var gateway = await StartAsync(provider);

        (await ReadThenLeaveAsync(gateway, "one two three")).Should().Be("one two three");
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CancelledRequests == 1, "the request ended as cancelled");

        var prompt = TokenCounter.CountPrompt(TestGateway.Request(), "m");
        var expected = (prompt * 1m) + (3 * 2m); // the prompt, and one token per content event that went out
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.PromptTokens.Should().Be(prompt);
        snapshot.CompletionTokens.Should().Be(3);
        snapshot.TotalCost.Should().Be(expected, "the provider generated what the caller read");
        snapshot.Providers["p"].TotalCost.Should().Be(expected);
        snapshot.Models.Values.Sum(m => m.TotalCost).Should().Be(expected);
        snapshot.Keys.Values.Sum(k => k.TotalCost).Should().Be(expected);
        var (spent, reserved, tokens) = Charged(gateway);
        spent.Should().Be(expected, "budgets and metrics agree");
        reserved.Should().Be(0);
        tokens.Should().Be(prompt + 3, "the token limit is charged what was consumed");
    }

    [Fact]
    public async Task A_stream_left_after_the_upstream_reported_its_usage_is_billed_that_usage()
    {
        // The finish and the usage are held by the gateway until the upstream ends (they carry the cost): the caller
        // has read the content, and leaves while the upstream has not closed the stream yet.
        var usageTaken = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = new FakeProvider("p") { OnStream = (r, ct) => ThreeWordsThen(r, TokenUsage.Of(7, 5), null, ct, usageTaken) };
        await using var gateway = await StartAsync(provider);

        await ReadThenLeaveAsync(gateway, "one two three", usageTaken.Task); // the gateway has read the usage: then the caller leaves
        await Wait.Until(() => gateway.Metrics.GetSnapshot().CancelledRequests == 1, "the request ended as cancelled");

        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.PromptTokens.Should().Be(7, "the upstream's own count, not an estimate");
        snapshot.CompletionTokens.Should().Be(5);
        snapshot.TotalCost.Should().Be(17m);
        Charged(gateway).Should().Be((17m, 0m, 12L));
    }

    [Fact]
    public async Task A_stream_the_upstream_breaks_after_its_content_is_billed_what_it_consumed_and_fails()
    {
        var provider = new FakeProvider("p") { OnStream = (r, ct) => ThreeWordsThen(r, null, FakeProvider.Fail503(), ct) };
        await using var gateway = await StartAsync(provider);

        var read = string.Empty;
        var act = async () =>
        {
            await foreach (var chunk in gateway.StreamAsync(TestGateway.Request(), Ct))
            {
                read += chunk.Choices.Count > 0 ? chunk.Choices[0].Delta?.Content : null;
            }
        };

        await act.Should().ThrowAsync<AllProvidersFailedException>();
        read.Should().Be("one two three");
        var prompt = TokenCounter.CountPrompt(TestGateway.Request(), "m");
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.FailedRequests.Should().Be(1);
        snapshot.CompletionTokens.Should().Be(3);
        snapshot.TotalCost.Should().Be((prompt * 1m) + 6m);
        Charged(gateway).Should().Be(((prompt * 1m) + 6m, 0m, prompt + 3L));
    }

    [Fact]
    public async Task A_stream_that_fails_before_any_content_went_out_costs_nothing()
    {
        // Nothing reached the caller: the attempt is a failure like any other (the fallback, when there is one, is billed).
        var provider = new FakeProvider("p") { OnStream = (r, ct) => BreaksAtOnce(ct) };
        await using var gateway = await StartAsync(provider, o => o.Pipeline.MaxAttempts = 1);

        var act = async () => await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        await act.Should().ThrowAsync<AllProvidersFailedException>();
        var snapshot = gateway.Metrics.GetSnapshot();
        snapshot.TotalCost.Should().Be(0);
        snapshot.PromptTokens.Should().Be(0);
        Charged(gateway).Should().Be((0m, 0m, 0L));

        static async IAsyncEnumerable<ChatCompletionChunk> BreaksAtOnce([EnumeratorCancellation] CancellationToken ct)
        {
            await Task.Yield();
            yield return new ChatCompletionChunk { Id = "fake", Model = "m", Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Role = ChatRoles.Assistant } }] };
            throw FakeProvider.Fail503();
        }
    }
}
