using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Server;
using PipelineGateway.Server.Responses;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Which calls <c>ToolCallRecall</c> gives members back to, on the store itself (the HTTP routes: ToolCallRecallTests):
/// each call its own by id and name, only the current turn's, a bounded number of steps, and a stream's deltas added up.
/// </summary>
public sealed class ToolCallRecallStepTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static ResponsesStore Store(long maxBytes = 1 << 20) => ResponsesStoreTests.MemoryStore(maxBytes, new FakeTimeProvider(DateTimeOffset.UnixEpoch));

    private static Dictionary<string, JsonElement> Members(string signature) =>
        new(StringComparer.Ordinal) { ["extra_content"] = JsonDocument.Parse($$$"""{"google":{"thought_signature":"{{{signature}}}"}}""").RootElement.Clone() };

    private static ToolCall Call(string id, string name = "get_weather", string? signature = null) =>
        new() { Id = id, Type = "function", Function = new FunctionCall { Name = name, Arguments = "{}" }, AdditionalProperties = signature is null ? null : Members(signature) };

    private static string? Signature(ToolCall call) =>
        call.AdditionalProperties?.GetValueOrDefault("extra_content") is { ValueKind: JsonValueKind.Object } extra ? extra.GetProperty("google").GetProperty("thought_signature").GetString() : null;

    private static ChatCompletionResponse Answered(params ToolCall[] calls) =>
        new() { Model = "m", Choices = [new ChatChoice { Message = new ChatCompletionMessage { Role = ChatRoles.Assistant, ToolCalls = [.. calls] }, FinishReason = "tool_calls" }] };

    private static ChatCompletionMessage Step(params ToolCall[] calls) => new() { Role = ChatRoles.Assistant, ToolCalls = [.. calls] };

    private static ChatCompletionMessage Result(string id) => new() { Role = ChatRoles.Tool, ToolCallId = id, Content = new MessageContent("ok") };

    private static ChatCompletionMessage User(string text) => new() { Role = ChatRoles.User, Content = new MessageContent(text) };

    [Fact]
    public async Task Each_call_of_a_step_gets_its_own_members_by_id_and_name()
    {
        var store = Store();
        var request = new ChatCompletionRequest { Model = "m", Messages = [User("go")] };
        await ToolCallRecall.RememberAsync(store, "k", request, Answered(Call("c1", signature: "s1"), Call("c2", signature: "s2"), Call("c3"), Call("c4", name: "other", signature: "s4")));

        // The step as a client sends it back: the members gone, one call's name changed, one call carrying its own.
        var next = new ChatCompletionRequest
        {
            Model = "m",
            Messages = [User("go"), Step(Call("c1"), Call("c2", signature: "own"), Call("c3"), Call("c4", name: "renamed"), Call("c5")), Result("c1"), Result("c2")],
        };
        await ToolCallRecall.RecallAsync(store, "k", next, Ct);

        next.Messages[1].ToolCalls!.Select(Signature).Should().Equal("s1", "own", null, null, null);
    }

    [Fact]
    public async Task Only_the_current_turns_steps_are_looked_up()
    {
        var store = Store();
        var first = new ChatCompletionRequest { Model = "m", Messages = [User("go")] };
        await ToolCallRecall.RememberAsync(store, "k", first, Answered(Call("c0", signature: "s0")));
        await ToolCallRecall.RememberAsync(store, "k", first, Answered(Call("c1", signature: "s1")));

        // Step c0 is in an earlier turn (before the user's last message), which the upstream does not check.
        var next = new ChatCompletionRequest { Model = "m", Messages = [User("go"), Step(Call("c0")), Result("c0"), User("and then"), Step(Call("c1")), Result("c1")] };
        await ToolCallRecall.RecallAsync(store, "k", next, Ct);

        Signature(next.Messages[1].ToolCalls![0]).Should().BeNull("an earlier turn's steps are not looked up");
        Signature(next.Messages[4].ToolCalls![0]).Should().Be("s1");
    }

    [Fact]
    public async Task At_most_a_bounded_number_of_steps_are_looked_up()
    {
        var store = Store();
        var first = new ChatCompletionRequest { Model = "m", Messages = [User("go")] };
        var steps = ToolCallRecall.MaxSteps + 1;
        var next = new ChatCompletionRequest { Model = "m", Messages = [User("go")] };
        for (var i = 1; i <= steps; i++)
        {
            await ToolCallRecall.RememberAsync(store, "k", first, Answered(Call($"c{i}", signature: $"s{i}")));
            next.Messages.Add(Step(Call($"c{i}")));
            next.Messages.Add(Result($"c{i}"));
        }

        await ToolCallRecall.RecallAsync(store, "k", next, Ct);

        var signatures = next.Messages.Where(static m => m.ToolCalls is not null).Select(static m => Signature(m.ToolCalls![0])).ToList();
        signatures[0].Should().BeNull("only the last MaxSteps steps are looked up");
        signatures.Skip(1).Should().Equal(Enumerable.Range(2, steps - 1).Select(static i => $"s{i}"));
    }

    [Fact]
    public async Task A_streams_deltas_add_up_to_what_is_kept_and_a_hostile_index_is_left_out()
    {
        var store = Store();
        var request = new ChatCompletionRequest { Model = "m", Messages = [User("go")], Tools = [Tool] };
        var gatherer = ToolCallRecall.Gather(store, "k", request)!;
        gatherer.Add(Chunk(new ToolCall { Index = 0, Id = "c1", Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = "" } }));
        gatherer.Add(Chunk(new ToolCall { Index = 0, Function = new FunctionCall { Arguments = "{}" }, AdditionalProperties = Members("s1") }));
        gatherer.Add(Chunk(new ToolCall { Index = -1, Id = "bad", AdditionalProperties = Members("x") }, new ToolCall { Index = 1_000_000, Id = "huge", AdditionalProperties = Members("y") }));
        gatherer.Add(Chunk(new ToolCall { Index = 1, Id = "c2", Function = new FunctionCall { Name = "get_weather" }, AdditionalProperties = Members("s2") }));
        await gatherer.RememberAsync();

        var next = new ChatCompletionRequest { Model = "m", Messages = [User("go"), Step(Call("c1"), Call("c2")), Result("c1"), Result("c2")] };
        await ToolCallRecall.RecallAsync(store, "k", next, Ct);

        next.Messages[1].ToolCalls!.Select(Signature).Should().Equal("s1", "s2");
    }

    [Fact]
    public async Task An_answer_without_members_keeps_nothing()
    {
        var store = Store();
        var request = new ChatCompletionRequest { Model = "m", Messages = [User("go")] };
        await ToolCallRecall.RememberAsync(store, "k", request, Answered(Call("c1")));
        ToolCallRecall.Gather(store, "k", request).Should().BeNull("a request offering no tools gets no calls: its stream gathers nothing");
        request.Tools = [Tool];
        var gatherer = ToolCallRecall.Gather(store, "k", request)!;
        gatherer.Add(Chunk(new ToolCall { Index = 0, Id = "c2", Function = new FunctionCall { Name = "get_weather" } }));
        await gatherer.RememberAsync();

        (await store.RecallForToolCallAsync(ResponsesStore.ForToolCall.Extras, "k", "c1", Ct)).Should().BeNull();
        (await store.RecallForToolCallAsync(ResponsesStore.ForToolCall.Extras, "k", "c2", Ct)).Should().BeNull();
    }

    [Fact]
    public async Task A_steps_reasoning_is_kept_whole_or_not_at_all_and_Claudes_blocks_are_left_to_their_own_recall()
    {
        var store = Store(64L << 20); // room for a reasoning past the bound: the bound, not the store's, leaves it out
        var request = new ChatCompletionRequest { Model = "m", Messages = [User("go")], Tools = [Tool] };
        static Dictionary<string, JsonElement> Reasoning(string text) => new(StringComparer.Ordinal) { ["reasoning_content"] = JsonSerializer.SerializeToElement(text) };

        // Streamed in pieces: kept whole, given back to the step sent without it.
        var gatherer = ToolCallRecall.Gather(store, "k", request)!;
        gatherer.Add(Chunk(reasoning: Reasoning("I will ")));
        gatherer.Add(Chunk(reasoning: Reasoning("call it.")));
        gatherer.Add(Chunk(new ToolCall { Index = 0, Id = "c1", Function = new FunctionCall { Name = "get_weather" } }));
        await gatherer.RememberAsync();

        // Longer than the bound: none of it kept (a part would be another text).
        var longer = ToolCallRecall.Gather(store, "k", request)!;
        longer.Add(Chunk(reasoning: Reasoning(new string('a', ToolCallRecall.Gatherer.MaxReasoningChars))));
        longer.Add(Chunk(reasoning: Reasoning("b")));
        longer.Add(Chunk(new ToolCall { Index = 0, Id = "c2", Function = new FunctionCall { Name = "get_weather" } }));
        await longer.RememberAsync();

        // Claude's answer: its text comes with its signed blocks, which ThinkingRecall keeps.
        var claude = Answered(Call("c3"));
        claude.Choices[0].Message!.AdditionalProperties = new(Reasoning("Claude thinks.")) { [PipelineGateway.Providers.Anthropic.ThinkingBlocks.Member] = JsonSerializer.SerializeToElement(Array.Empty<int>()) };
        await ToolCallRecall.RememberAsync(store, "k", request, claude);

        var claudeStream = ToolCallRecall.Gather(store, "k", request)!;
        claudeStream.Add(Chunk(reasoning: new(Reasoning("Claude thinks.")) { [PipelineGateway.Providers.Anthropic.ThinkingBlocks.Member] = JsonSerializer.SerializeToElement(Array.Empty<int>()) }));
        claudeStream.Add(Chunk(new ToolCall { Index = 0, Id = "c4", Function = new FunctionCall { Name = "get_weather" } }));
        await claudeStream.RememberAsync();

        var next = new ChatCompletionRequest { Model = "m", Messages = [User("go"), Step(Call("c1")), Result("c1"), Step(Call("c2")), Result("c2"), Step(Call("c3")), Result("c3"), Step(Call("c4")), Result("c4")] };
        await ToolCallRecall.RecallAsync(store, "k", next, Ct);

        next.Messages[1].AdditionalProperties!["reasoning_content"].GetString().Should().Be("I will call it.");
        next.Messages[3].AdditionalProperties.Should().BeNull("a reasoning past the bound is not kept");
        next.Messages[5].AdditionalProperties.Should().BeNull("Claude's thinking is not kept here");
        next.Messages[7].AdditionalProperties.Should().BeNull("nor Claude's streamed thinking");
    }

    private static readonly ToolDefinition Tool = new() { Function = new FunctionDefinition { Name = "get_weather" } };

    private static ChatCompletionChunk Chunk(params ToolCall[] deltas) =>
        new() { Id = "s", Model = "m", Choices = [new ChunkChoice { Index = 0, Delta = new ChatCompletionDelta { ToolCalls = [.. deltas] } }] };

    private static ChatCompletionChunk Chunk(Dictionary<string, JsonElement> reasoning) =>
        new() { Id = "s", Model = "m", Choices = [new ChunkChoice { Index = 0, Delta = new ChatCompletionDelta { AdditionalProperties = reasoning } }] };
}
