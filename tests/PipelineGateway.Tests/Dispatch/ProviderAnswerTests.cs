using FluentAssertions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Routing;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Dispatch;

/// <summary>
/// Any provider's answer — not only an HTTP adapter's — is checked where the worker accepts it: one that is present
/// but not a usable chat completion is that provider's retryable failure and falls back, never a crash further on.
/// </summary>
public sealed class ProviderAnswerTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Unusable => ["null answer", "null choices", "null choice", "null content part", "null tool call"];

    private static ChatCompletionResponse? Odd(string kind, string model)
    {
        var answer = FakeProvider.Answer(model, "odd");
        switch (kind)
        {
            case "null answer":
                return null;
            case "null choices":
                answer.Choices = null!;
                break;
            case "null choice":
                answer.Choices = [null!];
                break;
            case "null content part":
                answer.Choices[0].Message = new ChatCompletionMessage { Role = "assistant", Content = new MessageContent([null!]) };
                break;
            case "null tool call":
                answer.Choices[0].Message!.ToolCalls = [null!];
                break;
        }

        return answer;
    }

    [Theory]
    [MemberData(nameof(Unusable))]
    public async Task A_custom_providers_unusable_answer_is_its_retryable_failure_and_falls_back(string kind)
    {
        var odd = new FakeProvider("odd") { OnComplete = (r, _) => ValueTask.FromResult(Odd(kind, r.Model)!) };
        var good = new FakeProvider("good");
        await using var gateway = await TestGateway.With(odd, good).StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(), Ct);

        response.Content.Should().Be("ok");
        response.Gateway!.Provider.Should().Be("good");
        var first = response.Gateway.Attempts[0];
        first.Provider.Should().Be("odd");
        first.Outcome.Should().Be(AttemptOutcome.RetryableError);
        first.Error.Should().Contain("not a usable chat completion");
    }

    [Theory]
    [MemberData(nameof(Unusable))]
    public async Task A_hedged_legs_unusable_answer_loses_to_the_leg_that_answers(string kind)
    {
        var clock = TestGateway.Clock();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var slow = FakeProvider.Gated("slow", gate);
        var odd = new FakeProvider("odd") { OnComplete = (r, _) => ValueTask.FromResult(Odd(kind, r.Model)!) };
        await using var gateway = await TestGateway.With(slow, odd)
            .UseTimeProvider(clock)
            .Configure(o => o.Models[0].Hedging = new HedgingOptions { Delay = TimeSpan.FromMilliseconds(500) })
            .StartAsync(Ct);

        var pending = gateway.SubmitAsync(TestGateway.Request(), Ct).AsTask();
        await Wait.Until(() => slow.Calls == 1, "the first attempt is running");
        clock.Advance(TimeSpan.FromMilliseconds(500));
        await Wait.Until(() => odd.Calls == 1, "the hedge ran");
        gate.SetResult();
        var response = await pending.WaitAsync(TimeSpan.FromSeconds(20), Ct);

        response.Gateway!.Provider.Should().Be("slow");
        response.Gateway.Attempts.Should().ContainSingle(a => a.Provider == "odd" && a.Outcome == AttemptOutcome.RetryableError && a.Error!.Contains("not a usable"));
    }

    [Theory]
    [InlineData("null event")]
    [InlineData("null choice")]
    [InlineData("null delta")]
    [InlineData("null tool call")]
    public async Task A_custom_providers_unusable_stream_event_before_any_content_falls_back(string kind)
    {
        var odd = new FakeProvider("odd") { OnStream = (r, _) => OddStream(kind, r.Model) };
        var good = new FakeProvider("good");
        await using var gateway = await TestGateway.With(odd, good).StartAsync(Ct);

        var chunks = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("hello world");
        chunks.Should().OnlyContain(c => c.Choices != null);
    }

    [Fact]
    public async Task A_stream_event_without_choices_is_read_as_one_with_none()
    {
        var odd = new FakeProvider("odd") { OnStream = (r, _) => ChoicesNull(r.Model) };
        await using var gateway = await TestGateway.With(odd).StartAsync(Ct);

        var chunks = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        chunks.Should().OnlyContain(c => c.Choices != null);
        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("hi");
    }

    /// <summary>
    /// A reasoning model (DeepSeek, vLLM, OpenRouter) streams its reasoning before its answer, as <c>reasoning_content</c>
    /// or <c>reasoning</c> deltas: output the caller sees, so it goes out as it comes — not held back with the role-only
    /// opening until the answer's first text (a long think would reach the caller all at once, and pile up in memory).
    /// </summary>
    [Theory]
    [InlineData("reasoning_content")]
    [InlineData("reasoning")]
    public async Task Reasoning_text_reaches_the_caller_as_it_comes_not_held_until_the_answers_text(string member)
    {
        var answer = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thinker = new FakeProvider("thinker") { OnStream = (r, ct) => Thinks(r.Model, member, answer.Task, ct) };
        await using var gateway = await TestGateway.With(thinker).StartAsync(Ct);
        await using var chunks = gateway.StreamAsync(TestGateway.Request(), Ct).GetAsyncEnumerator(Ct);

        var seen = new List<ChatCompletionChunk>();
        while (!seen.Exists(c => c.Choices.Exists(ch => ch.Delta.AdditionalProperties?.ContainsKey(member) == true)))
        {
            // A bound on a wait for an event, not a sleep: held back, the reasoning would never come before the answer.
            (await chunks.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30), Ct)).Should().BeTrue();
            seen.Add(chunks.Current);
        }

        answer.Task.IsCompleted.Should().BeFalse("the provider has not answered yet");
        seen.SelectMany(c => c.Choices).Select(c => c.Delta.AdditionalProperties?.GetValueOrDefault(member).ToString()).Should().Contain("Let me think.");
        answer.SetResult();
        while (await chunks.MoveNextAsync())
        {
            seen.Add(chunks.Current);
        }

        string.Concat(seen.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("Done.");
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> Thinks(string model, string member, Task answer, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        await Task.Yield();
        yield return new ChatCompletionChunk { Id = "r", Model = model, Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Role = "assistant", Content = string.Empty } }] };
        yield return new ChatCompletionChunk
        {
            Id = "r",
            Model = model,
            Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { AdditionalProperties = new() { [member] = System.Text.Json.JsonDocument.Parse("\"Let me think.\"").RootElement.Clone() } } }],
        };
        await answer.WaitAsync(ct);
        yield return FakeProvider.Chunk(model, "Done.", FinishReasons.Stop);
    }

    [Fact]
    public async Task An_unusable_stream_event_after_content_ends_the_stream_with_a_typed_error()
    {
        var odd = new FakeProvider("odd") { OnStream = (r, _) => BreaksAfterContent(r.Model) };
        var good = new FakeProvider("good");
        await using var gateway = await TestGateway.With(odd, good).StartAsync(Ct);

        var act = async () => await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        (await act.Should().ThrowAsync<AllProvidersFailedException>()).Which.Message.Should().Contain("not a usable chat completion");
        good.Calls.Should().Be(0, "output already reached the caller: no invisible fallback");
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> OddStream(string kind, string model)
    {
        await Task.Yield();
        var chunk = FakeProvider.Chunk(model, "odd");
        switch (kind)
        {
            case "null event":
                chunk = null!;
                break;
            case "null choice":
                chunk.Choices = [null!];
                break;
            case "null delta":
                chunk.Choices[0].Delta = null!;
                break;
            case "null tool call":
                chunk.Choices[0].Delta.ToolCalls = [null!];
                break;
        }

        yield return chunk;
        yield return FakeProvider.Chunk(model, "never seen", FinishReasons.Stop);
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> ChoicesNull(string model)
    {
        await Task.Yield();
        yield return new ChatCompletionChunk { Id = "x", Model = model, Choices = null! };
        yield return FakeProvider.Chunk(model, "hi", FinishReasons.Stop);
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> BreaksAfterContent(string model)
    {
        await Task.Yield();
        yield return FakeProvider.Chunk(model, "partial");
        yield return FakeProvider.Chunk(model, "more");
        yield return null!;
    }

    [Fact]
    public async Task What_the_schema_requires_and_a_provider_left_out_is_filled_in()
    {
        var model = "";
        var bare = new FakeProvider("bare")
        {
            OnComplete = (r, _) =>
            {
                model = r.Model;
                return ValueTask.FromResult(new ChatCompletionResponse
                {
                    Id = null!,
                    Object = null!,
                    Model = "",
                    Choices =
                    [
                        new ChatChoice { Message = new ChatCompletionMessage { Role = null!, Content = new MessageContent("hi") }, FinishReason = FinishReasons.Stop },
                        new ChatChoice { Index = 1, Message = null, FinishReason = FinishReasons.Stop },
                    ],
                });
            },
        };
        await using var gateway = await TestGateway.With(bare).StartAsync(Ct);

        var response = await gateway.SubmitAsync(TestGateway.Request(), Ct);

        response.Id.Should().StartWith("chatcmpl-").And.HaveLength("chatcmpl-".Length + response.Gateway!.RequestId.Length);
        response.Object.Should().Be("chat.completion");
        response.Created.Should().BeGreaterThan(0);
        response.Model.Should().Be(model).And.NotBeEmpty();
        response.Choices.Should().OnlyContain(c => c.Message!.Role == "assistant");
        response.Content.Should().Be("hi");
    }

    [Fact]
    public async Task A_stream_whose_chunks_leave_out_id_model_and_created_gets_the_same_ones_in_every_chunk()
    {
        var bare = new FakeProvider("bare") { OnStream = (_, _) => Bare() };
        await using var gateway = await TestGateway.With(bare).StartAsync(Ct);

        var chunks = await gateway.StreamAsync(TestGateway.Request(), Ct).ToListAsync(Ct);

        chunks.Should().HaveCountGreaterThan(1);
        chunks.Select(c => c.Id).Distinct().Should().ContainSingle().Which.Should().StartWith("chatcmpl-");
        chunks.Select(c => c.Created).Distinct().Should().ContainSingle().Which.Should().BeGreaterThan(0);
        chunks.Should().OnlyContain(c => c.Model.Length > 0 && c.Object == "chat.completion.chunk");
    }

    private static async IAsyncEnumerable<ChatCompletionChunk> Bare()
    {
        foreach (var (text, finish) in new[] { ("a", (string?)null), ("b", null), ("c", FinishReasons.Stop) })
        {
            await Task.Yield();
            yield return new ChatCompletionChunk
            {
                Id = null!,
                Object = null!,
                Model = null!,
                Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Content = text }, FinishReason = finish }],
            };
        }
    }
}
