using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Caching;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Tests.Caching;

/// <summary>
/// A stored answer replayed to a stream, and the stream assembled again as a stream being cached is, says what the
/// answer said (docs/caching.md, "Streams"): text, refusal, reasoning text, Claude's signed thinking blocks, tool
/// calls, log probabilities, finish reason, Claude's kept stop reason, usage.
/// </summary>
public sealed class StreamReplayTests
{
    private static readonly Gen<string> Text = Gen.String[0, 24];

    private static readonly Gen<ThinkingBlock> Block = Gen.Frequency(
        (4, Gen.Select(Text, Gen.String[1, 16], (text, signature) => new ThinkingBlock(ThinkingBlock.Plain, text, signature, null))),
        (1, Gen.String[1, 16].Select(data => new ThinkingBlock(ThinkingBlock.Redacted, null, null, data))));

    private static readonly Gen<ToolCall> Call = Gen.Select(Gen.String[1, 8], Gen.String[1, 8], Text,
        (id, name, args) => new ToolCall { Id = "call_" + id, Type = "function", Function = new FunctionCall { Name = name, Arguments = args } });

    private static readonly Gen<(string Token, double Logprob)> Token = Gen.Select(Gen.String[1, 6], Gen.Int[-9000, 0], (t, p) => (t, p / 1000.0));

    private static readonly Gen<ChatCompletionResponse> Answer =
        from content in Text
        from refusal in Gen.Frequency((3, Gen.Const<string?>((string?)null)), (1, Gen.String[1, 12].Select(s => (string?)s)))
        from reasoning in Gen.Frequency((2, Gen.Const<string?>((string?)null)), (1, Gen.String[1, 20].Select(s => (string?)s)))
        from blocks in Block.List[0, 3]
        from calls in Call.List[0, 2]
        from tokens in Gen.Frequency((2, Gen.Const<List<(string, double)>?>((List<(string, double)>?)null)), (1, Token.List[1, 4].Select(l => (List<(string, double)>?)l)))
        from finish in Gen.OneOf(FinishReasons.Stop, FinishReasons.Length, FinishReasons.ToolCalls)
        from stop in Gen.Frequency((3, Gen.Const<string?>((string?)null)), (1, Gen.String[1, 6].Select(s => (string?)s)))
        from usage in Gen.Select(Gen.Int[0, 5000], Gen.Int[0, 5000])
        select Build(content, refusal, reasoning, blocks, calls, tokens, finish, stop, usage);

    private static ChatCompletionResponse Build(string content, string? refusal, string? reasoning, List<ThinkingBlock> blocks, List<ToolCall> calls,
        List<(string Token, double Logprob)>? tokens, string finish, string? stop, (int Prompt, int Completion) usage)
    {
        var extra = ThinkingBlocks.Write(null, blocks, reasoning);
        JsonElement? logprobs = null;
        if (tokens is not null)
        {
            var node = new JsonObject { ["content"] = new JsonArray([.. tokens.Select(t => (JsonNode)new JsonObject { ["token"] = t.Token, ["logprob"] = t.Logprob })]), ["refusal"] = null };
            logprobs = JsonDocument.Parse(node.ToJsonString()).RootElement.Clone();
        }

        var response = new ChatCompletionResponse
        {
            Id = "r1",
            Created = 7,
            Model = "m",
            Choices =
            [
                new ChatChoice
                {
                    Message = new ChatCompletionMessage
                    {
                        Role = ChatRoles.Assistant,
                        Content = content.Length == 0 && (calls.Count > 0 || refusal is not null) ? null : new MessageContent(content),
                        Refusal = refusal,
                        ToolCalls = calls.Count > 0 ? calls : null,
                        AdditionalProperties = extra,
                    },
                    FinishReason = finish,
                    Logprobs = logprobs,
                },
            ],
            Usage = TokenUsage.Of(usage.Prompt, usage.Completion),
        };
        if (stop is not null)
        {
            AnthropicStop.Set(response, AnthropicStop.Sequence, stop);
        }

        return response;
    }

    [Fact]
    public void Property_a_stored_answer_replayed_as_chunks_and_assembled_again_says_the_same()
    {
        Answer.Sample(original =>
        {
            var assembled = new StreamReplay();
            foreach (var chunk in StreamReplay.ToChunks(original, info: null))
            {
                assembled.Add(chunk);
            }

            var again = assembled.ToResponse();
            var (was, now) = (original.Choices[0].Message!, again.Choices[0].Message!);
            (now.Content?.GetText() ?? string.Empty).Should().Be(was.Content?.GetText() ?? string.Empty);
            now.Refusal.Should().Be(was.Refusal);
            Member(now, ThinkingBlocks.ReasoningMember).Should().Be(Member(was, ThinkingBlocks.ReasoningMember));
            ThinkingBlocks.Read(now.AdditionalProperties).Should().Equal(ThinkingBlocks.Read(was.AdditionalProperties));
            (now.ToolCalls ?? []).Select(c => (c.Id, c.Function!.Name, c.Function.Arguments)).Should().Equal((was.ToolCalls ?? []).Select(c => (c.Id, c.Function!.Name, c.Function.Arguments)));
            JsonNode.DeepEquals(Node(again.Choices[0].Logprobs), Node(original.Choices[0].Logprobs)).Should().BeTrue();
            again.Choices[0].FinishReason.Should().Be(original.Choices[0].FinishReason);
            AnthropicStop.Of(again).Should().Be(AnthropicStop.Of(original));
            (again.Usage!.PromptTokens, again.Usage.CompletionTokens).Should().Be((original.Usage!.PromptTokens, original.Usage.CompletionTokens));
        }, seed: "0N0XIzNsQ0O2");

        static string? Member(ChatCompletionMessage m, string name) =>
            m.AdditionalProperties?.TryGetValue(name, out var v) == true ? v.GetString() : null;

        static JsonNode? Node(JsonElement? e) => e is { } element ? JsonNode.Parse(element.GetRawText()) : null;
    }
}
