using System.Collections.Concurrent;
using System.Threading.Channels;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>
/// Stages handling a write on the writer's thread when idle (<see cref="StageChannel"/>, issue 21): what must hold is
/// that an item never passes one already queued, a busy stage still queues, the nesting per thread is capped, and the
/// gateway answers the same with the shortcut off.
/// </summary>
public sealed class PassThroughTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task An_idle_stage_handles_a_write_on_the_writers_thread_and_a_busy_one_queues_it_in_order()
    {
        await using var gateway = await TestGateway.With(new FakeProvider("a")).StartAsync(Ct);
        var (pipeline, group) = Services(gateway);
        var release = new ManualResetEventSlim();
        var stage = new RecordingStage(Channel(out var channel), pipeline, item => item.Request.Messages[0].Content!.Text == "1" ? release : null);
        channel.Attach(stage);
        await stage.StartAsync(Ct);

        // 1 is handled inline on another thread, which the handler then holds: the stage is owned.
        var first = Task.Run(() => channel.Writer.TryWrite(Item(group, "1")), Ct);
        await Wait.Until(() => stage.Seen.Count == 1, "the first item is being handled");

        // 2 and 3 find the stage owned: they queue, and nothing may pass them.
        Write(channel, Item(group, "2")).Should().BeTrue();
        Write(channel, Item(group, "3")).Should().BeTrue();
        channel.Reader.Count.Should().Be(2);
        release.Set();
        (await first).Should().BeTrue();
        await Wait.Until(() => stage.Seen.Count == 3 && channel.Reader.Count == 0, "the loop handles the queued items");
        await Wait.Until(() => stage.IsIdle, "the loop lets go of the stage");

        // Idle and empty again: 4 is handled here, on this thread, before TryWrite returns.
        Write(channel, Item(group, "4")).Should().BeTrue();
        stage.Seen.Select(s => s.Text).Should().Equal("1", "2", "3", "4");
        stage.Seen.Select(s => s.InWrite).Should().Equal([false, false, false, true], "2 and 3 were the loop's; 4 ran inside its write");
        await stage.StopAsync(Ct);
        stage.Dispose();
    }

    [Fact]
    public async Task Nesting_on_one_thread_is_capped_and_the_rest_of_a_chain_goes_through_the_channels()
    {
        await using var gateway = await TestGateway.With(new FakeProvider("a")).StartAsync(Ct);
        var (pipeline, group) = Services(gateway);

        // Six stages in a row, each handing the item to the next: one thread runs at most four of them inline.
        var stages = new List<RecordingStage>();
        StageChannel? next = null;
        for (var i = 0; i < 6; i++)
        {
            var downstream = next;
            var stage = new RecordingStage(Channel(out var channel), pipeline, null, downstream);
            channel.Attach(stage);
            await stage.StartAsync(Ct);
            stages.Insert(0, stage);
            next = channel;
        }

        Write(next!, Item(group, "x")).Should().BeTrue();
        await Wait.Until(() => stages[^1].Seen.Count == 1, "the item reaches the last stage");

        stages.Take(4).Should().OnlyContain(s => s.Seen.Single().InWrite, "four stages ran inside the first write");
        stages[4].Seen.Single().InWrite.Should().BeFalse("the fifth stage is past the cap: its loop handles it");
        foreach (var stage in stages)
        {
            await stage.StopAsync(Ct);
            stage.Dispose();
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Requests_are_answered_alike_with_the_shortcut_on_or_off(bool passThrough)
    {
        var a = new FakeProvider("a");
        await using var gateway = await TestGateway.With(a).Configure(o => o.Pipeline.PassThroughIdleStages = passThrough).StartAsync(Ct);

        var answers = await Task.WhenAll(Enumerable.Range(0, 200).Select(_ => gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask()));
        var chunks = new List<ChatCompletionChunk>();
        await foreach (var chunk in gateway.StreamAsync(TestGateway.Request(), Ct))
        {
            chunks.Add(chunk);
        }

        answers.Should().OnlyContain(r => r.Content == "ok");
        chunks.Should().NotBeEmpty();
        a.Calls.Should().Be(201);
        // A stream's caller sees its end as the worker writes it; the worker retires the item just after, so the count
        // reaches zero a moment later (it failed once in CI when read at once).
        var pipeline = gateway.Services.GetRequiredService<GatewayPipeline>();
        await Wait.Until(() => pipeline.Outstanding == 0, "every request retired");
        pipeline.Outstanding.Should().Be(0);
    }

    private static (GatewayPipeline Pipeline, ModelGroup Group) Services(Gateway gateway)
    {
        gateway.Services.GetRequiredService<ModelCatalog>().TryResolve("m", out var group).Should().BeTrue();
        return (gateway.Services.GetRequiredService<GatewayPipeline>(), group!);
    }

    private static ChannelReader<WorkItem> Channel(out StageChannel channel)
    {
        channel = new StageChannel(new BoundedChannelOptions(64) { SingleReader = true }, passThrough: true);
        return channel.Reader;
    }

    /// <summary>True on this thread while the test's own write is on the stack: a stage that sees it ran inside that write.</summary>
    [ThreadStatic]
    private static bool t_inWrite;

    private static bool Write(StageChannel channel, WorkItem item)
    {
        t_inWrite = true;
        try
        {
            return channel.Writer.TryWrite(item);
        }
        finally
        {
            t_inWrite = false;
        }
    }

    private static readonly Deadlines Deadlines = new(TimeProvider.System);

    private static WorkItem Item(ModelGroup group, string text) =>
        new(TestGateway.Request(text: text), group, stream: false, TimeSpan.FromMinutes(1), Deadlines, CancellationToken.None);

    /// <summary>Records each item it handles and the thread it ran on; may hold the stage on an item, or hand items on.</summary>
    private sealed class RecordingStage(ChannelReader<WorkItem> input, GatewayPipeline pipeline, Func<WorkItem, ManualResetEventSlim?>? hold, StageChannel? next = null)
        : PipelineStage(input, pipeline, NullLogger.Instance)
    {
        public ConcurrentQueue<(string Text, bool InWrite)> Handled { get; } = new();

        public List<(string Text, bool InWrite)> Seen => [.. Handled];

        public bool IsIdle => !IsOwned;

        protected override string StageName => "test";

        protected override ValueTask HandleAsync(WorkItem item, CancellationToken stopping)
        {
            Handled.Enqueue((item.Request.Messages[0].Content!.Text!, t_inWrite));
            hold?.Invoke(item)?.Wait(stopping);
            next?.Writer.TryWrite(item);
            return ValueTask.CompletedTask;
        }
    }
}
