using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Server;
using PipelineGateway.Server.Responses;

namespace PipelineGateway.Tests.Server;

/// <summary>What <c>/v1/responses</c> keeps for <c>store</c> (docs/server.md, "Stored responses"): the chain of a conversation, per key, for its time, within its bytes.</summary>
public sealed class ResponsesStoreTests
{
    private static JsonElement Item(string json) => JsonDocument.Parse(json).RootElement.Clone();

    private static (string, byte[]) Output(string id, string text) =>
        (id, Encoding.UTF8.GetBytes($$"""{"type":"message","id":"{{id}}","role":"assistant","content":[{"type":"output_text","text":"{{text}}"}]}"""));

    private static string[] Texts(JsonElement? conversation) =>
        [.. conversation!.Value.EnumerateArray().Select(i => i.GetProperty("content") is { ValueKind: JsonValueKind.String } s ? s.GetString()! : i.GetProperty("content")[0].GetProperty("text").GetString()!)];

    private static (ResponsesStore Store, FakeTimeProvider Clock) Make(long maxBytes = 1 << 20) =>
        new FakeTimeProvider(DateTimeOffset.UnixEpoch) is var clock
            ? (new ResponsesStore(new ServerOptions { StoredResponsesTtl = TimeSpan.FromHours(1), StoredResponsesMaxBytes = maxBytes }, clock), clock)
            : default;

    [Fact]
    public void A_continued_conversation_holds_every_earlier_turn_in_order()
    {
        var (store, _) = Make();
        store.Save("k", "resp_1", "{}"u8.ToArray(), null, [Item("""{"type":"message","role":"user","content":"one"}""")], [Output("msg_1", "first")]);
        var earlier = store.Conversation("k", "resp_1");
        store.Save("k", "resp_2", "{}"u8.ToArray(), earlier, [Item("""{"type":"message","role":"user","content":"two"}""")], [Output("msg_2", "second")]);

        Texts(store.Conversation("k", "resp_2")).Should().Equal("one", "first", "two", "second");
        Texts(JsonDocument.Parse(store.InputItems("k", "resp_2")!).RootElement).Should().Equal("two");
        store.Item("k", "msg_1")!.Value.GetProperty("id").GetString().Should().Be("msg_1");
    }

    [Fact]
    public void Another_key_finds_nothing_an_expired_entry_is_gone_and_a_deleted_response_takes_its_items()
    {
        var (store, clock) = Make();
        store.Save("a", "resp_1", "{}"u8.ToArray(), null, [], [Output("msg_1", "x")]);

        store.Item("b", "msg_1").Should().BeNull("another key's item");
        store.Response("b", "resp_1").Should().BeNull();
        store.Conversation("a", "msg_1").Should().BeNull("an item is not a response");
        store.Item("a", "resp_1").Should().BeNull("a response is not an item");

        store.Delete("b", "resp_1").Should().BeFalse();
        store.Delete("a", "resp_1").Should().BeTrue();
        store.Item("a", "msg_1").Should().BeNull("its output items go with it");

        store.Save("a", "resp_2", "{}"u8.ToArray(), null, [], [Output("msg_2", "y")]);
        clock.Advance(TimeSpan.FromMinutes(59));
        store.Response("a", "resp_2").Should().NotBeNull();
        clock.Advance(TimeSpan.FromMinutes(2));
        store.Response("a", "resp_2").Should().BeNull("kept for an hour");
        store.Item("a", "msg_2").Should().BeNull();
    }

    [Fact]
    public void The_byte_bound_holds_the_least_recently_used_leaving_first_and_ids_are_random()
    {
        var (store, _) = Make(maxBytes: 4096);
        var text = new string('x', 400);
        for (var i = 0; i < 20; i++)
        {
            store.Save("k", $"resp_{i}", Encoding.UTF8.GetBytes($$"""{"t":"{{text}}"}"""), null, [], [Output($"msg_{i}", text)]);
        }

        store.Response("k", "resp_19").Should().NotBeNull("the newest stays");
        store.Response("k", "resp_0").Should().BeNull("the oldest left to make room");

        var ids = Enumerable.Range(0, 1000).Select(_ => ResponsesStore.NewResponseId()).ToList();
        ids.Should().OnlyHaveUniqueItems().And.AllSatisfy(id => id.Should().MatchRegex("^resp_[0-9a-f]{32}$"));
    }
}
