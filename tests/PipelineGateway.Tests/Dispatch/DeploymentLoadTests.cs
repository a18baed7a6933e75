using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Dispatch;

/// <summary>
/// A deployment's in-flight count (what least-load routing and the hedge choice read) goes back to zero whatever way
/// each request ended: answered, failed over, hedged, cancelled by its caller mid-call, or past its deadline mid-call —
/// or ended while it waited in the provider's queue (taken out at once; a worker that took it first finds it ended), never sent.
/// </summary>
public sealed class DeploymentLoadTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Every_deployment_load_returns_to_zero_however_its_requests_ended()
    {
        var clock = TestGateway.Clock();
        var hang = FakeProvider.NeverAnswers("hang");
        var failing = new FakeProvider("failing") { OnComplete = (_, _) => throw new ProviderException(AttemptOutcome.RetryableError, "boom", 500) };
        var ok = new FakeProvider("ok");
        await using var gateway = await new GatewayBuilder()
            .AddProvider(hang, workers: 4, queueCapacity: 64)
            .AddProvider(failing, workers: 2, queueCapacity: 64)
            .AddProvider(ok, workers: 2, queueCapacity: 64)
            .AddModel("plain", m => m.Strategy("Priority").Deploy("ok"))
            .AddModel("fails-over", m => m.Strategy("Priority").Deploy("failing").Deploy("ok"))
            .AddModel("hedged", m => m.Strategy("Priority").Deploy("hang").Deploy("ok"))
            .AddModel("hangs", m => m.Strategy("Priority").Deploy("hang"))
            .UseTimeProvider(clock)
            .Configure(o => o.Models.Single(m => m.Name == "hedged").Hedging = new HedgingOptions { Delay = TimeSpan.FromMilliseconds(100) })
            .StartAsync(Ct);

        (await gateway.SubmitAsync(TestGateway.Request("plain"), Ct)).Content.Should().Be("ok");
        (await gateway.SubmitAsync(TestGateway.Request("fails-over"), Ct)).Gateway!.Provider.Should().Be("ok");

        var hedged = gateway.SubmitAsync(TestGateway.Request("hedged"), Ct).AsTask();
        await Wait.Until(() => hang.Calls == 1, "the hedged request's first attempt hangs");
        clock.Advance(TimeSpan.FromMilliseconds(100));
        (await hedged.WaitAsync(TimeSpan.FromSeconds(30), Ct)).Gateway!.Provider.Should().Be("ok");

        using var caller = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var cancelled = gateway.SubmitAsync(TestGateway.Request("hangs"), caller.Token).AsTask();
        var timed = TestGateway.Request("hangs");
        timed.Gateway = new GatewayRequestOptions { Timeout = TimeSpan.FromSeconds(5) };
        var expired = gateway.SubmitAsync(timed, Ct).AsTask();
        await Wait.Until(() => hang.Calls == 3, "both requests are upstream");
        await caller.CancelAsync();
        clock.Advance(TimeSpan.FromSeconds(5));
        await FluentActions.Awaiting(() => cancelled).Should().ThrowAsync<RequestCancelledException>();
        await FluentActions.Awaiting(() => expired).Should().ThrowAsync<DeadlineExceededException>();

        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        await Wait.Until(() => pipeline.Outstanding == 0, "every request is retired");
        var catalog = gateway.Services.GetRequiredService<ModelCatalog>();
        var loads = catalog.Groups.SelectMany(g => g.DeploymentArray).Select(d => (Name: $"{d.Pool.Name}/{d.Model}", d.State.InFlight)).ToList();
        loads.Should().OnlyContain(l => l.InFlight == 0, "no request's end leaves load on a deployment: {0}", string.Join(", ", loads));
    }

    [Fact]
    public async Task A_request_that_ended_while_queued_is_never_sent_and_leaves_no_load()
    {
        var clock = TestGateway.Clock();
        using var gate = new SemaphoreSlim(0);
        var busy = FakeProvider.AnswersWhenReleased("busy", gate);
        await using var gateway = await new GatewayBuilder()
            .AddProvider(busy, workers: 1, queueCapacity: 8)
            .AddModel("m", m => m.Deploy("busy"))
            .UseTimeProvider(clock)
            .StartAsync(Ct);
        var deployment = gateway.Services.GetRequiredService<ModelCatalog>().Groups.Single().DeploymentArray.Single();

        // The only worker is held by the first request; the next two wait in the provider's queue, routed (counted as
        // load on the deployment) but not sent.
        var first = gateway.SubmitAsync(TestGateway.Request("m"), Ct).AsTask();
        await Wait.Until(() => busy.Calls == 1, "the first request holds the only worker");
        using var caller = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var cancelled = gateway.SubmitAsync(TestGateway.Request("m"), caller.Token).AsTask();
        var timed = TestGateway.Request("m");
        timed.Gateway = new GatewayRequestOptions { Timeout = TimeSpan.FromSeconds(5) };
        var expired = gateway.SubmitAsync(timed, Ct).AsTask();
        await Wait.Until(() => deployment.State.InFlight == 3, "both queued requests are routed to the deployment");

        await caller.CancelAsync();
        clock.Advance(TimeSpan.FromSeconds(5));
        await FluentActions.Awaiting(() => cancelled).Should().ThrowAsync<RequestCancelledException>();
        await FluentActions.Awaiting(() => expired).Should().ThrowAsync<DeadlineExceededException>();

        // The worker is let go: the two ended requests are not sent, and their load is let go of.
        gate.Release();
        (await first.WaitAsync(TimeSpan.FromSeconds(30), Ct)).Content.Should().Be("ok");
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        await Wait.Until(() => pipeline.Outstanding == 0, "every request is retired");
        busy.Calls.Should().Be(1, "a request that ended while queued is never sent upstream");
        deployment.State.InFlight.Should().Be(0, "an ended request's load is let go of");
    }
}
