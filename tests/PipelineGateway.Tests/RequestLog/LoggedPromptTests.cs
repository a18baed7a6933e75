using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.RequestLog;

namespace PipelineGateway.Tests.RequestLog;

/// <summary>
/// The prompt the request log keeps (<see cref="LoggedPrompt"/>): cut to the log's head before it is serialized, with
/// the same head as the whole prompt's JSON — CsCheck, fixed seed — and none of a photo's megabytes serialized.
/// </summary>
public sealed class LoggedPromptTests
{
    private static string Json(List<ChatCompletionMessage> messages) => JsonSerializer.Serialize(messages, GatewayJsonContext.Default.ListChatCompletionMessage);

    private static readonly Gen<string> Text = Gen.String[Gen.Char["abc xyz\"\\\n\u00e9\u4e2d\ud83d\ude00"], 0, 400];

    private static readonly Gen<ContentPart> Part = Gen.OneOf(
        Text.Select(t => new ContentPart { Type = "text", Text = t }),
        Text.Select(t => new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = "data:image/png;base64," + t, Detail = "low" } }));

    private static readonly Gen<ChatCompletionMessage> Message = Gen.Select(
        Gen.Int[0, 3].Select(i => new[] { ChatRoles.System, ChatRoles.User, ChatRoles.Assistant, ChatRoles.Tool }[i]),
        Gen.OneOf(Text.Select(t => new MessageContent(t)), Part.List[1, 4].Select(p => new MessageContent(p)), Gen.Const((MessageContent)null!)),
        Gen.Bool,
        Text,
        (role, content, calls, text) => new ChatCompletionMessage
        {
            Role = role,
            Content = content,
            Name = calls ? null : "n",
            ToolCallId = role == ChatRoles.Tool ? "call_1" : null,
            Refusal = role == ChatRoles.Assistant && !calls ? text : null,
            ToolCalls = calls ? [new ToolCall { Id = "call_1", Type = "function", Function = new FunctionCall { Name = "f", Arguments = text } }] : null,
        });

    [Fact]
    public void A_prompt_cut_to_the_head_has_the_whole_prompts_head() =>
        Gen.Select(Message.List[1, 6], Gen.Int[16, 1200]).Sample((messages, budget) =>
        {
            var whole = Json(messages);
            var cut = LoggedPrompt.Trim(messages, budget);
            var logged = Json(cut);
            if (ReferenceEquals(cut, messages))
            {
                return true; // it fit: nothing copied
            }

            // Cut: its text within the head, its JSON at least the head long and the same as the whole prompt's up to it.
            return TextOf(cut) <= budget && logged.Length >= budget && string.CompareOrdinal(logged, 0, whole, 0, budget) == 0;
        }, seed: "0N0XIzNsQ0O2", iter: 3000);

    /// <summary>The characters of the messages' text: contents, parts' text and image addresses, tool call arguments, refusals.</summary>
    private static int TextOf(List<ChatCompletionMessage> messages) => messages.Sum(m =>
        (m.Content?.Text?.Length ?? 0)
        + (m.Content?.Parts?.Sum(p => (p.Text?.Length ?? 0) + (p.ImageUrl?.Url.Length ?? 0)) ?? 0)
        + (m.ToolCalls?.Sum(c => c.Function?.Arguments?.Length ?? 0) ?? 0)
        + (m.Refusal?.Length ?? 0));

    [Fact]
    public void A_cut_never_splits_a_surrogate_pair() =>
        LoggedPrompt.Trim([ChatCompletionMessage.User("ab\ud83d\ude00cd")], 3)[0].Content!.Text.Should().Be("ab");

    [Fact]
    public void A_photo_inline_is_not_serialized_whole()
    {
        var photo = "data:image/jpeg;base64," + Convert.ToBase64String(new byte[6 * 1024 * 1024]);
        var audio = JsonSerializer.SerializeToElement(new { data = Convert.ToBase64String(new byte[1024 * 1024]), format = "wav" });
        List<ChatCompletionMessage> messages =
        [
            ChatCompletionMessage.System("You describe photos."),
            new()
            {
                Role = ChatRoles.User,
                Content = new MessageContent(
                [
                    new ContentPart { Type = "text", Text = "What is in this photo?" },
                    new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = photo } },
                    new ContentPart { Type = "input_audio", AdditionalProperties = new() { ["input_audio"] = audio } },
                ]),
            },
        ];

        var logged = Json(LoggedPrompt.Trim(messages, 5_000));

        logged.Length.Should().BeLessThan(6_000);
        logged.Should().Contain("You describe photos.").And.Contain("What is in this photo?").And.StartWith(Json(messages)[..4_000]);
        messages[1].Content!.Parts![1].ImageUrl!.Url.Should().HaveLength(photo.Length, "the request itself is untouched");

        // A member the model does not name that does not fit is said by its size.
        var audioFirst = Json(LoggedPrompt.Trim([new() { Role = ChatRoles.User, Content = new MessageContent([new ContentPart { Type = "input_audio", AdditionalProperties = new() { ["input_audio"] = audio } }]) }], 1_000));
        audioFirst.Should().Contain("bytes]");
        audioFirst.Length.Should().BeLessThan(200);
    }
}
