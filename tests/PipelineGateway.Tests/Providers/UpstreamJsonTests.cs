using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A whole answer keeps its upstream bytes (<see cref="ChatCompletionResponse.UpstreamJson"/>, which the chat endpoint
/// writes instead of the response) only when they say what the gateway's own writing of the response says, and always
/// when the answer is in the gateway's shape; whatever changes the response afterwards lets them go.
/// </summary>
public sealed class UpstreamJsonTests
{
    [Fact]
    public void Property_kept_bytes_always_mean_what_the_gateway_would_write_and_every_answer_in_its_shape_keeps_them()
    {
        // CsCheck, fixed seed: answers built member by member — each member the writer always writes present, missing,
        // empty or given twice; optional members null, absent or set; unknown members at every level, one given twice;
        // whitespace and line breaks between members; text arbitrary, escaped or literal UTF-8 — in any order.
        var json = new ShapedJson(new PCG(35, 7), lineBreaksOffShape: false);
        for (var i = 0; i < 20_000; i++)
        {
            json.Next();

            // A member the writer leaves out when null: absent, null or set; given twice now and then.
            void Optional(List<string> members, string name, Func<string> value)
            {
                if (json.OneIn(2))
                {
                    return;
                }

                members.Add($"\"{name}\":{(json.OneIn(3) ? "null" : value())}");
                if (json.OneIn(40))
                {
                    json.InShape = false;
                    members.Add($"\"{name}\":{value()}");
                }
            }

            string ToolCall()
            {
                var call = new List<string> { "\"id\":\"call_1\"", "\"type\":\"function\"", $"\"function\":{{\"name\":\"f\",\"arguments\":{json.Str()}}}" };
                if (json.OneIn(4)) { call.Add("\"index\":0"); }
                if (json.OneIn(30)) { json.InShape = false; call.Add("\"id\":\"call_2\""); }
                return json.Object(call);
            }

            string Choice()
            {
                var message = new List<string>();
                json.Always(message, "role", "\"assistant\"", "\"\"");
                json.Always(message, "content", json.OneIn(5) ? "null" : json.Str());
                json.Always(message, "refusal", json.OneIn(6) ? json.Str() : "null");
                Optional(message, "name", json.Str);
                Optional(message, "tool_call_id", json.Str);
                if (json.OneIn(6)) { message.Add("\"tool_calls\":[" + ToolCall() + (json.OneIn(3) ? "," + ToolCall() : "") + "]"); }
                else if (json.OneIn(40)) { json.InShape = false; message.Add("\"tool_calls\":[]"); }
                if (json.OneIn(3)) { message.Add("\"annotations\":[]"); }
                if (json.OneIn(6)) { message.Add($"\"reasoning_content\":{json.Str()}"); }
                if (json.OneIn(40)) { json.InShape = false; message.Add("\"audio\":1"); message.Add("\"audio\":2"); }
                if (json.OneIn(40)) { json.InShape = false; message[message.FindIndex(m => m.StartsWith("\"content\"", StringComparison.Ordinal)) is var c and >= 0 ? c : 0] = "\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]"; }

                var choice = new List<string>();
                json.Always(choice, "index", "0");
                json.Always(choice, "message", json.Object(message), "null");
                json.Always(choice, "finish_reason", json.OneIn(4) ? "\"length\"" : "\"stop\"", "null");
                json.Always(choice, "logprobs", json.OneIn(6) ? "{\"content\":[]}" : "null");
                if (json.OneIn(6)) { choice.Add("\"content_filter_results\":{\"hate\":{\"filtered\":false}}"); }
                return json.Object(choice);
            }

            var usage = new List<string>();
            json.Always(usage, "prompt_tokens", "9");
            json.Always(usage, "completion_tokens", "3");
            json.Always(usage, "total_tokens", "12");
            if (json.OneIn(3)) { usage.Add("\"prompt_tokens_details\":{\"cached_tokens\":0}"); }

            var top = json.Head("chat.completion", Choice);
            json.Always(top, "usage", json.Object(usage), "null");
            Optional(top, "system_fingerprint", () => "\"fp_1\"");
            if (json.OneIn(20)) { json.InShape = false; top.Add("\"gateway\":{\"provider\":\"forged\"}"); }
            if (json.OneIn(30)) { json.InShape = false; top.Add("\"finish_reason\":\"stop\""); }
            if (json.OneIn(3)) { top.Add($"\"service_tier\":{json.Str()}"); }
            if (json.OneIn(40)) { json.InShape = false; top.Add("\"extra\":1"); top.Add("\"extra\":2"); }
            var bytes = Encoding.UTF8.GetBytes(json.Object(top));

            ChatCompletionResponse answer, plain;
            try
            {
                answer = AnswerJson.ReadAnswer(bytes, keepJson: true)!;
            }
            catch (JsonException)
            {
                // "choices": null and the like fail the read whether or not the bytes would be kept.
                FluentActions.Invoking(() => AnswerJson.ReadAnswer(bytes, keepJson: false)).Should().Throw<JsonException>();
                continue;
            }

            plain = AnswerJson.ReadAnswer(bytes, keepJson: false)!;
            plain.HasUpstreamJson.Should().BeFalse("only a reader asked to keep the bytes keeps them");
            var written = JsonSerializer.SerializeToUtf8Bytes(plain, GatewayJsonContext.Default.ChatCompletionResponse);
            if (json.InShape)
            {
                answer.HasUpstreamJson.Should().BeTrue($"the answer is in the gateway's shape: {Encoding.UTF8.GetString(bytes)}");
            }

            var keptBytes = answer.HasUpstreamJson ? answer.UpstreamJson.ToArray() : null;
            answer.DropUpstreamJson();
            JsonSerializer.SerializeToUtf8Bytes(answer, GatewayJsonContext.Default.ChatCompletionResponse).Should().Equal(written,
                "keeping the bytes changes nothing in what the response itself says");
            json.Judge(keptBytes, bytes, written, Meaning);
        }

        (json.Kept, json.Rewritten).Should().Match<(int Kept, int Rewritten)>(c => c.Kept > 2_000 && c.Rewritten > 2_000, "both kinds of answer were generated");
    }

    [Fact]
    public void The_bytes_go_to_one_writer_once()
    {
        var json = Encoding.UTF8.GetBytes(Answer);
        var response = AnswerJson.ReadAnswer(json, keepJson: true)!;

        response.TakeUpstreamJson(out var buffer, out var length).Should().BeTrue();
        buffer!.AsSpan(0, length).ToArray().Should().Equal(json);
        response.HasUpstreamJson.Should().BeFalse("the writer that took the buffer returns it to the pool: the response let go of it");
        response.TakeUpstreamJson(out _, out _).Should().BeFalse("a second writer gets nothing, never a buffer already returned");
        response.UpstreamJson.IsEmpty.Should().BeTrue();
    }

    /// <summary>
    /// A very large answer is written from the object, as before: its bytes are not kept, so the shared pool is never
    /// left holding buffers of many MiB after a few long answers (<see cref="Serialization.KeptJson.MaxLength"/>).
    /// </summary>
    [Fact]
    public void An_answer_longer_than_the_kept_bytes_bound_is_not_kept()
    {
        string Long(int chars) => Answer.Replace("\"hi\"", "\"" + new string('a', chars) + "\"", StringComparison.Ordinal);
        var under = Encoding.UTF8.GetBytes(Long(Serialization.KeptJson.MaxLength - Answer.Length));
        var over = Encoding.UTF8.GetBytes(Long(Serialization.KeptJson.MaxLength));

        under.Length.Should().BeLessThanOrEqualTo(Serialization.KeptJson.MaxLength);
        AnswerJson.ReadAnswer(under, keepJson: true)!.HasUpstreamJson.Should().BeTrue();
        AnswerJson.ReadAnswer(over, keepJson: true)!.HasUpstreamJson.Should().BeFalse();
        AnswerJson.ReadAnswer(over, keepJson: true)!.Content.Should().HaveLength(Serialization.KeptJson.MaxLength);
    }

    private const string Answer = "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

    /// <summary>Each change the worker makes to an answer after its read lets the bytes go (they no longer say what it does).</summary>
    [Theory]
    [InlineData("finish")]
    [InlineData("usage")]
    [InlineData("negative usage")]
    [InlineData("fill")]
    [InlineData("fill role")]
    [InlineData("none")]
    public void Whatever_the_worker_changes_lets_the_bytes_go(string change)
    {
        var response = AnswerJson.ReadAnswer(Encoding.UTF8.GetBytes(Answer), keepJson: true)!;
        response.HasUpstreamJson.Should().BeTrue();
        switch (change)
        {
            case "finish": response.Choices[0].FinishReason = null; break; // as a custom provider might leave it
            case "usage": response.Usage!.TotalTokens = 1; break;
            case "negative usage": response.Usage!.PromptTokens = -1; break;
            case "fill": response.Created = 0; break;
            case "fill role": response.Choices[0].Message!.Role = string.Empty; break;
        }

        ProviderAnswer.Accept(response, "p");
        ProviderAnswer.Fill(response, item: null!, "m", TimeProvider.System); // the item only for a missing id

        response.HasUpstreamJson.Should().Be(change == "none", change);
    }

    /// <summary>
    /// What a client reads from an answer: the members the gateway's writer leaves out when null (a message's name,
    /// say) aside. Members it does not model are in both (a choice's too: it keeps them).
    /// </summary>
    private static JsonNode Meaning(byte[] json)
    {
        var node = JsonNode.Parse(json)!.AsObject();
        if (node.TryGetPropertyValue("system_fingerprint", out var fingerprint) && fingerprint is null)
        {
            node.Remove("system_fingerprint");
        }

        foreach (var choice in node["choices"]?.AsArray() ?? [])
        {
            var message = choice!["message"]!.AsObject();
            foreach (var name in message.Where(p => p.Value is null && p.Key is not ("content" or "refusal")).Select(p => p.Key).ToList())
            {
                message.Remove(name);
            }
        }

        return node;
    }
}
