using FluentAssertions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Admission;
using PipelineGateway.Hosting;

namespace PipelineGateway.Tests.Admission;

/// <summary>The door's room: a tenant's share, the room past it a tenant may borrow, and the reserve kept for the others.</summary>
public sealed class AdmissionGateTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static AdmissionGate Door(int capacity, int share) => new(Options.Create(new GatewayOptions
    {
        Pipeline = { AdmissionQueueCapacity = capacity },
        Fairness = { MaxQueuedPerKey = share },
    }), new FakeTimeProvider());

    private static List<AdmissionGate.Tenant> EnterAll(AdmissionGate door, string key)
    {
        var inside = new List<AdmissionGate.Tenant>();
        while (door.TryEnter(key) is { } t)
        {
            inside.Add(t);
        }

        return inside;
    }

    [Fact]
    public void A_tenant_alone_borrows_the_room_past_its_share_but_never_the_last_share_of_it()
    {
        using var door = Door(capacity: 16, share: 4);

        var a = EnterAll(door, "a");
        a.Should().HaveCount(12, "a burst with the room otherwise empty is let in past its share of 4, up to 16 - 4");
        door.Refusal("a", TimeSpan.FromSeconds(1)).Message.Should().Contain("12 requests").And.Contain("MaxQueuedPerKey = 4");

        EnterAll(door, "b").Should().HaveCount(4, "the reserve: another tenant finds its whole share");
        door.Inside.Should().Be(16);
        door.TryEnter("c").Should().BeNull("the room is full");

        door.Leave(a[0]);
        door.TryEnter("a").Should().BeNull("15 inside: a is past its share and the room left is the reserve");
        door.TryEnter("c").Should().NotBeNull("a tenant within its share takes the reserve's place");
    }

    [Fact]
    public void Two_tenants_each_keep_their_share_whoever_came_first()
    {
        using var door = Door(capacity: 16, share: 4);

        EnterAll(door, "b").Should().HaveCount(12);
        EnterAll(door, "a").Should().HaveCount(4);
        door.Refusal("c", TimeSpan.FromSeconds(1)).Message.Should().NotContain("MaxQueuedPerKey", "the room is full, not c's share");
    }

    [Fact]
    public void A_share_as_large_as_the_room_borrows_nothing()
    {
        using var door = Door(capacity: 8, share: 8);

        EnterAll(door, "a").Should().HaveCount(8);
        EnterAll(door, "b").Should().BeEmpty();
    }

    [Fact]
    public async Task A_waiting_caller_past_its_share_is_let_in_when_the_room_has_more_than_a_share_free_again()
    {
        using var door = Door(capacity: 16, share: 4);
        var a = EnterAll(door, "a");
        var b = EnterAll(door, "b");
        var waiting = door.WaitAsync("a", TimeSpan.FromMinutes(1), Ct);

        door.Leave(b[0]);
        door.Leave(a[0]);
        door.Leave(a[1]);
        door.Leave(a[2]);
        waiting.IsCompleted.Should().BeFalse("13 then 12 inside: a past its share may not take the reserve");

        door.Leave(b[1]);
        (await waiting.WaitAsync(TimeSpan.FromSeconds(10), Ct)).Should().NotBeNull("11 inside: room past the reserve again");
        door.Inside.Should().Be(12);
    }
}
