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

    /// <summary>
    /// Admission's stage loop never waits for a tokenizer to load (~300 ms, every request behind it): asked before the
    /// load, the encoding says "not loaded" at once and starts one load in the background, however often it is asked;
    /// once that load is done it gives the tokenizer. The loader here waits for the test's signal.
    /// </summary>
    [Fact]
    public async Task An_encoding_not_loaded_yet_is_loaded_in_the_background_and_never_waited_for()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var loads = 0;
        var encoding = new TokenCounter.Encoding(() =>
        {
            Interlocked.Increment(ref loads);
            started.TrySetResult();
            release.Task.Wait(TestContext.Current.CancellationToken);
            return Microsoft.ML.Tokenizers.TiktokenTokenizer.CreateForEncoding("cl100k_base");
        });

        // Asked while nothing is loaded, and again while the load runs: no answer waits for it (bounded, so a wait fails
        // the test instead of hanging it), one load.
        (await Task.Run(encoding.IfLoaded, TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken)).Should().BeNull();
        await started.Task.WaitAsync(TestContext.Current.CancellationToken);
        (await Task.Run(encoding.IfLoaded, TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken)).Should().BeNull("the load has not finished");
        encoding.Loading.Should().NotBeNull();

        release.SetResult();
        await encoding.Loading!.WaitAsync(TestContext.Current.CancellationToken);

        var tokenizer = encoding.IfLoaded();
        tokenizer.Should().NotBeNull().And.BeSameAs(encoding.Value);
        tokenizer!.CountTokens("hello world").Should().Be(2);
        loads.Should().Be(1);
    }

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
