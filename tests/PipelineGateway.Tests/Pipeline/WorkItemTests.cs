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

    private static async Task<ModelGroup> Group()
    {
        await using var gateway = await TestGateway.With(new FakeProvider("a")).StartAsync(Ct);
        gateway.Services.GetRequiredService<ModelCatalog>().TryResolve("m", out var group).Should().BeTrue();
        return group!;
    }
}
