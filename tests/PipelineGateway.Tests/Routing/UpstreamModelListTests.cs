using System.Runtime.CompilerServices;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Routing;

/// <summary>
/// A wildcard's upstream model lists over time (<see cref="UpstreamModelList"/>), on a fake clock: read once and kept
/// five minutes for every caller; a failed read logged, the last list shown, asked again after 30 s; a caller waits at
/// most five seconds for a read under way, then goes on with what was known.
/// </summary>
public sealed class UpstreamModelListTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A provider whose model list is scripted: its ids, a failure, or a read held until released.</summary>
    private sealed class ListingProvider(string name) : ILlmProvider, IUpstreamModelLister
    {
        public string Name { get; } = name;

        public string[] Ids { get; set; } = ["gpt-4o"];

        public bool Failing { get; set; }

        public TaskCompletionSource? Hold { get; set; }

        public int Reads;

        public bool CanListModels => true;

        public async Task<IReadOnlyList<string>> ListModelsAsync(CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Reads);
            if (Hold is { } hold)
            {
                await hold.Task;
            }

            return Failing ? throw new ProviderException(AttemptOutcome.RetryableError, "upstream 500", 500) : Ids;
        }

        public ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken) => throw new NotSupportedException();

        public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.CompletedTask;
            yield break;
        }
    }

    /// <summary>A gateway whose wildcard <c>p/*</c> lists the provider's models, on the clock given.</summary>
    private static async Task<(Gateway Gateway, UpstreamModelList List, WildcardModels Wildcard)> StartAsync(ListingProvider provider, Microsoft.Extensions.Time.Testing.FakeTimeProvider clock)
    {
        var gateway = await new GatewayBuilder()
            .AddProvider(provider)
            .AddModel("p/*", m => m.Deploy("p").ListUpstreamModels())
            .UseTimeProvider(clock)
            .StartAsync(Ct);
        return (gateway, gateway.Services.GetRequiredService<UpstreamModelList>(), gateway.Services.GetRequiredService<ModelCatalog>().Wildcards.Single());
    }

    [Fact]
    public async Task A_list_is_read_once_kept_five_minutes_shown_as_last_read_when_a_read_fails_and_asked_again_after_30_s()
    {
        var clock = TestGateway.Clock();
        var provider = new ListingProvider("p");
        var (gateway, list, wildcard) = await StartAsync(provider, clock);
        await using var _ = gateway;
        Task<IReadOnlyList<string>> Names() => list.NamesAsync(wildcard, Ct);

        (await Names()).Should().Equal("p/gpt-4o");
        provider.Ids = ["gpt-4o", "gpt-4.1"];
        clock.Advance(UpstreamModelList.Fresh - TimeSpan.FromSeconds(1));
        (await Names()).Should().Equal(["p/gpt-4o"], "read less than five minutes ago");
        provider.Reads.Should().Be(1);

        clock.Advance(TimeSpan.FromSeconds(1));
        (await Names()).Should().Equal("p/gpt-4o", "p/gpt-4.1");
        provider.Reads.Should().Be(2);

        provider.Failing = true;
        clock.Advance(UpstreamModelList.Fresh);
        (await Names()).Should().Equal(["p/gpt-4o", "p/gpt-4.1"], "the read failed: the last list read is shown");
        clock.Advance(UpstreamModelList.RetryAfterFailure - TimeSpan.FromSeconds(1));
        (await Names()).Should().HaveCount(2);
        provider.Reads.Should().Be(3, "a failure is not asked again at once");

        provider.Failing = false;
        provider.Ids = ["o3"];
        clock.Advance(TimeSpan.FromSeconds(1));
        (await Names()).Should().Equal("p/o3");
        provider.Reads.Should().Be(4);
    }

    [Fact]
    public async Task A_caller_waits_at_most_five_seconds_for_a_read_under_way_and_every_caller_shares_it()
    {
        var clock = TestGateway.Clock();
        var provider = new ListingProvider("p") { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        var (gateway, list, wildcard) = await StartAsync(provider, clock);
        await using var _ = gateway;

        var first = list.NamesAsync(wildcard, Ct);
        var second = list.NamesAsync(wildcard, Ct);
        first.IsCompleted.Should().BeFalse("the read is under way");
        clock.Advance(UpstreamModelList.Wait);
        (await first).Should().BeEmpty("nothing was read yet: the caller goes on without it");
        (await second).Should().BeEmpty();

        provider.Hold.SetResult();
        (await list.NamesAsync(wildcard, Ct)).Should().Equal(["p/gpt-4o"], "the read under way lands for the next caller");
        provider.Reads.Should().Be(1, "one read for every caller");
    }
}
