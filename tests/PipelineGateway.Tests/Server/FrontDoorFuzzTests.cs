using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Server;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// Property-based tests of the front door (CsCheck, fixed seeds, bounded counts): valid bodies for both routes are
/// mutated — values replaced by random JSON, fields removed or added, keys duplicated, numbers swapped for tokens
/// no parser expects, bytes inserted, the text cut — and sent with random <c>x-gateway-*</c> headers, keys and
/// content types to a real server. The properties: never a 5xx, never a hang, every error in the route's own shape.
/// The cases are drawn from a fixed PCG stream, so a run is the same every time; a failure prints the case.
/// </summary>
public sealed class FrontDoorFuzzTests : IAsyncLifetime
{
    private const string Key = "sk-gw-fuzz-0123456789";

    // CI runs these fixed seeds and counts (a few seconds). To explore further, set PGW_FUZZ_SEED and
    // PGW_FUZZ_SCALE (a multiplier of the counts): a failure prints the case, and the same seed replays it.
    private static readonly ulong Seed = Fuzz.Seed;
    private static readonly int Scale = Fuzz.Scale;
    private static readonly int HttpCases = 3_000 * Scale;
    private static readonly int CodecCases = 20_000 * Scale;
    private WebApplication _app = null!;
    private HttpClient _http = null!;
    private SimulatorServer _sim = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        // Three ways to an answer: in-process, over HTTP as OpenAI, over HTTP as Anthropic (the translators run too).
        _sim = await SimulatorServer.StartAsync(new SimulatorOptions(), cancellationToken: Ct);
        Environment.SetEnvironmentVariable("PGW_TEST_FUZZ_ANTHROPIC_KEY", "sk-ant-fuzz-upstream-key");
        var config = TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Providers:1:Name"] = "sim-http",
            ["Gateway:Providers:1:Type"] = "OpenAICompatible",
            ["Gateway:Providers:1:BaseUrl"] = new Uri(_sim.BaseAddress, "v1").ToString(),
            ["Gateway:Models:1:Name"] = "via-http",
            ["Gateway:Models:1:Deployments:0:Provider"] = "sim-http",
            ["Gateway:Models:1:Deployments:0:Model"] = "gpt-4o-mini",
            ["Gateway:Providers:2:Name"] = "sim-anthropic",
            ["Gateway:Providers:2:Type"] = "Anthropic",
            ["Gateway:Providers:2:BaseUrl"] = new Uri(_sim.BaseAddress, "v1").ToString(),
            ["Gateway:Providers:2:ApiKeyEnvironmentVariable"] = "PGW_TEST_FUZZ_ANTHROPIC_KEY",
            ["Gateway:Models:2:Name"] = "via-anthropic",
            ["Gateway:Models:2:Deployments:0:Provider"] = "sim-anthropic",
            ["Gateway:Models:2:Deployments:0:Model"] = "claude-3-5-haiku",
            ["Gateway:Cache:Enabled"] = "true",
            ["Gateway:Server:Keys:0:Id"] = "fuzz",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:MaxAuthFailuresPerMinute"] = "1000000",
            ["Gateway:Server:MaxRequestBodyBytes"] = "65536",
        });
        _app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { });
        var root = await GatewayServer.StartAsync(_app, Ct);

        // Header values are sent as Latin-1 bytes, so values with bytes above 0x7F reach the server as sent.
        _http = new HttpClient(new SocketsHttpHandler { RequestHeaderEncodingSelector = (_, _) => Encoding.Latin1 })
        {
            BaseAddress = root,
            Timeout = TimeSpan.FromSeconds(20),
        };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
        await _sim.DisposeAsync();
    }

    [Fact]
    public async Task Mutated_requests_on_every_route_never_get_a_5xx_and_every_error_is_in_the_route_shape()
    {
        var failures = new List<string>();
        var statuses = new Dictionary<int, int>();
        var answered = new HashSet<string>();
        foreach (var c in Cases(Fuzz.Request, HttpCases, Seed))
        {
            int status;
            string text;
            try
            {
                (status, text) = await SendAsync(c);
            }
            catch (HttpRequestException) when (c.Path == Fuzz.Speech)
            {
                // Speech writes its first audio into the response before the flush that ends the burst it came in: a
                // deadline passing between the two resets the connection with the headers still unsent — the same cut
                // as after them (a reset before any answer, its case unnamed, was seen once in a loaded CI run; this is
                // the one place the gateway resets a connection). Judged in Problem: only a deadline the caller set may cut.
                (status, text) = (200, CutTransfer);
            }
            catch (HttpRequestException ex)
            {
                // Any other transport failure (a reset before any answer) is a failure of its case, named with it.
                failures.Add($"a transport failure ({ex.InnerException?.Message ?? ex.Message})\n  case: {c}");
                continue;
            }

            statuses[status] = statuses.GetValueOrDefault(status) + 1;
            if (status == 200)
            {
                answered.Add(c.Path);
            }

            if (Problem(c, status, text) is { } problem)
            {
                failures.Add($"{problem}\n  case: {c}\n  answer: {status} {Shorten(text)}");
            }
        }

        failures.Should().BeEmpty(string.Join("\n\n", failures.Take(5)));
        statuses.Keys.Should().Contain(200, "the mutations leave some requests valid, so answers are checked too");
        statuses.Keys.Should().Contain(400);
        answered.Should().BeEquivalentTo([Fuzz.Chat, Fuzz.Messages, Fuzz.Responses, Fuzz.Embeddings, Fuzz.Moderations, Fuzz.Completions, Fuzz.Images, Fuzz.Speech, Fuzz.Rerank], "every route answers some of its cases");
    }

    [Fact]
    public void The_content_type_check_says_what_the_media_type_parser_says()
    {
        // The front door recognises the usual JSON content types without parsing them; for any content type — the
        // usual ones in any letter case, with parameters, spaces, other types, +json types, broken syntax — its answer
        // must be the parser's.
        var pcg = new PCG((uint)(Seed + 7), 3);
        var parts = new[] { "application/json", "APPLICATION/JSON", "Application/Json", "application/json; charset=utf-8",
            "application/json; Charset=UTF-8", "application/json;charset=utf-8", "application/jsonx", "application/vnd.api+json",
            "text/json", "text/plain", "json", "application/", "/json", ";", " ", "\t", "charset=utf-8", "; q=1", "\"", ",", "+json" };
        for (var i = 0; i < 20_000 * Scale; i++)
        {
            var text = new StringBuilder();
            var pieces = 1 + (int)(pcg.Next() % 3);
            for (var p = 0; p < pieces; p++)
            {
                text.Append(parts[pcg.Next() % (uint)parts.Length]);
            }

            var contentType = pcg.Next() % 50 == 0 ? null : text.ToString();
            FrontDoor.IsJson(contentType).Should().Be(FrontDoor.IsJsonParsed(contentType), "content type '{0}'", contentType);
        }

        FrontDoor.IsJson("application/json").Should().BeTrue();
        FrontDoor.IsJson("Application/JSON; charset=UTF-8").Should().BeTrue();
        FrontDoor.IsJson("text/plain").Should().BeFalse();
    }

    [Fact]
    public void An_anthropic_beta_header_is_sent_on_only_as_a_list_of_names_whatever_the_caller_wrote()
    {
        // Any header value (one or several): refused, or a comma-separated list of names — never a character that could
        // end the header line or start another on the way to Claude.
        var value = Gen.Frequency(
            (3, Gen.Char['\0', 'ÿ'].Array[0, 40].Select(chars => new string(chars))),
            (3, Gen.OneOf("web-fetch-2025-09-10", "context-1m-2025-08-07", " ", ",", "a\r\nx-evil: 1", "é", ";", "").Array[1, 6].Select(parts => string.Join(",", parts))));
        foreach (var values in Cases(value.Array[1, 3], 5_000, Seed + 9))
        {
            if (AnthropicMessagesEndpoint.TryBeta(new Microsoft.Extensions.Primitives.StringValues(values), out var beta) && beta is not null)
            {
                beta.Should().MatchRegex("^[A-Za-z0-9.-]+(,[A-Za-z0-9.-]+)*$");
                beta.Split(',').Should().HaveCountLessThanOrEqualTo(32).And.OnlyContain(n => n.Length <= 64);
            }
        }

        AnthropicMessagesEndpoint.TryBeta(new Microsoft.Extensions.Primitives.StringValues(["a, b", "c"]), out var joined).Should().BeTrue();
        joined.Should().Be("a,b,c");
        AnthropicMessagesEndpoint.TryBeta(default, out var none).Should().BeTrue();
        none.Should().BeNull();
    }

    [Fact]
    public void The_Anthropic_codec_refuses_any_mutation_with_its_own_error_and_never_anything_else()
    {
        var unexpected = new List<string>();
        foreach (var c in Cases(Gen.Frequency((1, Fuzz.Body(Fuzz.MessagesTemplate)), (1, Fuzz.Body(Fuzz.ServerToolsTemplate))), CodecCases, Seed + 1))
        {
            try
            {
                AnthropicCodec.ToCanonical(AnthropicCodec.Parse(c.Bytes));
            }
            catch (AnthropicRequestException ex)
            {
                ex.Message.Should().NotContain("PipelineGateway.", "errors name fields, not .NET types");
            }
            catch (Exception ex)
            {
                unexpected.Add($"{ex.GetType().Name}: {ex.Message}\n  body: {Shorten(c.ToString())}");
            }
        }

        unexpected.Should().BeEmpty(string.Join("\n\n", unexpected.Take(5)));
    }

    [Fact]
    public void What_the_Anthropic_provider_writes_the_Anthropic_codec_reads()
    {
        // The provider's writer and the codec are two ends of one wire format: anything canonical the writer
        // produces must parse, so the simulator (which reads with the codec) sees what a real upstream would.
        var gen =
            from texts in Gen.String[1, 40].Array[1, 6]
            from system in Gen.Bool
            from hot in Gen.Bool
            from degrees in Gen.Double[0, 2]
            from stops in Gen.String[1, 8].Array[0, 3]
            select (texts, system, temperature: hot ? (double?)degrees : null, stops);
        foreach (var (texts, system, temperature, stops) in Cases(gen, 500, Seed + 2))
        {
            var messages = new List<ChatCompletionMessage>();
            if (system)
            {
                messages.Add(new ChatCompletionMessage { Role = ChatRoles.System, Content = new MessageContent("be brief") });
            }

            messages.AddRange(texts.Select((t, i) => new ChatCompletionMessage { Role = i % 2 == 0 ? ChatRoles.User : ChatRoles.Assistant, Content = new MessageContent(t) }));
            var request = new ChatCompletionRequest { Model = "m", Messages = messages, Temperature = temperature, Stop = stops.Length > 0 ? new StopSequences(stops) : null };
            var buffer = new System.Buffers.ArrayBufferWriter<byte>();

            AnthropicTranslator.WriteRequest(buffer, request, "claude", stream: false, defaultMaxTokens: 64);

            var parsed = AnthropicCodec.Parse(buffer.WrittenSpan);
            parsed.Messages.Should().NotBeEmpty();
            parsed.MaxTokens.Should().Be(64);
        }
    }

    private async Task<(int Status, string Text)> SendAsync(FuzzRequest c)
    {
        using var message = new HttpRequestMessage(HttpMethod.Post, c.Path) { Content = new ByteArrayContent(c.Body.Bytes) };
        if (c.ContentType is not null)
        {
            message.Content.Headers.TryAddWithoutValidation("Content-Type", c.ContentType);
        }

        if (c.Key is not null)
        {
            message.Headers.TryAddWithoutValidation("Authorization", "Bearer " + c.Key);
        }

        foreach (var (name, value) in c.Headers)
        {
            message.Headers.TryAddWithoutValidation(name, value);
        }

        using var response = await _http.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, Ct);
        try
        {
            return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
        }
        catch (HttpRequestException) when (c.Path == Fuzz.Speech && response.IsSuccessStatusCode)
        {
            // Speech streams its audio as it is made: a deadline that passes after the first audio cuts the transfer
            // (the connection is reset: no error can follow raw audio). Judged in Problem.
            return ((int)response.StatusCode, CutTransfer);
        }
    }

    /// <summary>What <see cref="SendAsync"/> answers for a speech transfer that was cut after its first audio.</summary>
    private const string CutTransfer = "\u0000cut";

    private static string? Problem(FuzzRequest c, int status, string text)
    {
        if (status is 503 or 504 && c.Headers.Any(h => h.Name.Equals("x-gateway-timeout-ms", StringComparison.OrdinalIgnoreCase))
            && new[] { "\"deadline_exceeded\"", "\"provider_overloaded\"", "\"timeout_error\"", "\"overloaded_error\"" }.Any(code => text.Contains(code, StringComparison.Ordinal)))
        {
            // A deadline the caller set (the fuzz sends a few milliseconds) that the gateway could not meet: its 504, or
            // the 503 of a wait expected to outlast it (a loaded CI machine's queue) — the server's honest answer, in the
            // route's shape; not a refusal of a request the client got wrong.
            try
            {
                FrontDoorTests.ErrorIn(c.Path, JsonDocument.Parse(text).RootElement);
                return null;
            }
            catch (Exception ex)
            {
                return $"a {status} not in the route's error shape: {ex.Message}";
            }
        }

        if (status >= 500)
        {
            return $"a {status} for a client's request";
        }

        if (status >= 400)
        {
            try
            {
                FrontDoorTests.ErrorIn(c.Path, JsonDocument.Parse(text).RootElement);
                return null;
            }
            catch (Exception ex)
            {
                return $"a {status} not in the route's error shape: {ex.Message}";
            }
        }

        if (c.Path == Fuzz.Speech)
        {
            if (text == CutTransfer)
            {
                // Only a deadline the caller set may cut it (x-gateway-timeout-ms: the fuzz sends a few milliseconds too).
                return c.Headers.Any(h => h.Name.Equals("x-gateway-timeout-ms", StringComparison.OrdinalIgnoreCase)) ? null : "a speech transfer cut without a deadline";
            }

            return text.Length > 0 ? null : "a 2xx without audio"; // audio, not JSON
        }

        if (text.StartsWith("event:", StringComparison.Ordinal) || text.StartsWith("data:", StringComparison.Ordinal))
        {
            var complete = c.Path switch
            {
                Fuzz.Messages => text.Contains("event: message_stop", StringComparison.Ordinal),
                Fuzz.Responses => text.Contains("event: response.completed", StringComparison.Ordinal) || text.Contains("event: response.incomplete", StringComparison.Ordinal),
                Fuzz.Images => text.Contains("data: {\"type\":\"image_generation.completed\"", StringComparison.Ordinal), // as OpenAI's: no [DONE]
                _ => text.Contains("data: [DONE]", StringComparison.Ordinal),
            };
            return complete ? null : "a stream that did not end properly";
        }

        try
        {
            JsonDocument.Parse(text).Dispose();
            return null;
        }
        catch (JsonException)
        {
            return "a 2xx whose body is not JSON";
        }
    }

    /// <summary>The cases a generator draws from a fixed PCG stream: the same every run.</summary>
    internal static IEnumerable<T> Cases<T>(Gen<T> gen, int count, ulong seed)
    {
        var pcg = new PCG(1, seed);
        for (var i = 0; i < count; i++)
        {
            yield return gen.Generate(pcg, null, out _);
        }
    }

    private static string Shorten(string text) => text.Length <= 400 ? text : text[..400] + "…";
}

/// <summary>A generated body: the bytes sent, and how they were made (for the failure message).</summary>
internal sealed record FuzzBody(byte[] Bytes, string How)
{
    public override string ToString() => $"{How}: {Encoding.UTF8.GetString(Bytes)}";
}

internal sealed record FuzzRequest(string Path, FuzzBody Body, string? ContentType, string? Key, (string Name, string Value)[] Headers)
{
    public override string ToString() =>
        $"POST /{Path} key={Key ?? "none"} content-type={ContentType ?? "none"} headers=[{string.Join(", ", Headers.Select(h => $"{h.Name}: {h.Value}"))}] body={Body}";
}

/// <summary>The generators: valid templates, JSON values, mutations, header values.</summary>
internal static class Fuzz
{
    /// <summary>The fixed seed CI runs, or PGW_FUZZ_SEED's; a failure prints its case and the same seed replays it.</summary>
    public static readonly ulong Seed = ulong.TryParse(Environment.GetEnvironmentVariable("PGW_FUZZ_SEED"), out var s) ? s : 20261202UL;

    /// <summary>A multiplier of the case counts (PGW_FUZZ_SCALE), to explore further than CI does.</summary>
    public static readonly int Scale = int.TryParse(Environment.GetEnvironmentVariable("PGW_FUZZ_SCALE"), out var x) && x > 0 ? x : 1;

    public const string Chat = "v1/chat/completions";
    public const string Messages = "v1/messages";
    public const string Responses = "v1/responses";
    public const string Embeddings = "v1/embeddings";
    public const string Moderations = "v1/moderations";
    public const string Completions = "v1/completions";
    public const string Images = "v1/images/generations";
    public const string Speech = "v1/audio/speech";
    public const string Rerank = "v1/rerank";

    public const string RerankTemplate = """
        {"model":"gpt-4o-mini","query":"what does a gateway do","documents":["a gateway routes requests",{"text":"bananas"}],"top_n":1,"return_documents":true}
        """;

    public const string SpeechTemplate = """
        {"model":"gpt-4o-mini","input":"Hello from the fuzz.","voice":"alloy","response_format":"wav","speed":1.25,"instructions":"calmly"}
        """;

    public const string ImagesTemplate = """
        {"model":"gpt-4o-mini","prompt":"a lighthouse at dusk","n":1,"size":"16x16","response_format":"b64_json","quality":"standard","style":"vivid","output_compression":50,"user":"u1"}
        """;

    public const string CompletionsTemplate = """
        {"model":"gpt-4o-mini","prompt":"def fib(n):","suffix":"","max_tokens":8,"temperature":0.5,"top_p":0.9,"n":1,"stop":["\n\n"],"echo":false,
         "logprobs":null,"presence_penalty":0,"frequency_penalty":0,"best_of":1,"logit_bias":{"50256":-100},"seed":7,"user":"u1","top_k":5}
        """;

    public const string ModerationsTemplate = """
        {"model":"gpt-4o-mini","input":[{"type":"text","text":"is this fine"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}
        """;

    public const string EmbeddingsTemplate = """
        {"model":"gpt-4o-mini","input":["hello world","a second text"],"encoding_format":"float","dimensions":8,"user":"u1"}
        """;

    public const string ResponsesTemplate = """
        {"model":"gpt-4o-mini","stream":false,"store":false,"temperature":0.5,"max_output_tokens":16,"instructions":"be brief","user":"u1",
         "input":[{"role":"user","content":[{"type":"input_text","text":"hi"},{"type":"input_image","image_url":"https://example.com/a.png"}]},
                  {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
                  {"type":"function_call_output","call_id":"c1","output":"42"},
                  {"type":"reasoning","id":"rs_1","summary":[]},
                  {"role":"assistant","content":[{"type":"output_text","text":"ok"}]},
                  {"role":"user","content":"again"}],
         "tools":[{"type":"function","name":"f","parameters":{"type":"object"},"strict":false}],"tool_choice":"auto","text":{"format":{"type":"text"}},"reasoning":{"effort":"low"}}
        """;

    public const string ChatTemplate = """
        {"model":"gpt-4o-mini","stream":false,"temperature":0.5,"max_tokens":16,"user":"u1",
         "messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]},
                     {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                     {"role":"tool","tool_call_id":"c1","content":"42"}],
         "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto","stop":["x"],"n":1}
        """;

    public const string MessagesTemplate = """
        {"model":"gpt-4o-mini","max_tokens":16,"stream":false,"temperature":0.5,"top_p":0.9,"top_k":5,"system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],"metadata":{"user_id":"u1"},
         "messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
                       {"type":"document","title":"a.pdf","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="},"cache_control":{"type":"ephemeral"}}]},
                     {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"s1"},{"type":"tool_use","id":"t1","name":"f","input":{}}]},
                     {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"42","is_error":false}]}],
         "tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"auto"},"stop_sequences":["x"]}
        """;

    /// <summary>A body with Claude's own tools and, in an assistant turn, a server tool's blocks and cited text (kept as written).</summary>
    public const string ServerToolsTemplate = """
        {"model":"claude","max_tokens":16,
         "messages":[{"role":"user","content":"weather?"},
                     {"role":"assistant","content":[{"type":"text","text":"Let me search."},{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"weather"}},
                       {"type":"web_search_tool_result","tool_use_id":"srvtoolu_1","content":[{"type":"web_search_result","url":"https://e.x","title":"t","encrypted_content":"enc","page_age":null}]},
                       {"type":"text","text":"Sunny.","citations":[{"type":"web_search_result_location","url":"https://e.x","title":"t","encrypted_index":"i","cited_text":"sun"}]}]},
                     {"role":"user","content":[{"type":"text","text":"and tomorrow?"}]}],
         "tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2},{"type":"bash_20250124","name":"bash"},{"name":"f","input_schema":{"type":"object"}}]}
        """;

    private static readonly string[] Names =
    [
        "model", "messages", "role", "content", "stream", "max_tokens", "temperature", "top_p", "n", "stop", "tools", "tool_choice",
        "type", "text", "image_url", "url", "source", "tool_calls", "function", "name", "arguments", "system", "metadata", "user_id",
        "stream_options", "include_usage", "response_format", "logprobs", "stop_sequences", "tool_use_id", "input", "id", "__proto__", "",
        "choices", "index", "message", "delta", "finish_reason", "usage", "prompt_tokens", "completion_tokens", "total_tokens", "refusal",
        "created", "object", "system_fingerprint", "detail", "tool_call_id", "citations", "encrypted_content", "max_uses",
        "input", "instructions", "max_output_tokens", "call_id", "output", "previous_response_id", "format", "reasoning", "effort",
        "encoding_format", "dimensions", "prompt", "suffix", "echo", "best_of", "logit_bias", "seed", "size", "quality", "style",
        "response_format", "output_compression", "background", "voice", "speed", "stream_format", "query", "documents", "top_n", "return_documents",
    ];

    private static readonly string[] Words = ["user", "assistant", "system", "tool", "developer", "text", "image", "tool_use", "tool_result", "server_tool_use", "web_search_tool_result", "web_search_20250305", "input_text", "output_text", "function_call", "function_call_output", "json_schema", "auto", "any", "none", "gpt-4o-mini", "json_object", "", " ", "\u0000", "\ud800", "é", "float", "base64"];

    private static readonly string[] NumberTokens = ["1e400", "-1e400", "-0", "1.5", "99999999999999999999999", "-9223372036854775809", "0.0000001", "1E+2", "NaN", "Infinity", "-", "01", ".5", "1.", "0x10"];

    private static readonly Gen<JsonNode?> Scalar = Gen.Frequency(
        (2, Gen.Const<JsonNode?>((JsonNode?)null)),
        (2, Gen.Bool.Select(b => (JsonNode?)JsonValue.Create(b))),
        (3, Gen.Int.Select(i => (JsonNode?)JsonValue.Create(i))),
        (2, Gen.Double.Select(d => double.IsFinite(d) ? (JsonNode?)JsonValue.Create(d) : JsonValue.Create(0.0))),
        (3, Gen.OneOf(Words).Select(w => (JsonNode?)JsonValue.Create(w))),
        (3, Gen.String[0, 24].Select(s => (JsonNode?)JsonValue.Create(s))));

    private static readonly Gen<JsonNode?> Value = Gen.Frequency(
        (6, Scalar),
        (1, Scalar.Array[0, 4].Select(a => (JsonNode?)new JsonArray(a))),
        (1, Gen.Select(Gen.OneOf(Names), Scalar).Array[0, 3].Select(props => (JsonNode?)Object(props))),
        (1, Gen.Int[1, 60].Select(depth => (JsonNode?)JsonNode.Parse(new string('[', depth) + new string(']', depth)))));

    /// <summary>One change to the parsed template: replace, remove or add a node, chosen by index over the tree.</summary>
    private static readonly Gen<(string How, Action<JsonNode> Apply)> TreeMutation = Gen.Frequency(
        (4, Gen.Select(Gen.Int[0, 10_000], Value).Select(t => ($"replace #{t.Item1} with {Render(t.Item2)}", (Action<JsonNode>)(root => Replace(root, t.Item1, t.Item2))))),
        (2, Gen.Int[0, 10_000].Select(i => ($"remove #{i}", (Action<JsonNode>)(root => Remove(root, i))))),
        (2, Gen.Select(Gen.Int[0, 10_000], Gen.OneOf(Names), Value).Select(t => ($"add {t.Item2}={Render(t.Item3)} at #{t.Item1}", (Action<JsonNode>)(root => Add(root, t.Item1, t.Item2, t.Item3))))));

    /// <summary>One change to the serialized text: a duplicated key, a number token, bytes inserted, a cut.</summary>
    private static readonly Gen<(string How, Func<byte[], byte[]> Apply)> TextMutation = Gen.Frequency(
        (2, Gen.OneOf("model", "messages", "max_tokens", "stream", "role").Select(k => ($"duplicate {k}", (Func<byte[], byte[]>)(b => Insert(b, 1, Encoding.UTF8.GetBytes($"\"{k}\":1,")))))),
        (1, Gen.OneOf(Names).Select(k => ($"escape the name {k}", (Func<byte[], byte[]>)(b => EscapeName(b, k))))),
        (2, Gen.Select(Gen.Int[0, 10_000], Gen.OneOf(NumberTokens)).Select(t => ($"number token {t.Item2} at #{t.Item1}", (Func<byte[], byte[]>)(b => ReplaceNumber(b, t.Item1, t.Item2))))),
        (2, Gen.Select(Gen.Int[0, 10_000], Gen.Byte.Array[1, 6]).Select(t => ($"insert {Convert.ToHexString(t.Item2)} at {t.Item1}", (Func<byte[], byte[]>)(b => Insert(b, t.Item1 % (b.Length + 1), t.Item2))))),
        (1, Gen.Int[60, 5_000].Select(depth => ($"nested {depth} deep", (Func<byte[], byte[]>)(b => Insert(b, 1, Encoding.UTF8.GetBytes($"\"deep\":{new string('[', depth)}{new string(']', depth)},")))))),
        (1, Gen.Int[0, 10_000].Select(i => ($"cut at {i}", (Func<byte[], byte[]>)(b => b[..(i % (b.Length + 1))])))),
        (1, Gen.Byte.Array[0, 64].Select(bytes => ("replace all with random bytes", (Func<byte[], byte[]>)(_ => bytes)))));

    /// <summary>
    /// A CsCheck property over an operation's request reader (<c>/v1/embeddings</c>, <c>/v1/moderations</c>): any mutation of
    /// its template is refused with a request error (the endpoint's 400) or read into a request the pipeline can carry —
    /// never anything else.
    /// </summary>
    public static void CheckOperationReader(PipelineGateway.Providers.OperationKind kind, string template, ulong seed) =>
        CheckReader(template, seed, body => PipelineGateway.Providers.Operations.Read(kind, body), request =>
        {
            request.Operation!.InputCount.Should().BeInRange(1, PipelineGateway.Providers.Embeddings.MaxInputs);
            PipelineGateway.Providers.Operations.UpstreamBody(request.Operation, "m").Should().NotBeEmpty();
        });

    /// <summary>
    /// The same over a request reader checked by hand (<paramref name="read"/>): a request error, or a request with one
    /// user message that <paramref name="check"/> accepts.
    /// </summary>
    public static void CheckReader(string template, ulong seed, Func<byte[], ChatCompletionRequest> read, Action<ChatCompletionRequest> check, bool emptyMessage = false)
    {
        var unexpected = new List<string>();
        var accepted = 0;
        var pcg = new PCG(1, seed);
        var gen = Body(template);
        for (var i = 0; i < 20_000 * Scale; i++)
        {
            var c = gen.Generate(pcg, null, out _);
            try
            {
                var request = read(c.Bytes);
                accepted++;
                var message = request.Messages.Should().ContainSingle().Which.Content!.Text;
                if (!emptyMessage)
                {
                    message.Should().NotBeNullOrEmpty();
                }

                check(request);
            }
            catch (Exception ex) when (ex is JsonException or InvalidRequestException or InvalidOperationException)
            {
                // A request error (the endpoint's 400).
            }
            catch (Exception ex)
            {
                unexpected.Add($"{ex.GetType().Name}: {ex.Message}\n  body: {c}");
            }
        }

        unexpected.Should().BeEmpty(string.Join("\n\n", unexpected.Take(5)));
        accepted.Should().BePositive("some mutations stay valid");
    }

    public static Gen<FuzzBody> Body(string template) =>
        from model in Gen.OneOf("gpt-4o-mini", "via-http", "via-anthropic")
        from tree in TreeMutation.Array[0, 4]
        from text in TextMutation.Array[0, 1]
        from streaming in Gen.Frequency((4, Gen.Const(false)), (1, Gen.Const(true)))
        select Build(template, model, tree, text, streaming);

    private static readonly string[] GatewayHeaders = ["x-gateway-cache", "x-gateway-cache-ttl", "x-gateway-timeout-ms", "x-gateway-priority", "x-gateway-other", "X-Gateway-Timeout-MS"];

    private static readonly Gen<string> HeaderValue = Gen.Frequency(
        (3, Gen.OneOf("no-cache", "no-store", "batch", "interactive", "60000", "3600000", "3600001", "2592000", "2592001", "0", "-1", "NaN", "Infinity", "1e300", "5e11", "4294967296", "86400000000", "1.5", " 60000 ", "60000, 1", "")),
        (2, Gen.Long.Select(l => l.ToString(System.Globalization.CultureInfo.InvariantCulture))),
        (2, Gen.Char[' ', 'ÿ'].Array[0, 12].Select(chars => new string(chars))));

    public static readonly Gen<FuzzRequest> Request =
        from path in Gen.OneOf(Chat, Messages, Responses, Embeddings, Moderations, Completions, Images, Speech, Rerank)
        from body in Gen.Frequency((9, Body(path switch { Chat => ChatTemplate, Messages => MessagesTemplate, Embeddings => EmbeddingsTemplate, Moderations => ModerationsTemplate, Completions => CompletionsTemplate, Images => ImagesTemplate, Speech => SpeechTemplate, Rerank => RerankTemplate, _ => ResponsesTemplate })), (1, Body(path == Chat ? MessagesTemplate : ChatTemplate)))
        from contentType in Gen.Frequency((16, Gen.Const<string?>((string?)"application/json")), (1, Gen.OneOf<string?>(null, "text/plain", "application/json; charset=utf-8", "application/vnd.api+json", "json", ";;")))
        from key in Gen.Frequency((18, Gen.Const<string?>((string?)"sk-gw-fuzz-0123456789")), (1, Gen.Const<string?>((string?)null)), (1, Gen.String[0, 20].Select(s => (string?)new string(s.Where(c => c is >= ' ' and <= '~').ToArray()))))
        from headers in Gen.Select(Gen.OneOf(GatewayHeaders), HeaderValue).Array[0, 3]
        select new FuzzRequest(path, body, contentType, key, headers.Select(h => (h.Item1, h.Item2)).DistinctBy(h => h.Item1, StringComparer.OrdinalIgnoreCase).Where(h => Printable(h.Item2)).ToArray());

    private static bool Printable(string value) => value.All(c => c is >= ' ' and <= 'ÿ' and not (>= '\u007f' and < '\u00a0'));

    private static FuzzBody Build(string template, string model, (string How, Action<JsonNode> Apply)[] tree, (string How, Func<byte[], byte[]> Apply)[] text, bool streaming)
    {
        var root = JsonNode.Parse(template)!;
        root["model"] = model;
        root["stream"] = streaming;
        foreach (var m in tree)
        {
            m.Apply(root);
        }

        var bytes = Encoding.UTF8.GetBytes(root.ToJsonString());
        foreach (var m in text)
        {
            bytes = m.Apply(bytes);
        }

        return new FuzzBody(bytes, string.Join("; ", tree.Select(t => t.How).Concat(text.Select(t => t.How)).DefaultIfEmpty("as is")));
    }

    /// <summary>The first <c>"name":</c> spelt with its first letter escaped (<c>"\u006dodel":</c>): the same name to a parser.</summary>
    private static byte[] EscapeName(byte[] body, string name)
    {
        var text = Encoding.UTF8.GetString(body);
        var at = name.Length == 0 ? -1 : text.IndexOf($"\"{name}\":", StringComparison.Ordinal);
        return at < 0 ? body : Encoding.UTF8.GetBytes(string.Concat(text.AsSpan(0, at + 1), $"\\u{(int)name[0]:x4}", text.AsSpan(at + 2)));
    }

    private static JsonObject Object((string, JsonNode?)[] props)
    {
        var o = new JsonObject();
        foreach (var (name, value) in props)
        {
            o[name] = value;
        }

        return o;
    }

    private static string Render(JsonNode? node)
    {
        var s = node?.ToJsonString() ?? "null";
        return s.Length <= 60 ? s : s[..60] + "…";
    }

    private static List<JsonNode> Nodes(JsonNode root)
    {
        var all = new List<JsonNode>();
        void Walk(JsonNode? n)
        {
            if (n is null)
            {
                return;
            }

            all.Add(n);
            if (n is JsonObject o)
            {
                foreach (var (_, v) in o.ToList())
                {
                    Walk(v);
                }
            }
            else if (n is JsonArray a)
            {
                foreach (var v in a.ToList())
                {
                    Walk(v);
                }
            }
        }

        Walk(root);
        return all;
    }

    private static void Replace(JsonNode root, int index, JsonNode? value)
    {
        var nodes = Nodes(root);
        var target = nodes[index % nodes.Count];
        switch (target.Parent)
        {
            case JsonObject o:
                o[target.GetPropertyName()] = value;
                break;
            case JsonArray a:
                a[target.GetElementIndex()] = value;
                break;
        }
    }

    private static void Remove(JsonNode root, int index)
    {
        var nodes = Nodes(root);
        var target = nodes[index % nodes.Count];
        switch (target.Parent)
        {
            case JsonObject o:
                o.Remove(target.GetPropertyName());
                break;
            case JsonArray a:
                a.RemoveAt(target.GetElementIndex());
                break;
        }
    }

    private static void Add(JsonNode root, int index, string name, JsonNode? value)
    {
        var containers = Nodes(root).Where(n => n is JsonObject or JsonArray).ToList();
        switch (containers[index % containers.Count])
        {
            case JsonObject o:
                o[name] = value;
                break;
            case JsonArray a:
                a.Add(value);
                break;
        }
    }

    private static byte[] Insert(byte[] bytes, int at, byte[] insert) => [.. bytes[..Math.Min(at, bytes.Length)], .. insert, .. bytes[Math.Min(at, bytes.Length)..]];

    private static byte[] ReplaceNumber(byte[] bytes, int which, string token)
    {
        var text = Encoding.UTF8.GetString(bytes);
        var numbers = System.Text.RegularExpressions.Regex.Matches(text, @"(?<=:)-?\d+(\.\d+)?");
        if (numbers.Count == 0)
        {
            return bytes;
        }

        var m = numbers[which % numbers.Count];
        return Encoding.UTF8.GetBytes(text[..m.Index] + token + text[(m.Index + m.Length)..]);
    }
}
