using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Hosting;

/// <summary>
/// The GC gen1 guard (docs/server.md, "Runtime settings"; on in the server, opted into by a library host): after a collection, gen1 is collected only when it holds more
/// than the limit and more than twice what the latest collection promoted; it looks once per period and only after a new
/// collection; 0 turns it off. The GC's readings are scripted (the process's own GC is shared with every other test);
/// one test checks the real probe against the real GC.
/// </summary>
public sealed class Gen1GuardTests
{
    private const long MiB = 1 << 20;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Collects_gen1_when_it_holds_a_pile_of_older_survivors_and_only_then()
    {
        var probe = new ScriptedProbe();
        var (time, guard) = await StartAsync(4, probe);
        using var _ = guard;

        // Below the limit: left alone.
        probe.Next = new(3 * MiB, 400 * 1024);
        time.Advance(Gen1Guard.Period);
        probe.Collected.Should().Be(0);

        // Above the limit, but about what one busy collection promotes (many requests in flight): left alone.
        probe.Next = new(20 * MiB, 12 * MiB);
        time.Advance(Gen1Guard.Period);
        probe.Collected.Should().Be(0);

        // Above the limit and more than twice what the collection promoted: a pile of dead requests, collected.
        probe.Next = new(17 * MiB, 450 * 1024);
        time.Advance(Gen1Guard.Period);
        probe.Collected.Should().Be(1);
        guard.Collections.Should().Be(1);

        // No new collection since the last look: nothing read, nothing done.
        probe.Next = null;
        time.Advance(Gen1Guard.Period);
        probe.Collected.Should().Be(1);

        // Exactly at the limit is not above it.
        probe.Next = new(4 * MiB, 0);
        time.Advance(Gen1Guard.Period);
        probe.Collected.Should().Be(1);
        probe.Reads.Should().Be(5);
    }

    [Fact]
    public async Task Looks_once_per_period_and_stops_when_the_host_stops()
    {
        var probe = new ScriptedProbe { Always = new(30 * MiB, 0) };
        var (time, guard) = await StartAsync(4, probe);
        using var _ = guard;

        time.Advance(Gen1Guard.Period - TimeSpan.FromMilliseconds(1));
        probe.Reads.Should().Be(0);
        time.Advance(TimeSpan.FromMilliseconds(1));
        probe.Reads.Should().Be(1);
        time.Advance(Gen1Guard.Period * 3);
        probe.Reads.Should().Be(4);
        probe.Collected.Should().Be(4);

        await guard.StopAsync(Ct);
        time.Advance(Gen1Guard.Period * 10);
        probe.Reads.Should().Be(4);
    }

    [Fact]
    public async Task Zero_turns_it_off()
    {
        var probe = new ScriptedProbe { Always = new(500 * MiB, 0) };
        var (time, guard) = await StartAsync(0, probe);
        using var _ = guard;

        time.Advance(Gen1Guard.Period * 20);

        probe.Reads.Should().Be(0);
        probe.Collected.Should().Be(0);
    }

    [Fact]
    public async Task The_server_runs_it_with_the_configured_limit_and_refuses_a_negative_one()
    {
        await using (var app = GatewayServer.Build(TestServerConfig.Simulated([]), "http://127.0.0.1:0", l => { }))
        {
            app.Services.GetServices<IHostedService>().Should().ContainSingle(s => s is Gen1Guard);
            app.Services.GetRequiredService<Gen1Guard.Limit>().MiB.Should().Be(4);
        }

        await using (var app = GatewayServer.Build(TestServerConfig.Simulated(new Dictionary<string, string?> { ["Gateway:Server:GcGen1GuardMiB"] = "16" }), "http://127.0.0.1:0", l => { }))
        {
            app.Services.GetRequiredService<Gen1Guard.Limit>().MiB.Should().Be(16);
        }

        await using (var app = GatewayServer.Build(TestServerConfig.Simulated(new Dictionary<string, string?> { ["Gateway:Server:GcGen1GuardMiB"] = "0" }), "http://127.0.0.1:0", l => { }))
        {
            app.Services.GetServices<IHostedService>().Should().NotContain(s => s is Gen1Guard);
        }

        var act = () => GatewayServer.Build(TestServerConfig.Simulated(new Dictionary<string, string?> { ["Gateway:Server:GcGen1GuardMiB"] = "-1" }), "http://127.0.0.1:0", l => { });
        act.Should().Throw<Microsoft.Extensions.Options.OptionsValidationException>().Which.Message.Should().Contain("GcGen1GuardMiB");
    }

    [Fact]
    public void A_library_host_opts_in_once_whatever_the_number_of_calls_and_the_last_limit_wins()
    {
        var services = new ServiceCollection().AddLogging();
        services.AddGatewayGcGen1Guard().AddGatewayGcGen1Guard(limitMiB: 8);
        using var provider = services.BuildServiceProvider();

        provider.GetServices<IHostedService>().Should().ContainSingle(s => s is Gen1Guard);
        provider.GetRequiredService<Gen1Guard.Limit>().MiB.Should().Be(8);
        var zero = () => new ServiceCollection().AddGatewayGcGen1Guard(limitMiB: 0);
        zero.Should().Throw<ArgumentOutOfRangeException>();
    }

    [Fact]
    public void The_real_probe_reads_a_collection_once_and_its_gen1_collection_is_one()
    {
        var probe = new Gen1Guard.GcProbe();
        probe.AfterNewCollection(); // whatever happened before this test
        GC.Collect(0, GCCollectionMode.Forced, blocking: true);

        var sample = probe.AfterNewCollection();
        sample.Should().NotBeNull();
        sample!.Value.Gen1Bytes.Should().BeGreaterThanOrEqualTo(0);
        sample.Value.PromotedBytes.Should().BeGreaterThanOrEqualTo(0);

        var gen1 = GC.CollectionCount(1);
        probe.CollectGen1();
        GC.CollectionCount(1).Should().BeGreaterThan(gen1);
    }

    /// <summary>A guard on a fake clock, reading the scripted probe, started.</summary>
    private static async Task<(FakeTimeProvider Time, Gen1Guard Guard)> StartAsync(int limitMiB, ScriptedProbe probe)
    {
        var time = new FakeTimeProvider();
        var guard = new Gen1Guard(new Gen1Guard.Limit(limitMiB), time, NullLogger<Gen1Guard>.Instance, probe);
        await guard.StartAsync(Ct);
        return (time, guard);
    }

    private sealed class ScriptedProbe : Gen1Guard.GcProbe
    {
        public Gen1Guard.Sample? Next { get; set; }

        public Gen1Guard.Sample? Always { get; init; }

        public int Reads { get; private set; }

        public int Collected { get; private set; }

        public override Gen1Guard.Sample? AfterNewCollection()
        {
            Reads++;
            var next = Always ?? Next;
            Next = null;
            return next;
        }

        public override void CollectGen1() => Collected++;
    }
}
