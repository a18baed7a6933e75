using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Server;
using PipelineGateway.Server.Responses;

namespace PipelineGateway.Tests.Server;

/// <summary>What <c>/v1/responses</c> keeps for <c>store</c> (docs/server.md, "Stored responses"): the chain of a conversation, per key, for its time, within its bytes.</summary>
public sealed class ResponsesStoreTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static JsonElement Item(string json) => JsonDocument.Parse(json).RootElement.Clone();

    private static (string, byte[]) Output(string id, string text) =>
        (id, Encoding.UTF8.GetBytes($$"""{"type":"message","id":"{{id}}","role":"assistant","content":[{"type":"output_text","text":"{{text}}"}]}"""));

    private static string[] Texts(JsonElement? conversation) =>
        [.. conversation!.Value.EnumerateArray().Select(i => i.GetProperty("content") is { ValueKind: JsonValueKind.String } s ? s.GetString()! : i.GetProperty("content")[0].GetProperty("text").GetString()!)];

    private static (ResponsesStore Store, FakeTimeProvider Clock) Make(long maxBytes = 1 << 20) =>
        new FakeTimeProvider(DateTimeOffset.UnixEpoch) is var clock ? (MemoryStore(maxBytes, clock), clock) : default;

    /// <summary>A store in this instance's memory (no Redis): an hour's TTL, <paramref name="maxBytes"/> bound, <paramref name="clock"/>'s time.</summary>
    internal static ResponsesStore MemoryStore(long maxBytes, TimeProvider clock) =>
        new(new ServerOptions { StoredResponsesTtl = TimeSpan.FromHours(1), StoredResponsesMaxBytes = maxBytes }, clock, new ServiceCollection().BuildServiceProvider(), NullLogger<ResponsesStore>.Instance);

    [Fact]
    public async Task A_continued_conversation_holds_every_earlier_turn_in_order()
    {
        var (store, _) = Make();
        await store.SaveAsync("k", "resp_1", "{}"u8.ToArray(), null, [Item("""{"type":"message","role":"user","content":"one"}""")], [Output("msg_1", "first")]);
        var earlier = (await store.ResponseAsync("k", "resp_1", Ct))!.Conversation;
        await store.SaveAsync("k", "resp_2", "{}"u8.ToArray(), earlier, [Item("""{"type":"message","role":"user","content":"two"}""")], [Output("msg_2", "second")]);

        Texts((await store.ResponseAsync("k", "resp_2", Ct))!.Conversation).Should().Equal("one", "first", "two", "second");
        Texts(JsonDocument.Parse((await store.ResponseAsync("k", "resp_2", Ct))!.Input).RootElement).Should().Equal("two");
        (await store.ItemAsync("k", "msg_1", Ct))!.Value.GetProperty("id").GetString().Should().Be("msg_1");
    }

    [Fact]
    public async Task Another_key_finds_nothing_an_expired_entry_is_gone_and_a_deleted_response_takes_its_items()
    {
        var (store, clock) = Make();
        await store.SaveAsync("a", "resp_1", "{}"u8.ToArray(), null, [], [Output("msg_1", "x")]);

        (await store.ItemAsync("b", "msg_1", Ct)).Should().BeNull("another key's item");
        (await store.ResponseAsync("b", "resp_1", Ct)).Should().BeNull();
        (await store.ResponseAsync("a", "msg_1", Ct)).Should().BeNull("an item is not a response");
        (await store.ItemAsync("a", "resp_1", Ct)).Should().BeNull("a response is not an item");

        (await store.DeleteAsync("b", "resp_1", Ct)).Should().BeFalse();
        (await store.DeleteAsync("a", "resp_1", Ct)).Should().BeTrue();
        (await store.ItemAsync("a", "msg_1", Ct)).Should().BeNull("its output items go with it");

        await store.SaveAsync("a", "resp_2", "{}"u8.ToArray(), null, [], [Output("msg_2", "y")]);
        clock.Advance(TimeSpan.FromMinutes(59));
        (await store.ResponseAsync("a", "resp_2", Ct)).Should().NotBeNull();
        clock.Advance(TimeSpan.FromMinutes(2));
        (await store.ResponseAsync("a", "resp_2", Ct)).Should().BeNull("kept for an hour");
        (await store.ItemAsync("a", "msg_2", Ct)).Should().BeNull();
    }

    [Fact]
    public async Task The_byte_bound_holds_the_least_recently_used_leaving_first_and_ids_are_random()
    {
        var (store, _) = Make(maxBytes: 4096);
        var text = new string('x', 400);
        for (var i = 0; i < 20; i++)
        {
            await store.SaveAsync("k", $"resp_{i}", Encoding.UTF8.GetBytes($$"""{"t":"{{text}}"}"""), null, [], [Output($"msg_{i}", text)]);
        }

        (await store.ResponseAsync("k", "resp_19", Ct)).Should().NotBeNull("the newest stays");
        (await store.ResponseAsync("k", "resp_0", Ct)).Should().BeNull("the oldest left to make room");

        var ids = Enumerable.Range(0, 1000).Select(_ => ResponsesStore.NewResponseId()).ToList();
        ids.Should().OnlyHaveUniqueItems().And.AllSatisfy(id => id.Should().MatchRegex("^resp_[0-9a-f]{32}$"));
    }
}
