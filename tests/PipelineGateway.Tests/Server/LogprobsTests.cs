using System.ClientModel;
using FluentAssertions;
using OpenAI;
using OpenAI.Chat;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Log probabilities through the gateway with the official OpenAI .NET SDK: whole and streamed from an OpenAI-compatible
/// upstream (the simulator gives them when asked, as OpenAI does), and kept by the response cache — a stored answer
/// replayed to a stream, or a stored stream served whole, carries the same tokens (docs/caching.md).
/// </summary>
public sealed class LogprobsTests : IAsyncLifetime
{
    private SimulatorFleet _fleet = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _fleet = await SimulatorFleet.StartAsync(
        [("sim", "OpenAICompatible", null)], [("gpt", ["sim"])], "gpt-4o-mini", new Dictionary<string, string?> { ["Gateway:Cache:Enabled"] = "true" }, Ct);

    public ValueTask DisposeAsync() => _fleet.DisposeAsync();

    private ChatClient Client() => new("gpt", new ApiKeyCredential("sk-unused"), new OpenAIClientOptions { Endpoint = new Uri(_fleet.Base, "v1") });

    private static ChatCompletionOptions Options() => new() { IncludeLogProbabilities = true, TopLogProbabilityCount = 2, Temperature = 0 };

    private static async Task<(string Text, List<ChatTokenLogProbabilityDetails> Tokens)> StreamAsync(ChatClient client, string prompt)
    {
        var text = new System.Text.StringBuilder();
        var tokens = new List<ChatTokenLogProbabilityDetails>();
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage(prompt)], Options(), Ct))
        {
            text.Append(string.Concat(update.ContentUpdate.Select(p => p.Text)));
            tokens.AddRange(update.ContentTokenLogProbabilities);
        }

        return (text.ToString(), tokens);
    }

    [Fact]
    public async Task Log_probabilities_reach_the_SDK_whole_and_streamed_and_a_cache_hit_keeps_them_both_ways()
    {
        var client = Client();

        var whole = (await client.CompleteChatAsync([new UserChatMessage("Tell me about logs.")], Options(), Ct)).Value;
        var text = whole.Content[0].Text;
        whole.ContentTokenLogProbabilities.Should().NotBeEmpty();
        string.Concat(whole.ContentTokenLogProbabilities.Select(t => t.Token)).Should().Be(text, "one entry per token, in order");
        whole.ContentTokenLogProbabilities.Should().AllSatisfy(t =>
        {
            t.LogProbability.Should().BeNegative();
            t.TopLogProbabilities.Should().HaveCount(2);
            t.TopLogProbabilities[0].Token.Should().Be(t.Token);
        });

        var (streamedText, streamed) = await StreamAsync(client, "Tell me about streams.");
        streamed.Should().NotBeEmpty();
        string.Concat(streamed.Select(t => t.Token)).Should().Be(streamedText);

        // The whole answer again, as a stream: a cache hit replays its log probabilities.
        var before = _fleet.Sims["sim"].Requests;
        var (replayedText, replayed) = await StreamAsync(client, "Tell me about logs.");
        _fleet.Sims["sim"].Requests.Should().Be(before, "a cache hit");
        replayedText.Should().Be(text);
        replayed.Select(t => (t.Token, t.LogProbability)).Should().Equal(whole.ContentTokenLogProbabilities.Select(t => (t.Token, t.LogProbability)));

        // The stream again, whole: the stored stream's log probabilities, joined.
        var again = (await client.CompleteChatAsync([new UserChatMessage("Tell me about streams.")], Options(), Ct)).Value;
        _fleet.Sims["sim"].Requests.Should().Be(before, "a cache hit");
        again.ContentTokenLogProbabilities.Select(t => (t.Token, t.LogProbability)).Should().Equal(streamed.Select(t => (t.Token, t.LogProbability)));
    }
}
