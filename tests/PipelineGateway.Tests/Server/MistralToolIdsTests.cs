using System.Text;
using System.Text.Json.Nodes;
using FluentAssertions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Mistral refuses every tool-call id that is not 9 letters and digits — so a conversation begun on another model
/// (OpenAI's <c>call_…</c>, Kimi's <c>functions.…:0</c>) failed on Mistral at its next step. A deployment whose
/// <c>ToolCallIds</c> is <c>Mistral</c> (the default for a base URL on api.mistral.ai) gets them made to fit; one
/// without gets them as they came. The upstream is a real Kestrel checking ids as Mistral does (<c>mistral-ids</c>).
/// </summary>
public sealed class MistralToolIdsTests() : EchoGatewayTests("mistral-ids")
{
    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Gateway:Providers:0:ToolCallIds"] = "Mistral";
        Upstream.AddProvider(settings, 1, "as-sent", "OpenAICompatible", "mistral-ids", "m2", "m-up");
    }

    [Fact]
    public async Task Another_models_ids_reach_Mistral_as_9_letters_and_digits_and_a_deployment_without_the_rule_sends_them_as_they_came()
    {
        foreach (var id in new[] { "call_Jx2kQ8abcdEFGH0123456789", "functions.get_weather:0" })
        {
            (await PostAsync(WeatherToolLoop.ChatNextStep("m", Call(id)))).Status.Should().Be(200, $"'{id}' was made to fit");
            var (status, body) = await PostAsync(WeatherToolLoop.ChatNextStep("m2", Call(id)));
            status.Should().Be(400, body);
            body.Should().Contain("length of 9");
        }
    }

    [Fact]
    public void A_fitting_id_is_kept_and_any_other_becomes_the_same_9_letters_and_digits_every_time()
    {
        ToolIds.ForMistral("aB3dE6gH9").Should().Be("aB3dE6gH9");
        string[] others = ["call_1", "call_2", "functions.get_weather:0", "aB3dE6gH", "aB3dE6gH9x", ""];
        var made = others.Select(ToolIds.ForMistral).ToList();

        made[..^1].Should().OnlyContain(static m => m!.Length == 9 && m.All(char.IsAsciiLetterOrDigit));
        made[..^1].Should().OnlyHaveUniqueItems();
        made[^1].Should().BeEmpty("an empty id has nothing to pair by");
        ToolIds.For(ToolCallIdRule.Mistral, "call_1").Should().Be(made[0], "the same id, the same made one");
        ToolIds.For(ToolCallIdRule.AsSent, "call_1").Should().Be("call_1");
    }

    private static JsonObject Call(string id) => new()
    {
        ["id"] = id,
        ["type"] = "function",
        ["function"] = new JsonObject { ["name"] = "get_weather", ["arguments"] = "{\"city\":\"Paris\"}" },
    };

    private async Task<(int Status, string Body)> PostAsync(JsonObject body)
    {
        using var response = await Gateway.Http.PostAsync("v1/chat/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"), Ct);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }
}
