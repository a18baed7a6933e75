using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>The work item's own bookkeeping, kept small per request (issue 21): attempts and a stream's state.</summary>
public sealed class WorkItemTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly Deadlines Deadlines = new(TimeProvider.System);

    [Fact]
    public async Task An_attempt_list_taken_earlier_is_not_changed_by_a_later_attempt()
    {
        var group = await Group();
        var deployment = group.DeploymentArray[0];
        var item = new WorkItem(TestGateway.Request(), group, stream: false, TimeSpan.FromMinutes(1), Deadlines, CancellationToken.None);
        item.SnapshotAttempts().Should().BeEmpty();

        item.AddAttempt(deployment, new GatewayAttempt("a", "m", AttemptOutcome.RetryableError, TimeSpan.FromMilliseconds(5), 500, "boom"));
        var first = item.SnapshotAttempts();
        item.AddAttempt(deployment, new GatewayAttempt("a", "m", AttemptOutcome.Success, TimeSpan.FromMilliseconds(7)));

        first.Select(a => a.Outcome).Should().Equal(AttemptOutcome.RetryableError);
        item.FinalAttempts.Select(a => a.Outcome).Should().Equal(AttemptOutcome.RetryableError, AttemptOutcome.Success);
        item.AttemptCount.Should().Be(2);
        item.HasTried(deployment).Should().BeTrue();
        item.DisposeResources();
    }

    [Fact]
    public async Task A_request_that_is_not_streamed_carries_no_stream_state()
    {
        var group = await Group();
        var item = new WorkItem(TestGateway.Request(), group, stream: false, TimeSpan.FromMinutes(1), Deadlines, CancellationToken.None);

        item.IsStream.Should().BeFalse();
        item.Chunks.Should().BeNull();
        item.StreamStarted.Should().BeFalse();
        item.StreamUsage.Should().BeNull();
        item.TimeToFirstToken.Should().BeNull();
        item.TakeFlushOwed().Should().BeFalse();
        var act = () => item.StreamStarted = true;
        act.Should().Throw<InvalidOperationException>();
        item.DisposeResources();

        var stream = new WorkItem(TestGateway.Request(), group, stream: true, TimeSpan.FromMinutes(1), Deadlines, CancellationToken.None);
        stream.DeliverChunksInline();
        stream.StreamStarted = true;
        stream.TimeToFirstToken = TimeSpan.FromMilliseconds(3);
        stream.EndBurst();
        stream.StreamStarted.Should().BeTrue();
        stream.TimeToFirstToken.Should().Be(TimeSpan.FromMilliseconds(3));
        stream.TakeFlushOwed().Should().BeTrue("a burst's end is owed to an inline reader once");
        stream.TakeFlushOwed().Should().BeFalse();
        stream.DisposeResources();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_cancelled_hedge_caught_between_its_two_legs_records_lists_the_leg_not_recorded_yet(bool hedgeEndedFirst)
    {
        // The legs of a hedged attempt are recorded one after the other as their worker unwinds; a request log row built
        // between the two once listed only one leg (seen as a flaky RequestLogTests run).
        var group = await Group(new FakeProvider("a"), new FakeProvider("b"));
        var (primary, hedge) = (group.DeploymentArray[0], group.DeploymentArray[1]);
        var clock = TestGateway.Clock();
        var item = new WorkItem(TestGateway.Request(), group, stream: false, TimeSpan.FromMinutes(1), Deadlines, CancellationToken.None);
        item.Sending(primary, clock.GetTimestamp());
        item.SendingHedge(hedge, clock.GetTimestamp());
        item.Cancel(CancelReason.Caller);
        clock.Advance(TimeSpan.FromMilliseconds(40));

        item.AttemptsWithUnrecorded(clock)!.Select(a => (a.Provider, a.Outcome, a.Error)).Should().Equal(
            [("a", AttemptOutcome.Cancelled, "caller"), ("b", AttemptOutcome.Cancelled, "caller")], "neither leg recorded yet");

        var (early, late) = hedgeEndedFirst ? (hedge, primary) : (primary, hedge);
        item.AddAttempt(early, new GatewayAttempt(early.ProviderName, early.Model, AttemptOutcome.Cancelled, TimeSpan.FromMilliseconds(39), null, "caller"));
        var between = item.AttemptsWithUnrecorded(clock);
        between!.Select(a => (a.Provider, a.Outcome, a.Latency)).Should().Equal(
            [(early.ProviderName, AttemptOutcome.Cancelled, TimeSpan.FromMilliseconds(39)), (late.ProviderName, AttemptOutcome.Cancelled, TimeSpan.FromMilliseconds(40))],
            "the recorded leg as it was recorded, the other as its worker will record it");
        between![1].Deployment.Should().BeSameAs(late);

        item.AddAttempt(late, new GatewayAttempt(late.ProviderName, late.Model, AttemptOutcome.Cancelled, TimeSpan.FromMilliseconds(41), null, "caller"));
        item.AttemptsWithUnrecorded(clock).Should().BeNull("both legs are recorded: nothing is missing");
        item.DisposeResources();
    }

    [Fact]
    public async Task An_attempt_that_is_not_hedged_is_missing_only_until_it_is_recorded()
    {
        var group = await Group(new FakeProvider("a"), new FakeProvider("b"));
        var clock = TestGateway.Clock();
        var item = new WorkItem(TestGateway.Request(), group, stream: false, TimeSpan.FromMinutes(1), Deadlines, CancellationToken.None);
        item.AttemptsWithUnrecorded(clock).Should().BeNull("nothing was sent");
        item.Sending(group.DeploymentArray[0], clock.GetTimestamp());
        item.Cancel(CancelReason.Caller);
        item.AttemptsWithUnrecorded(clock)!.Select(a => a.Provider).Should().Equal("a");
        item.AddAttempt(group.DeploymentArray[0], new GatewayAttempt("a", "m", AttemptOutcome.Cancelled, TimeSpan.Zero, null, "caller"));
        item.AttemptsWithUnrecorded(clock).Should().BeNull();
        item.DisposeResources();
    }

    private static async Task<ModelGroup> Group(params FakeProvider[] providers)
    {
        await using var gateway = await TestGateway.With(providers.Length == 0 ? [new FakeProvider("a")] : providers).StartAsync(Ct);
        gateway.Services.GetRequiredService<ModelCatalog>().TryResolve("m", out var group).Should().BeTrue();
        return group!;
    }
}
