using FluentAssertions;
using PipelineGateway.Admission;

namespace PipelineGateway.Tests.Admission;

public sealed class TokenCounterTests
{
    [Theory]
    [InlineData("gpt-4o-mini", "o200k_base")]
    [InlineData("gpt-4.1", "o200k_base")]
    [InlineData("o3-mini", "o200k_base")]
    [InlineData("openai/gpt-5", "o200k_base")]
    [InlineData("gpt-4", "cl100k_base")]
    [InlineData("gpt-3.5-turbo", "cl100k_base")]
    [InlineData("claude-sonnet-4-5", null)]
    [InlineData("llama-3.1-8b", null)]
    public void The_encoding_follows_the_model_family(string model, string? encoding) =>
        TokenCounter.EncodingFor(model).Should().Be(encoding);

    [Fact]
    public void Chat_framing_is_counted_the_way_OpenAI_bills_it()
    {
        // "Hello!" is 2 tokens in o200k; a user message adds 3 + "user" (1); the reply is primed with 3.
        var request = new ChatCompletionRequest { Model = "gpt-4o", Messages = [ChatCompletionMessage.User("Hello!")] };
        TokenCounter.CountPrompt(request, "gpt-4o").Should().Be(2 + 3 + 1 + 3);
    }

    [Fact]
    public void Unknown_models_get_the_cheap_estimate()
    {
        var request = new ChatCompletionRequest { Model = "x", Messages = [ChatCompletionMessage.User(new string('a', 400))] };
        TokenCounter.CountPrompt(request, "claude-sonnet-4-5").Should().Be((400 + 16) / 4);
    }

    [Fact]
    public void A_usage_estimated_afterwards_counts_with_the_tokenizer_only_when_a_token_limit_had_the_prompt_counted()
    {
        // A request given up in flight, or answered without usage, with no token limit configured: about four characters
        // a token — a gateway without token limits never loads a tokenizer for it (42 MB live, ~300 ms on that request).
        const string Text = "Bounded channels push back on fast producers.";
        var request = new ChatCompletionRequest { Model = "gpt-4o", Messages = [ChatCompletionMessage.User("What is a bounded channel?")] };
        var answer = new ChatCompletionResponse { Choices = [new ChatChoice { Message = ChatCompletionMessage.Assistant(Text) }] };
        var exact = TokenCounter.CountPrompt(request, "gpt-4o");
        var cheap = PipelineGateway.Pipeline.TokenEstimate.Approximate(request);
        exact.Should().NotBe(cheap, "the two ways of counting tell apart here");

        var uncounted = TokenCounter.EstimateUsage(request, answer, 0, "gpt-4o", countedPrompt: null);
        (uncounted.PromptTokens, uncounted.CompletionTokens).Should().Be((cheap, Text.Length / 4));
        TokenCounter.IsEstimated(uncounted).Should().BeTrue();

        // Counted by a token limit: that count is the prompt's, and the answer is counted with the model's tokenizer.
        var counted = TokenCounter.EstimateUsage(request, answer, 0, "gpt-4o", countedPrompt: exact);
        (counted.PromptTokens, counted.CompletionTokens).Should().Be((exact, Microsoft.ML.Tokenizers.TiktokenTokenizer.CreateForEncoding("o200k_base").CountTokens(Text)));
    }
}
