using System.Buffers;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;

namespace PipelineGateway.Tests.Providers;

public sealed class AnthropicTranslationTests
{
    private static JsonElement Translate(ChatCompletionRequest request, bool stream = false, int defaultMax = 4096)
    {
        var buffer = new ArrayBufferWriter<byte>();
        AnthropicTranslator.WriteRequest(buffer, request, "claude-sonnet-4-5", stream, defaultMax);
        return JsonDocument.Parse(buffer.WrittenMemory).RootElement.Clone();
    }

    [Fact]
    public void Non_ASCII_text_goes_to_Anthropic_as_UTF_8_not_as_escapes()
    {
        const string Text = "héllo 世界 <b>&'";
        var buffer = new ArrayBufferWriter<byte>();
        AnthropicTranslator.WriteRequest(buffer, new ChatCompletionRequest { Model = "x", Messages = [ChatCompletionMessage.System(Text), ChatCompletionMessage.User(Text)] }, "claude-sonnet-4-5", stream: false, 4096);

        var json = System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan);
        json.Should().Contain("\"" + Text + "\"").And.NotContain("\\u", "WireJson: text as clients send it to Anthropic");
        var body = JsonDocument.Parse(buffer.WrittenMemory).RootElement;
        body.GetProperty("system").ToString().Should().Contain(Text);
        body.GetProperty("messages")[0].GetProperty("content").ToString().Should().Contain(Text);
    }

    [Fact]
    public void System_messages_go_to_the_top_level_and_same_role_turns_merge()
    {
        var body = Translate(new ChatCompletionRequest
        {
            Model = "x",
            Messages =
            [
                ChatCompletionMessage.System("You are terse."),
                ChatCompletionMessage.User("Hi."),
                ChatCompletionMessage.User("Still there?"),
                ChatCompletionMessage.Assistant("Yes."),
                new ChatCompletionMessage { Role = "developer", Content = "Answer in French." },
            ],
            Stop = "STOP",
        });

        body.GetProperty("system").GetString().Should().Be("You are terse.\n\nAnswer in French.");
        body.GetProperty("max_tokens").GetInt32().Should().Be(4096, "Anthropic requires max_tokens; the configured default fills in");
        var messages = body.GetProperty("messages").EnumerateArray().ToList();
        messages.Should().HaveCount(2);
        messages[0].GetProperty("role").GetString().Should().Be("user");
        messages[0].GetProperty("content").EnumerateArray().Select(b => b.GetProperty("text").GetString()).Should().Equal("Hi.", "Still there?");
        messages[1].GetProperty("role").GetString().Should().Be("assistant");
        body.GetProperty("stop_sequences").EnumerateArray().Select(s => s.GetString()).Should().Equal("STOP");
    }

    [Fact]
    public void Tool_calls_and_tool_results_become_tool_use_and_tool_result_blocks()
    {
        var body = Translate(new ChatCompletionRequest
        {
            Model = "x",
            MaxTokens = 100,
            Messages =
            [
                ChatCompletionMessage.User("Weather in Paris?"),
                new ChatCompletionMessage { Role = "assistant", ToolCalls = [new ToolCall { Id = "call_1", Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = """{"city":"Paris"}""" } }] },
                ChatCompletionMessage.Tool("call_1", "18C and sunny"),
            ],
            Tools = [new ToolDefinition { Function = new FunctionDefinition { Name = "get_weather", Description = "Weather by city", Parameters = JsonDocument.Parse("""{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}""").RootElement } }],
            ToolChoice = JsonDocument.Parse("""{"type":"function","function":{"name":"get_weather"}}""").RootElement,
            User = "u-42",
        });

        body.GetProperty("max_tokens").GetInt32().Should().Be(100);
        var messages = body.GetProperty("messages").EnumerateArray().ToList();
        var toolUse = messages[1].GetProperty("content")[0];
        toolUse.GetProperty("type").GetString().Should().Be("tool_use");
        toolUse.GetProperty("id").GetString().Should().Be("call_1");
        toolUse.GetProperty("input").GetProperty("city").GetString().Should().Be("Paris");
        var result = messages[2].GetProperty("content")[0];
        messages[2].GetProperty("role").GetString().Should().Be("user");
        result.GetProperty("type").GetString().Should().Be("tool_result");
        result.GetProperty("tool_use_id").GetString().Should().Be("call_1");
        result.GetProperty("content").GetString().Should().Be("18C and sunny");
        var tool = body.GetProperty("tools")[0];
        tool.GetProperty("name").GetString().Should().Be("get_weather");
        tool.GetProperty("input_schema").GetProperty("required")[0].GetString().Should().Be("city");
        body.GetProperty("tool_choice").GetProperty("type").GetString().Should().Be("tool");
        body.GetProperty("tool_choice").GetProperty("name").GetString().Should().Be("get_weather");
        body.GetProperty("metadata").GetProperty("user_id").GetString().Should().Be("u-42");
    }

    [Fact]
    public void Another_models_tool_ids_go_to_Claude_in_its_pattern_each_call_still_paired_with_its_result()
    {
        // Kimi K2's ids (functions.NAME:INDEX), an MCP-qualified one, two that differ only where Claude takes no character.
        string[] ids = ["functions.get_weather:0", "functions.get_weather:1", "mcp.server/search", "a.b", "a:b", "call_ok-1"];
        var request = new ChatCompletionRequest
        {
            Model = "x",
            Messages =
            [
                ChatCompletionMessage.User("Weather?"),
                new ChatCompletionMessage { Role = "assistant", ToolCalls = [.. ids.Select(static id => new ToolCall { Id = id, Type = "function", Function = new FunctionCall { Name = "get_weather", Arguments = "{}" } })] },
                .. ids.Select(static id => ChatCompletionMessage.Tool(id, "sunny")),
            ],
        };

        var messages = Translate(request).GetProperty("messages").EnumerateArray().ToList();
        var uses = messages[1].GetProperty("content").EnumerateArray().Select(static b => b.GetProperty("id").GetString()!).ToList();
        var results = messages[2].GetProperty("content").EnumerateArray().Select(static b => b.GetProperty("tool_use_id").GetString()!).ToList();

        uses.Should().OnlyContain(static id => System.Text.RegularExpressions.Regex.IsMatch(id, "^[a-zA-Z0-9_-]+$"));
        results.Should().Equal(uses, "each result names its call as the call is written");
        uses.Should().OnlyHaveUniqueItems("ids that differ only in characters Claude does not take stay apart");
        uses[^1].Should().Be("call_ok-1", "an id Claude takes is sent as it is");
        uses[0].Should().StartWith("functions_get_weather_0_");
        Translate(request).GetProperty("messages")[1].GetProperty("content")[0].GetProperty("id").GetString().Should().Be(uses[0], "the same id is written the same way every time (a prompt cache's prefix)");
    }

    [Fact]
    public void Images_become_base64_or_url_image_blocks()
    {
        var body = Translate(new ChatCompletionRequest
        {
            Model = "x",
            Messages =
            [
                new ChatCompletionMessage
                {
                    Role = "user",
                    Content = new MessageContent(
                    [
                        new ContentPart { Type = "text", Text = "What is this?" },
                        new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = "data:image/png;base64,iVBORw0KGgo=" } },
                        new ContentPart { Type = "image_url", ImageUrl = new ImageUrl { Url = "https://example.test/cat.jpg" } },
                    ]),
                },
            ],
        });

        var blocks = body.GetProperty("messages")[0].GetProperty("content").EnumerateArray().ToList();
        blocks[1].GetProperty("source").GetProperty("type").GetString().Should().Be("base64");
        blocks[1].GetProperty("source").GetProperty("media_type").GetString().Should().Be("image/png");
        blocks[1].GetProperty("source").GetProperty("data").GetString().Should().Be("iVBORw0KGgo=");
        blocks[2].GetProperty("source").GetProperty("url").GetString().Should().Be("https://example.test/cat.jpg");
    }

    private static ChatCompletionRequest Parse(string json) => JsonSerializer.Deserialize(json, GatewayJsonContext.Default.ChatCompletionRequest)!;

    private static string Assistant(string arguments) =>
        """{"model":"x","messages":[{"role":"user","content":"Weather?"},{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}},{"id":"b","type":"function","function":{"name":"f","arguments":"""
        + JsonSerializer.Serialize(arguments) + """}}]},{"role":"tool","tool_call_id":"a","content":"ok"},{"role":"tool","tool_call_id":"b","content":"ok"}]}""";

    public static TheoryData<string, string> ArgumentsWithoutAnObject => new()
    {
        { "{\"city\": \"Par", "not JSON" },
        { "city=Paris", "not JSON" },
        { "[\"Paris\"]", "JSON array, not an object" },
        { "\"Paris\"", "JSON string, not an object" },
        { "42", "JSON number, not an object" },
    };

    [Theory]
    [MemberData(nameof(ArgumentsWithoutAnObject))]
    public void Tool_arguments_that_are_not_a_JSON_object_are_not_sent_rather_than_sent_as_an_empty_input(string arguments, string what)
    {
        var act = () => Translate(Parse(Assistant(arguments)));

        var e = act.Should().Throw<ProviderException>().Which;
        e.NotSent.Should().BeTrue("another deployment may take the request as it is");
        e.Outcome.Should().Be(AttemptOutcome.NonRetryableError);
        e.StatusCode.Should().BeNull("nothing answered: the caller's 400 is the dead-letter stage's");
        e.ErrorType.Should().Be("invalid_request_error");
        e.ErrorCode.Should().Be("unsupported_value");
        e.Param.Should().Be("messages[1].tool_calls[1].function.arguments");
        e.UpstreamMessage.Should().Contain(what).And.NotContain(arguments, "the arguments are the caller's data, not the error's");
    }

    [Theory]
    [InlineData("")]
    [InlineData("  ")]
    public void Empty_tool_arguments_are_an_empty_input(string arguments) =>
        Translate(Parse(Assistant(arguments))).GetProperty("messages")[1].GetProperty("content")[1].GetProperty("input").GetRawText().Should().Be("{}");

    public static TheoryData<string, string> PartsWithoutAForm => new()
    {
        { """{"role":"user","content":[{"type":"text","text":"Hear this"},{"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}}]}""", "messages[1].content[1]" },
        { """{"role":"user","content":[{"type":"file","file":{"file_id":"file-abc123"}}]}""", "messages[1].content[0]" },
        { """{"role":"user","content":[{"type":"file","file":{"file_data":"data:text/csv;base64,YSxi","filename":"t.csv"}}]}""", "messages[1].content[0]" },
        { """{"role":"user","content":[{"type":"video_url","video_url":{"url":"https://example.test/v.mp4"}}]}""", "messages[1].content[0]" },
        { """{"role":"tool","tool_call_id":"a","content":[{"type":"file","file":{"file_data":"data:application/pdf;base64,JVBERi0="}}]}""", "messages[1].content[0]" },
    };

    [Theory]
    [MemberData(nameof(PartsWithoutAForm))]
    public void A_content_part_Anthropic_has_no_form_for_is_named_not_dropped(string message, string param)
    {
        var act = () => Translate(Parse("""{"model":"x","messages":[{"role":"system","content":"Be brief."},""" + message + "]}"));

        var e = act.Should().Throw<ProviderException>().Which;
        e.NotSent.Should().BeTrue();
        e.StatusCode.Should().BeNull();
        e.Param.Should().Be(param);
        e.UpstreamMessage.Should().Contain(param).And.Contain("not sent");
    }

    [Fact]
    public void A_parts_type_is_named_in_at_most_40_characters()
    {
        var type = new string('x', 100_000);
        var act = () => Translate(Parse("""{"model":"x","messages":[{"role":"user","content":[{"type":"TYPE"}]}]}""".Replace("TYPE", type, StringComparison.Ordinal)));

        var message = act.Should().Throw<ProviderException>().Which.UpstreamMessage!;
        message.Should().Contain(new string('x', 40) + "…").And.NotContain(new string('x', 41));
        message.Length.Should().BeLessThan(400);
    }

    [Fact]
    public void A_system_message_with_an_image_is_named_not_flattened_to_its_text()
    {
        var act = () => Translate(Parse("""{"model":"x","messages":[{"role":"system","content":[{"type":"text","text":"Style:"},{"type":"image_url","image_url":{"url":"https://example.test/s.png"}}]},{"role":"user","content":"Hi"}]}"""));

        act.Should().Throw<ProviderException>().Which.Param.Should().Be("messages[0].content[1]");
    }

    [Fact]
    public void A_PDF_file_part_becomes_a_document_block_and_an_image_in_a_tool_result_an_image_block()
    {
        var body = Translate(Parse("""
            {"model":"x","messages":[
              {"role":"user","content":[{"type":"text","text":"Summarise"},{"type":"file","file":{"filename":"a.pdf","file_data":"data:application/pdf;base64,JVBERi0xLjQ="}}]},
              {"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"shot","arguments":"{}"}}]},
              {"role":"tool","tool_call_id":"a","content":[{"type":"text","text":"The screen:"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}
            """));

        var messages = body.GetProperty("messages");
        var document = messages[0].GetProperty("content")[1];
        document.GetProperty("type").GetString().Should().Be("document");
        document.GetProperty("source").GetProperty("type").GetString().Should().Be("base64");
        document.GetProperty("source").GetProperty("media_type").GetString().Should().Be("application/pdf");
        document.GetProperty("source").GetProperty("data").GetString().Should().Be("JVBERi0xLjQ=");
        var result = messages[2].GetProperty("content")[0];
        result.GetProperty("type").GetString().Should().Be("tool_result");
        result.GetProperty("content")[0].GetProperty("text").GetString().Should().Be("The screen:");
        result.GetProperty("content")[1].GetProperty("type").GetString().Should().Be("image");
        result.GetProperty("content")[1].GetProperty("source").GetProperty("data").GetString().Should().Be("iVBORw0KGgo=");
    }

    public static TheoryData<string, string> OpenAIOnly => new()
    {
        { "\"n\":2", "n" },
        { "\"logprobs\":true", "logprobs" },
        { "\"top_logprobs\":3", "top_logprobs" },
        { "\"logit_bias\":{\"50256\":-100}", "logit_bias" },
        { "\"modalities\":[\"text\",\"audio\"]", "modalities" },
        { "\"audio\":{\"voice\":\"alloy\",\"format\":\"wav\"}", "audio" },
    };

    [Theory]
    [MemberData(nameof(OpenAIOnly))]
    public void A_parameter_that_changes_what_comes_back_and_Anthropic_cannot_honour_is_named_not_dropped(string member, string param)
    {
        var act = () => Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],""" + member + "}"));

        var e = act.Should().Throw<ProviderException>().Which;
        e.NotSent.Should().BeTrue();
        e.Param.Should().Be(param);
    }

    [Fact]
    public void Parameters_that_only_tune_the_answer_are_not_refused_and_top_k_is_carried()
    {
        var body = Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],"n":1,"logprobs":false,"seed":7,"presence_penalty":0.5,"logit_bias":{},"top_k":40}"""));

        body.GetProperty("top_k").GetInt32().Should().Be(40);
        body.TryGetProperty("seed", out _).Should().BeFalse();
    }

    private const string WeatherSchema = """{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}""";

    [Fact]
    public void A_JSON_schema_answer_goes_as_a_tool_the_model_must_call()
    {
        var body = Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"w","description":"The weather.","schema":""" + WeatherSchema + "}}}"));

        var tool = body.GetProperty("tools").EnumerateArray().Single();
        tool.GetProperty("name").GetString().Should().Be(AnthropicTranslator.JsonTool);
        tool.GetProperty("description").GetString().Should().Be("The weather.");
        tool.GetProperty("input_schema").GetRawText().Should().Be(WeatherSchema);
        body.GetProperty("tool_choice").GetRawText().Should().Be("""{"type":"tool","name":"json_response"}""");
    }

    [Theory]
    [InlineData(null, """{"type":"any"}""")]
    [InlineData("\"auto\"", """{"type":"any"}""")]
    [InlineData("\"none\"", """{"type":"tool","name":"json_response"}""")]
    [InlineData("{\"type\":\"function\",\"function\":{\"name\":\"lookup\"}}", """{"type":"tool","name":"lookup"}""")]
    public void With_the_callers_tools_a_JSON_answer_is_the_JSON_tool_or_one_of_theirs(string? choice, string expected)
    {
        var body = Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]"""
            + (choice is null ? string.Empty : ",\"tool_choice\":" + choice) + "}"));

        body.GetProperty("tools").EnumerateArray().Select(t => t.GetProperty("name").GetString()).Should().Equal("lookup", AnthropicTranslator.JsonTool);
        body.GetProperty("tools")[1].GetProperty("input_schema").GetRawText().Should().Be("""{"type":"object"}""", "json_object: any object");
        body.GetProperty("tool_choice").GetRawText().Should().Be(expected);
    }

    [Fact]
    public void A_JSON_schema_whose_root_is_not_an_object_is_named_not_sent()
    {
        var act = () => Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"array","items":{"type":"string"}}}}}"""));

        act.Should().Throw<ProviderException>().Which.Param.Should().Be("response_format.json_schema.schema");
    }

    /// <summary>
    /// A whole message without a stop reason (a server that speaks Claude's format loosely) still has the finish_reason
    /// the OpenAI schema requires once the worker accepts it (<see cref="ProviderAnswer.Accept(ChatCompletionResponse?, string)"/>,
    /// as for every provider): it ended its turn, with its calls if it made some — it was left out of the answer.
    /// </summary>
    [Theory]
    [InlineData("""[{"type":"text","text":"Hi"}]""", FinishReasons.Stop)]
    [InlineData("""[{"type":"tool_use","id":"toolu_1","name":"lookup","input":{}}]""", FinishReasons.ToolCalls)]
    public void A_whole_message_without_a_stop_reason_has_a_finish_reason(string content, string finish)
    {
        var message = JsonSerializer.Deserialize($$$"""
            {"id":"msg_1","type":"message","role":"assistant","model":"claude","stop_reason":null,"content":{{{content}}},"usage":{"input_tokens":5,"output_tokens":2}}
            """, AnthropicJsonContext.Default.AnthropicMessage)!;

        ProviderAnswer.Accept(AnthropicTranslator.ToCanonical(message), "claude").FinishReason.Should().Be(finish);
    }

    [Fact]
    public void The_JSON_tools_input_is_the_answers_content_whole_and_streamed()
    {
        var message = JsonSerializer.Deserialize("""
            {"id":"msg_1","type":"message","role":"assistant","model":"claude","stop_reason":"tool_use",
             "content":[{"type":"tool_use","id":"toolu_1","name":"json_response","input":{"city":"Oslo"}}],"usage":{"input_tokens":5,"output_tokens":7}}
            """, AnthropicJsonContext.Default.AnthropicMessage)!;

        var whole = AnthropicTranslator.ToCanonical(message, answersInJson: true);
        whole.Content.Should().Be("""{"city":"Oslo"}""");
        whole.Choices[0].Message!.ToolCalls.Should().BeNull();
        whole.FinishReason.Should().Be(FinishReasons.Stop);
        AnthropicTranslator.ToCanonical(message).Choices[0].Message!.ToolCalls!.Single().Function!.Name.Should().Be("json_response", "without response_format it is an ordinary tool call");

        var state = new AnthropicTranslator.StreamState(0, answersInJson: true);
        var chunks = new[]
        {
            """{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}""",
            """{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"json_response","input":{}}}""",
            """{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}""",
            """{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":" \"Oslo\"}"}}""",
            """{"type":"content_block_stop","index":0}""",
            """{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":7}}""",
        }.SelectMany(e => state.OnEvent(JsonSerializer.Deserialize(e, AnthropicJsonContext.Default.AnthropicStreamEvent)!)).ToList();

        string.Concat(chunks.SelectMany(c => c.Choices).Select(c => c.Delta.Content)).Should().Be("""{"city": "Oslo"}""");
        chunks.SelectMany(c => c.Choices).Should().NotContain(c => c.Delta.ToolCalls != null);
        chunks.SelectMany(c => c.Choices).Single(c => c.FinishReason != null).FinishReason.Should().Be(FinishReasons.Stop);
    }

    [Fact]
    public void Prompt_caching_marks_from_an_Anthropic_client_reach_an_Anthropic_upstream_where_they_were()
    {
        const string Mark = """{"type":"ephemeral"}""";
        const string HourMark = """{"type":"ephemeral","ttl":"1h"}""";
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse(System.Text.Encoding.UTF8.GetBytes($$$"""
            {"model":"claude","max_tokens":64,
             "system":[{"type":"text","text":"You are terse. "},{"type":"text","text":"Long rules.","cache_control":{{{HourMark}}}}],
             "tools":[{"name":"lookup","input_schema":{"type":"object"},"cache_control":{{{Mark}}}}],
             "messages":[
               {"role":"user","content":[{"type":"text","text":"Look it up."},{"type":"text","text":"Context.","cache_control":{{{Mark}}}}]},
               {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"lookup","input":{}}]},
               {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"found","cache_control":{{{Mark}}}}]}]}
            """)));

        var body = Translate(request);

        var system = body.GetProperty("system");
        system.ValueKind.Should().Be(JsonValueKind.Array, "a marked system prompt stays in blocks");
        system[0].GetProperty("text").GetString().Should().Be("You are terse. ");
        system[0].TryGetProperty("cache_control", out _).Should().BeFalse();
        system[1].GetProperty("cache_control").GetRawText().Should().Be(HourMark);
        body.GetProperty("tools")[0].GetProperty("cache_control").GetRawText().Should().Be(Mark);
        var messages = body.GetProperty("messages");
        messages[0].GetProperty("content")[1].GetProperty("cache_control").GetRawText().Should().Be(Mark);
        messages[0].GetProperty("content")[0].TryGetProperty("cache_control", out _).Should().BeFalse();
        messages[2].GetProperty("content")[0].GetProperty("type").GetString().Should().Be("tool_result");
        messages[2].GetProperty("content")[0].GetProperty("cache_control").GetRawText().Should().Be(Mark);
    }

    [Fact]
    public void A_PDF_document_and_a_failed_tool_result_from_an_Anthropic_client_reach_an_Anthropic_upstream_as_they_were()
    {
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse("""
            {"model":"claude","max_tokens":64,"messages":[
              {"role":"user","content":[{"type":"document","title":"Q3.pdf","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQ="},"cache_control":{"type":"ephemeral"}},{"type":"text","text":"Sum it up."}]},
              {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"lookup","input":{}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"timed out","is_error":true}]}]}
            """u8.ToArray()));

        var file = request.Messages[0].Content!.Parts![0];
        file.Type.Should().Be("file", "an OpenAI upstream gets OpenAI's inline file part");
        file.AdditionalProperties!["file"].GetProperty("file_data").GetString().Should().Be("data:application/pdf;base64,JVBERi0xLjQ=");
        var body = Translate(request);
        var document = body.GetProperty("messages")[0].GetProperty("content")[0];
        document.GetProperty("type").GetString().Should().Be("document");
        document.GetProperty("title").GetString().Should().Be("Q3.pdf");
        document.GetProperty("source").GetProperty("data").GetString().Should().Be("JVBERi0xLjQ=");
        document.GetProperty("cache_control").GetProperty("type").GetString().Should().Be("ephemeral");
        var result = body.GetProperty("messages")[2].GetProperty("content")[0];
        result.GetProperty("is_error").GetBoolean().Should().BeTrue();
        System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false, dropAnthropicMembers: true)).Should().NotContain("is_error").And.Contain("file_data");
    }

    /// <summary>
    /// An earlier turn's thinking without a signature (a server that speaks Claude's format loosely wrote it, and an OpenAI
    /// caller gave it back as <c>thinking_blocks</c>) is left out of what Claude gets — Claude would refuse the whole
    /// request for it — while the signed blocks and the turn's text go as they were.
    /// </summary>
    [Fact]
    public void An_unsigned_thinking_block_given_back_is_left_out_of_what_Claude_gets()
    {
        var request = Parse("""
            {"model":"claude","messages":[
              {"role":"user","content":"Hi"},
              {"role":"assistant","content":"Hello.","thinking_blocks":[{"type":"thinking","thinking":"Unsigned.","signature":""},{"type":"thinking","thinking":"Signed.","signature":"sig"},{"type":"redacted_thinking","data":"opaque"}]},
              {"role":"user","content":"Again"}]}
            """);

        var turn = Translate(request).GetProperty("messages")[1].GetProperty("content");

        turn.EnumerateArray().Select(b => b.GetProperty("type").GetString()).Should().Equal("thinking", "redacted_thinking", "text");
        turn[0].GetProperty("thinking").GetString().Should().Be("Signed.");
    }

    [Fact]
    public void Claudes_thinking_in_an_earlier_turn_and_the_thinking_parameter_do_not_reach_OpenAI_itself()
    {
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse("""
            {"model":"claude","max_tokens":2048,"thinking":{"type":"enabled","budget_tokens":1024},"messages":[
              {"role":"user","content":"Hi"},
              {"role":"assistant","content":[{"type":"thinking","thinking":"Hm.","signature":"sig"},{"type":"redacted_thinking","data":"opaque"},{"type":"text","text":"Hello."}]},
              {"role":"user","content":"Again"}]}
            """u8.ToArray()));

        var body = Translate(request);
        body.GetProperty("thinking").GetProperty("budget_tokens").GetInt32().Should().Be(1024);
        var turn = body.GetProperty("messages")[1].GetProperty("content");
        turn.EnumerateArray().Select(b => b.GetProperty("type").GetString()).Should().Equal("thinking", "redacted_thinking", "text");
        turn[0].GetProperty("signature").GetString().Should().Be("sig");
        turn[1].GetProperty("data").GetString().Should().Be("opaque");

        var toOpenAI = System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false, dropAnthropicMembers: true));
        toOpenAI.Should().NotContain("thinking").And.Contain("Hello.");
        System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "router/claude", stream: false)).Should().Contain("thinking_blocks").And.Contain("budget_tokens");
    }

    [Theory]
    [InlineData("\"reasoning_effort\":\"high\",\"max_completion_tokens\":8000", 4096)]
    [InlineData("\"reasoning_effort\":\"low\"", 1024)]
    [InlineData("\"reasoning_effort\":\"xhigh\",\"max_tokens\":16000", 8192)]
    [InlineData("\"reasoning_effort\":\"high\",\"max_tokens\":3000", 2999)]
    [InlineData("\"reasoning_effort\":\"high\",\"max_tokens\":1024", null)]
    [InlineData("\"reasoning_effort\":\"minimal\"", null)]
    [InlineData("\"reasoning_effort\":\"medium\",\"temperature\":0.2", null)]
    [InlineData("\"reasoning_effort\":\"medium\",\"response_format\":{\"type\":\"json_object\"}", null)]
    [InlineData("\"reasoning_effort\":\"medium\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"required\"", null)]
    [InlineData("\"reasoning_effort\":\"medium\",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1500}", 1500)]
    public void OpenAIs_reasoning_effort_is_Claudes_thinking_budget_where_Claude_can_think(string members, int? budget)
    {
        var body = Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],""" + members + "}"));

        if (budget is null)
        {
            body.TryGetProperty("thinking", out _).Should().BeFalse();
        }
        else
        {
            body.GetProperty("thinking").GetProperty("type").GetString().Should().Be("enabled");
            body.GetProperty("thinking").GetProperty("budget_tokens").GetInt32().Should().Be(budget.Value);
            body.GetProperty("thinking").GetProperty("budget_tokens").GetInt32().Should().BeLessThan(body.GetProperty("max_tokens").GetInt32());
        }
    }

    [Fact]
    public void Prompt_caching_marks_do_not_reach_OpenAI_itself_but_do_reach_an_OpenAI_compatible_router()
    {
        var request = Parse("""
            {"model":"x","messages":[{"role":"system","content":[{"type":"text","text":"Rules.","cache_control":{"type":"ephemeral"}}]},
              {"role":"tool","tool_call_id":"t","content":"ok","cache_control":{"type":"ephemeral"}},
              {"role":"user","content":"Hi"}],
             "tools":[{"type":"function","function":{"name":"f"},"cache_control":{"type":"ephemeral"}}],"metadata":{"a":"b"}}
            """);

        var toOpenAI = System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false, dropAnthropicMembers: true));
        var toRouter = System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "anthropic/claude", stream: false));

        toOpenAI.Should().NotContain("cache_control").And.Contain("\"metadata\":{\"a\":\"b\"}", "only cache_control is left out");
        System.Text.RegularExpressions.Regex.Count(toRouter, "cache_control").Should().Be(3);
        System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false)).Should().Contain("cache_control", "the flag lasts one write");
    }

    [Fact]
    public void One_of_Anthropics_own_tools_reaches_Claude_with_every_member_and_another_kind_of_tool_is_named_not_dropped()
    {
        var body = Translate(Parse("""
            {"model":"x","messages":[{"role":"user","content":"Hi"}],
             "tools":[{"type":"function","function":{"name":"f"}},
                      {"type":"web_search_20250305","name":"web_search","max_uses":3,"allowed_domains":["example.com"],"cache_control":{"type":"ephemeral"}}]}
            """));
        var search = body.GetProperty("tools")[1];
        search.GetProperty("type").GetString().Should().Be("web_search_20250305");
        search.GetProperty("name").GetString().Should().Be("web_search");
        search.GetProperty("max_uses").GetInt32().Should().Be(3);
        search.GetProperty("allowed_domains")[0].GetString().Should().Be("example.com");
        search.GetProperty("cache_control").GetProperty("type").GetString().Should().Be("ephemeral");
        search.TryGetProperty("input_schema", out _).Should().BeFalse();

        // OpenAI's custom tools (GPT-5) were left out for Claude before: now the request is not sent to it.
        var act = () => Translate(Parse("""{"model":"x","messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"custom","custom":{"name":"grammar"}}]}"""));
        var e = act.Should().Throw<ProviderException>().Which;
        e.NotSent.Should().BeTrue();
        e.Param.Should().Be("tools[0].type");
    }

    [Fact]
    public void Claudes_own_tools_and_a_turns_server_tool_blocks_do_not_reach_OpenAI_itself_and_reach_a_router_as_they_are()
    {
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse(System.Text.Encoding.UTF8.GetBytes("""
            {"model":"x","max_tokens":16,"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":1}],
             "messages":[{"role":"user","content":"weather?"},
                         {"role":"assistant","content":[{"type":"server_tool_use","id":"s1","name":"web_search","input":{"query":"w"}},
                           {"type":"web_search_tool_result","tool_use_id":"s1","content":[{"type":"web_search_result","url":"https://e.x","encrypted_content":"enc"}]},
                           {"type":"text","text":"Sunny.","citations":[{"type":"web_search_result_location","url":"https://e.x","cited_text":"sun"}]}]},
                         {"role":"user","content":"tomorrow?"}]}
            """)));

        request.Messages[1].Content!.GetText().Should().Be("Sunny.", "other providers read the turn's text");
        var toClaude = Translate(request).GetProperty("messages")[1].GetProperty("content");
        toClaude.GetArrayLength().Should().Be(3);
        toClaude[1].GetProperty("content")[0].GetProperty("encrypted_content").GetString().Should().Be("enc");
        toClaude[2].GetProperty("citations")[0].GetProperty("cited_text").GetString().Should().Be("sun");

        // What OpenAI's strict schema has no form for (its provider asks this before sending; the HTTP test is ServerToolsTests).
        var act = () => ServerTools.Refuse(request, "'openai'", anyType: false);
        act.Should().Throw<ProviderException>().Which.NotSent.Should().BeTrue();
        var tools = request.Tools;
        request.Tools = null;
        act.Should().Throw<ProviderException>().Which.Param.Should().Be("messages[1].anthropic_content");
        request.Tools = tools;

        var toOpenAI = System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false, dropAnthropicMembers: true));
        toOpenAI.Should().NotContain("anthropic_content");
        var router = System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "anthropic/claude", stream: false));
        router.Should().Contain("\"anthropic_content\"").And.Contain("web_search_tool_result").And.Contain("\"max_uses\"" , "a router in front of Claude gets them as they are").And.Contain("web_search_20250305");
    }

    [Theory]
    [InlineData("standard_only", "default", "standard_only")]
    [InlineData("auto", "auto", "auto")]
    public void An_Anthropic_callers_service_tier_reaches_Claude_and_reads_as_OpenAIs_word_in_between(string given, string canonical, string toClaude)
    {
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse(System.Text.Encoding.UTF8.GetBytes(
            $$"""{"model":"x","max_tokens":16,"service_tier":"{{given}}","messages":[{"role":"user","content":"hi"}]}""")));

        request.AdditionalProperties!["service_tier"].GetString().Should().Be(canonical, "what an OpenAI upstream understands");
        Translate(request).GetProperty("service_tier").GetString().Should().Be(toClaude);
    }

    [Theory]
    [InlineData("priority", "auto")]
    [InlineData("default", "standard_only")]
    [InlineData("flex", null)]
    public void An_OpenAI_callers_service_tier_reaches_Claude_in_its_words_or_not_at_all(string given, string? toClaude)
    {
        var body = Translate(Parse($$"""{"model":"x","service_tier":"{{given}}","messages":[{"role":"user","content":"hi"}]}"""));

        if (toClaude is null)
        {
            body.TryGetProperty("service_tier", out _).Should().BeFalse();
        }
        else
        {
            body.GetProperty("service_tier").GetString().Should().Be(toClaude);
        }
    }

    [Fact]
    public void An_empty_citations_list_is_no_citation_and_an_escaped_server_block_type_is_still_one()
    {
        static ChatCompletionRequest Read(string json) => AnthropicCodec.ToCanonical(AnthropicCodec.Parse(System.Text.Encoding.UTF8.GetBytes(json)));

        var plain = Read("""{"model":"x","max_tokens":16,"messages":[{"role":"user","content":[{"type":"text","text":"hi","citations":[]}]}]}""");
        plain.Messages[0].AdditionalProperties.Should().BeNull("an empty citations list needs no blocks kept");

        var escaped = Read("""
            {"model":"x","max_tokens":16,"messages":[{"role":"user","content":"q"},{"role":"assistant","content":[
              {"type":"server\u005ftool_use","id":"s1","name":"web_search","input":{}},
              {"type":"web_search_tool_result","tool_use_id":"s1","content":[{"type":"web_search_result","url":"https://e.x","encrypted_content":"e"}]}]},
              {"role":"user","content":"more"}]}
            """);
        ServerTools.Content(escaped.Messages[1]).Should().NotBeNull();
    }

    /// <summary>
    /// Claude's MCP connector, code execution container and context editing from a <c>/v1/messages</c> caller reach Claude
    /// as they came (they were left out before: the request Claude answered had no MCP tools); count_tokens gets the MCP
    /// servers only. OpenAI itself has no form for the first two (not sent there) and is not sent the third.
    /// </summary>
    [Fact]
    public void Claudes_MCP_servers_container_and_context_editing_reach_Claude_and_not_OpenAI_itself()
    {
        var request = AnthropicCodec.ToCanonical(AnthropicCodec.Parse(System.Text.Encoding.UTF8.GetBytes("""
            {"model":"x","max_tokens":16,"messages":[{"role":"user","content":"hi"}],
             "mcp_servers":[{"type":"url","url":"https://mcp.example.com/sse","name":"example","authorization_token":"tok"}],
             "container":"container_011CQ","context_management":{"edits":[{"type":"clear_tool_uses_20250919"}]}}
            """)));

        var body = Translate(request);
        body.GetProperty("mcp_servers")[0].GetProperty("url").GetString().Should().Be("https://mcp.example.com/sse");
        body.GetProperty("container").GetString().Should().Be("container_011CQ");
        body.GetProperty("context_management").GetProperty("edits")[0].GetProperty("type").GetString().Should().Be("clear_tool_uses_20250919");

        var buffer = new ArrayBufferWriter<byte>();
        AnthropicTranslator.WriteRequest(buffer, request, "claude-sonnet-4-5", stream: false, defaultMaxTokens: 64, counting: true);
        var counted = JsonDocument.Parse(buffer.WrittenMemory).RootElement;
        counted.TryGetProperty("mcp_servers", out _).Should().BeTrue();
        counted.TryGetProperty("container", out _).Should().BeFalse();
        counted.TryGetProperty("context_management", out _).Should().BeFalse();

        var act = () => ServerTools.Refuse(request, "'openai'", anyType: false);
        act.Should().Throw<ProviderException>().Which.Param.Should().Be("mcp_servers");
        request.AdditionalProperties!.Remove("mcp_servers");
        request.AdditionalProperties.Remove("container");
        act.Should().NotThrow();
        System.Text.Encoding.UTF8.GetString(RequestJson.ToUpstreamBytes(request, "gpt-4o", stream: false, dropAnthropicMembers: true)).Should().NotContain("context_management");
    }

    [Fact]
    public void A_round_trip_keeps_text_tool_calls_and_finish_reason()
    {
        var message = new AnthropicMessage
        {
            Id = "msg_1",
            Model = "claude",
            Content = [new AnthropicContentBlock { Type = "text", Text = "Sure." }, new AnthropicContentBlock { Type = "tool_use", Id = "t1", Name = "f", Input = JsonDocument.Parse("""{"a":1}""").RootElement }],
            StopReason = "tool_use",
            Usage = new AnthropicUsage { InputTokens = 10, OutputTokens = 5 },
        };

        var canonical = AnthropicTranslator.ToCanonical(message);
        var back = Translate(new ChatCompletionRequest { Model = "x", Messages = [ChatCompletionMessage.User("q"), canonical.Choices[0].Message!] });

        var blocks = back.GetProperty("messages")[1].GetProperty("content").EnumerateArray().ToList();
        blocks[0].GetProperty("text").GetString().Should().Be("Sure.");
        blocks[1].GetProperty("id").GetString().Should().Be("t1");
        blocks[1].GetProperty("input").GetProperty("a").GetInt32().Should().Be(1);
        canonical.FinishReason.Should().Be(FinishReasons.ToolCalls);
    }

    [Theory]
    [InlineData("end_turn", "stop")]
    [InlineData("stop_sequence", "stop")]
    [InlineData("max_tokens", "length")]
    [InlineData("tool_use", "tool_calls")]
    [InlineData("refusal", "content_filter")]
    [InlineData("model_context_window_exceeded", "length")]
    [InlineData("pause_turn", "stop")]
    public void Stop_reasons_map_to_finish_reasons(string stopReason, string finishReason) =>
        AnthropicTranslator.FinishReason(stopReason).Should().Be(finishReason);

    /// <summary>
    /// CsCheck, fixed seed: any OpenAI-format stream — text, refusal and tool-call deltas in any order, calls of up to
    /// three indexes interleaving, each chunk holding one or more pieces — reaches a <c>/v1/messages</c> caller as
    /// Claude's blocks come: numbered in order, each started once and stopped once, every delta to the block open then,
    /// all stopped before <c>message_delta</c>; every call whole in one block (its id, name and arguments as sent), and
    /// the text (with the refusal's words) all there, in order.
    /// </summary>
    [Fact]
    public void Property_any_interleaving_of_an_OpenAI_stream_is_well_formed_Claude_blocks()
    {
        // A piece: 0 text, 1 refusal, 2+k the call of index k (its first piece names it).
        var piece = Gen.Select(Gen.Int[0, 4], Gen.Char["abcxyz {}\":"].Array[1, 6].Select(static c => new string(c)));
        var chunks = piece.List[1, 3].List[1, 12];
        chunks.Sample(stream =>
        {
            var writer = new AnthropicStreamWriter();
            var named = new HashSet<int>();
            var sentArgs = new Dictionary<int, string>();
            var sentText = new System.Text.StringBuilder();
            var events = new List<(string Name, JsonElement Json)>();
            foreach (var pieces in stream)
            {
                var delta = new ChatCompletionDelta();
                foreach (var (kind, text) in pieces)
                {
                    if (kind == 0 && delta.Content is null && delta.ToolCalls is null)
                    {
                        delta.Content = text;
                    }
                    else if (kind == 1 && delta.Refusal is null && delta.ToolCalls is null)
                    {
                        delta.Refusal = text;
                    }
                    else if (kind >= 2)
                    {
                        var index = kind - 2;
                        var first = named.Add(index);
                        (delta.ToolCalls ??= []).Add(new ToolCall { Index = index, Id = first ? $"call_{index}" : null, Type = first ? "function" : null, Function = new FunctionCall { Name = first ? $"f{index}" : null, Arguments = text } });
                        sentArgs[index] = sentArgs.GetValueOrDefault(index) + text;
                    }
                }

                sentText.Append(delta.Content).Append(delta.Refusal); // a delta's text before its refusal, as its reader takes them
                var chunk = new ChatCompletionChunk { Id = "x", Model = "m", Choices = [new ChunkChoice { Delta = delta }] };
                events.AddRange(writer.OnChunk(chunk).Select(e => (e.Name, JsonDocument.Parse(e.Json).RootElement)));
            }

            events.AddRange(writer.Finish().Select(e => (e.Name, JsonDocument.Parse(e.Json).RootElement)));

            var blocks = PipelineGateway.Tests.Support.StreamShapes.ClaudeBlocks(events.Select(static e => e.Json));
            var calls = blocks.Where(b => b.Type == "tool_use").ToList();
            calls.Select(c => c.Id).Should().OnlyHaveUniqueItems().And.BeEquivalentTo(sentArgs.Keys.Select(k => $"call_{k}"));
            foreach (var call in calls)
            {
                var index = int.Parse(call.Id!["call_".Length..], System.Globalization.CultureInfo.InvariantCulture);
                (call.Name, call.Text).Should().Be(($"f{index}", sentArgs[index]));
            }

            string.Concat(blocks.Where(b => b.Type == "text").Select(b => b.Text)).Should().Be(sentText.ToString());
        }, seed: "0N0XIzNsQ0P7", iter: 2_000);
    }

    /// <summary>
    /// Two signed thinking blocks in a row (a replayed answer's, in one delta) stream as two blocks: a signature ends
    /// its block, so the next thinking is not written into the block already signed.
    /// </summary>
    [Fact]
    public void A_signature_ends_its_thinking_block_in_a_messages_stream()
    {
        var writer = new AnthropicStreamWriter();
        var blocks = new[] { new ThinkingBlock(ThinkingBlock.Plain, "First.", "S1", null), new ThinkingBlock(ThinkingBlock.Plain, "Second.", "S2", null) };
        var chunk = new ChatCompletionChunk { Id = "x", Model = "m", Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { AdditionalProperties = ThinkingBlocks.Write(null, blocks, null) } }] };

        var events = writer.OnChunk(chunk).Concat(writer.Finish()).Select(e => (e.Name, Json: JsonDocument.Parse(e.Json).RootElement)).ToList();

        events.Where(e => e.Name == "content_block_start").Select(e => e.Json.GetProperty("index").GetInt32()).Should().Equal(0, 1);
        events.Where(e => e.Name == "content_block_stop").Select(e => e.Json.GetProperty("index").GetInt32()).Should().Equal(0, 1);
        events.Where(e => e.Name == "content_block_delta").Select(e => (e.Json.GetProperty("index").GetInt32(), e.Json.GetProperty("delta").GetRawText()))
            .Should().Equal(
                (0, """{"type":"thinking_delta","thinking":"First."}"""),
                (0, """{"type":"signature_delta","signature":"S1"}"""),
                (1, """{"type":"thinking_delta","thinking":"Second."}"""),
                (1, """{"type":"signature_delta","signature":"S2"}"""));
    }

    /// <summary>
    /// Claude's structured outputs from a <c>/v1/messages</c> caller (the Vercel AI SDK's way of asking Claude for an
    /// object): <c>output_config.format</c> (or the beta's <c>output_format</c>) is the canonical strict
    /// <c>json_schema</c> response format — which Claude then gets as the gateway's JSON tool, and OpenAI natively —
    /// and the rest of <c>output_config</c> (<c>effort</c>) reaches Claude as it came; OpenAI is not sent it. A format
    /// that is not a JSON schema is a 400 naming it. (The member was dropped before, and the answer was prose.)
    /// </summary>
    [Fact]
    public void Claudes_output_format_is_the_canonical_json_schema_and_its_effort_reaches_Claude()
    {
        static ChatCompletionRequest Read(string json) => AnthropicCodec.ToCanonical(AnthropicCodec.Parse(System.Text.Encoding.UTF8.GetBytes(json)));
        const string Schema = """{"type":"object","properties":{"name":{"type":"string"}},"required":["name"],"additionalProperties":false}""";

        var request = Read("""{"model":"x","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"output_config":{"effort":"low","format":{"type":"json_schema","schema":""" + Schema + "}}}");
        request.ResponseFormat!.Value.GetProperty("type").GetString().Should().Be("json_schema");
        request.ResponseFormat.Value.GetProperty("json_schema").GetProperty("strict").GetBoolean().Should().BeTrue();
        request.ResponseFormat.Value.GetProperty("json_schema").GetProperty("schema").GetRawText().Should().Be(Schema);
        AnthropicTranslator.AnswersInJson(request).Should().BeTrue("Claude answers through the gateway's JSON tool");
        var body = Translate(request);
        body.GetProperty("output_config").GetRawText().Should().Be("""{"effort":"low"}""");
        AnthropicCodec.IsAnthropicOwn("output_config").Should().BeTrue("an OpenAI upstream is not sent Claude's effort");

        var beta = Read("""{"model":"x","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"output_format":{"type":"json_schema","schema":""" + Schema + "}}");
        beta.ResponseFormat!.Value.GetProperty("json_schema").GetProperty("schema").GetRawText().Should().Be(Schema);
        beta.AdditionalProperties.Should().BeNull("nothing of it is left to send as it came");
        Translate(beta).TryGetProperty("output_config", out _).Should().BeFalse();

        var act = () => Read("""{"model":"x","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"output_config":{"format":{"type":"xml"}}}""");
        act.Should().Throw<AnthropicRequestException>().Which.Field.Should().Be("output_config.format.type");
        act = () => Read("""{"model":"x","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"output_config":"fast"}""");
        act.Should().Throw<AnthropicRequestException>().Which.Field.Should().Be("output_config");
    }
}
