using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using FluentAssertions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Server;
using PipelineGateway.Simulator;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// The front door (docs/server.md, "Authentication" and "Request headers"): one pipeline in front of every route, so
/// keys, allowed models, the admin surface, content types, duplicate keys and every <c>x-gateway-*</c> header are
/// checked the same way on <c>/v1/chat/completions</c> and <c>/v1/messages</c>, and refused in the route's own shape.
/// The upstream is a real simulator so "the upstream was not called" is counted, not assumed.
/// </summary>
public sealed class FrontDoorTests : IAsyncLifetime
{
    private const string Key = "sk-gw-door-0123456789";
    private const string AdminKey = "sk-gw-door-admin-0123456789";
    private const string Chat = "v1/chat/completions";
    private const string Messages = "v1/messages";
    private WebApplication _app = null!;
    private SimulatorServer _sim = null!;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Uri Base { get; set; } = null!;

    public async ValueTask InitializeAsync()
    {
        _sim = await SimulatorServer.StartAsync(new SimulatorOptions(), cancellationToken: Ct);
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Providers:0:Type"] = "OpenAICompatible",
            ["Gateway:Providers:0:BaseUrl"] = new Uri(_sim.BaseAddress, "v1").ToString(),
            ["Gateway:Models:0:Name"] = "gpt-4o-mini",
            ["Gateway:Models:0:Deployments:0:Provider"] = "sim",
            ["Gateway:Models:1:Name"] = "restricted",
            ["Gateway:Models:1:Deployments:0:Provider"] = "sim",
            ["Gateway:Models:1:Deployments:0:Model"] = "gpt-4o-mini",
            ["Gateway:Server:Keys:0:Id"] = "team-a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:Keys:0:AllowedModels:0"] = "gpt-4o-mini",
            ["Gateway:Server:Keys:1:Id"] = "ops",
            ["Gateway:Server:Keys:1:Sha256"] = GatewayKeys.Hash(AdminKey),
            ["Gateway:Server:Keys:1:Admin"] = "true",
            ["Gateway:Server:MaxAuthFailuresPerMinute"] = "1000",
        }).Build();
        _app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { });
        Base = await GatewayServer.StartAsync(_app, Ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        await _sim.DisposeAsync();
    }

    private async Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> Send(
        string path, string? body, string? key = Key, string contentType = "application/json", params (string Name, string Value)[] headers)
    {
        using var http = new HttpClient();
        using var message = new HttpRequestMessage(body is null ? HttpMethod.Get : HttpMethod.Post, new Uri(Base, path));
        if (body is not null)
        {
            message.Content = new ByteArrayContent(Encoding.UTF8.GetBytes(body));
            if (contentType.Length > 0)
            {
                message.Content.Headers.TryAddWithoutValidation("Content-Type", contentType);
            }
        }

        if (key is not null)
        {
            message.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        }

        foreach (var (name, value) in headers)
        {
            message.Headers.TryAddWithoutValidation(name, value);
        }

        var response = await http.SendAsync(message, Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        var json = text.Length > 0 && text[0] == '{' ? JsonDocument.Parse(text).RootElement.Clone() : default;
        return (response.StatusCode, json, response);
    }

    private static string ChatBody(string model = "gpt-4o-mini", bool stream = false) =>
        $$"""{"model":"{{model}}","stream":{{(stream ? "true" : "false")}},"messages":[{"role":"user","content":"hi"}]}""";

    private static string MessagesBody(string model = "gpt-4o-mini", bool stream = false) =>
        $$"""{"model":"{{model}}","max_tokens":16,"stream":{{(stream ? "true" : "false")}},"messages":[{"role":"user","content":"hi"}]}""";

    /// <summary>The route's own error shape, asserted: OpenAI's <c>{"error":{message,type,…}}</c> or Anthropic's <c>{"type":"error","error":{type,message}}</c>.</summary>
    internal static JsonElement ErrorIn(string path, JsonElement body)
    {
        body.ValueKind.Should().Be(JsonValueKind.Object, "an error has a JSON body");
        var error = body.GetProperty("error");
        error.GetProperty("message").GetString().Should().NotBeNullOrWhiteSpace();
        error.GetProperty("type").GetString().Should().NotBeNullOrWhiteSpace();
        if (path.Contains("messages", StringComparison.Ordinal))
        {
            body.GetProperty("type").GetString().Should().Be("error", "the Anthropic shape");
        }
        else
        {
            body.TryGetProperty("type", out _).Should().BeFalse("the OpenAI shape has only 'error'");
            error.TryGetProperty("code", out _).Should().BeTrue();
        }

        return error;
    }

    /// <summary>
    /// A path the gateway serves asked with another method is a 405 naming the methods (an <c>Allow</c> header), in the
    /// route's shape; only a path nothing serves is a 404. A key pasted into the path is not echoed.
    /// </summary>
    [Theory]
    [InlineData("GET", "v1/chat/completions", "POST")]
    [InlineData("PUT", "v1/chat/completions/", "POST")]
    [InlineData("GET", "v1/messages", "POST")]
    [InlineData("DELETE", "v1/responses", "POST")]
    [InlineData("GET", "v1/messages/count_tokens", "POST")]
    [InlineData("POST", "v1/models", "GET")]
    [InlineData("POST", "v1/models/gpt-4o-mini", "GET")]
    [InlineData("PATCH", "healthz", "GET")]
    [InlineData("POST", "v1/gateway/logs", "GET")]
    public async Task A_served_path_asked_with_another_method_is_a_405_naming_the_allowed_ones(string method, string path, string allowed)
    {
        using var http = new HttpClient();
        using var message = new HttpRequestMessage(new HttpMethod(method), new Uri(Base, path));
        message.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
        if (method != "GET")
        {
            message.Content = new StringContent("{}", Encoding.UTF8, "application/json");
        }

        var response = await http.SendAsync(message, Ct);

        response.StatusCode.Should().Be(HttpStatusCode.MethodNotAllowed);
        response.Content.Headers.Allow.Should().Equal(allowed);
        var error = ErrorIn(path, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement);
        error.GetProperty("type").GetString().Should().Be("invalid_request_error");
        error.GetProperty("message").GetString().Should().Contain(allowed);
        _sim.Requests.Should().Be(0);
    }

    /// <summary>
    /// A stored response is its key's alone: another key neither reads, continues, refers to nor deletes it (each is
    /// "not found", as for an id never stored), and without a key nothing of it is reached (401).
    /// </summary>
    [Fact]
    public async Task A_stored_response_is_its_keys_alone()
    {
        var (status, stored, _) = await Send("v1/responses", """{"model":"gpt-4o-mini","input":"A secret plan."}""");
        status.Should().Be(HttpStatusCode.OK);
        var id = stored.GetProperty("id").GetString()!;
        var item = stored.GetProperty("output")[0].GetProperty("id").GetString()!;

        (await Send($"v1/responses/{id}", null)).Status.Should().Be(HttpStatusCode.OK, "its own key reads it");
        (await Send($"v1/responses/{id}", null, key: AdminKey)).Status.Should().Be(HttpStatusCode.NotFound, "another key, even an admin one, does not");
        (await Send($"v1/responses/{id}/input_items", null, key: AdminKey)).Status.Should().Be(HttpStatusCode.NotFound);
        (await Send($"v1/responses/{id}", null, key: null)).Status.Should().Be(HttpStatusCode.Unauthorized);
        var (continued, body, _) = await Send("v1/responses", $$"""{"model":"gpt-4o-mini","previous_response_id":"{{id}}","input":"Go on."}""", key: AdminKey);
        continued.Should().Be(HttpStatusCode.BadRequest);
        body.GetProperty("error").GetProperty("code").GetString().Should().Be("previous_response_not_found");
        (await Send("v1/responses", $$"""{"model":"gpt-4o-mini","input":[{"type":"item_reference","id":"{{item}}"}]}""", key: AdminKey)).Status.Should().Be(HttpStatusCode.BadRequest);

        using (var http = new HttpClient())
        using (var delete = new HttpRequestMessage(HttpMethod.Delete, new Uri(Base, $"v1/responses/{id}")))
        {
            delete.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
            (await http.SendAsync(delete, Ct)).StatusCode.Should().Be(HttpStatusCode.NotFound, "another key cannot delete it");
        }

        (await Send($"v1/responses/{id}", null)).Status.Should().Be(HttpStatusCode.OK, "still there for its own key");
    }

    [Fact]
    public async Task An_unknown_path_is_a_404_that_echoes_no_key_pasted_into_it()
    {
        var (status, json, _) = await Send("v1/sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", "{}", key: AdminKey);

        status.Should().Be(HttpStatusCode.NotFound);
        var error = ErrorIn(Chat, json);
        error.GetProperty("code").GetString().Should().Be("unknown_route");
        error.GetProperty("message").GetString().Should().Contain("POST /v1/").And.NotContain("abcdefghijklmnop");
    }

    /// <summary>A path with a dot in its last segment is the same 404 (the fallback route's "nonfile" pattern left it a bare 404 with no body).</summary>
    [Theory]
    [InlineData("v1/report.json")]
    [InlineData("v1/chat/completions.txt")]
    [InlineData("favicon.ico")]
    public async Task An_unknown_path_with_a_file_extension_is_the_same_404(string path)
    {
        var (status, json, _) = await Send(path, "{}", key: AdminKey);

        status.Should().Be(HttpStatusCode.NotFound);
        ErrorIn(Chat, json).GetProperty("code").GetString().Should().Be("unknown_route");
    }

    /// <summary>A model name a caller made up is named in at most 40 characters on every route, refused (403) or unknown (404).</summary>
    [Theory]
    [InlineData("v1/chat/completions", "team-a")]
    [InlineData("v1/messages", "team-a")]
    [InlineData("v1/chat/completions", "ops")]
    [InlineData("v1/messages", "ops")]
    [InlineData("v1/messages/count_tokens", "ops")]
    public async Task A_long_model_name_is_not_echoed_whole(string path, string key)
    {
        var model = "m" + new string('x', 100_000);
        var body = path.Contains("messages", StringComparison.Ordinal) ? MessagesBody(model) : ChatBody(model);

        var (status, json, _) = await Send(path, body, key == "ops" ? AdminKey : Key);

        status.Should().BeOneOf(HttpStatusCode.NotFound, HttpStatusCode.Forbidden);
        var message = ErrorIn(path, json).GetProperty("message").GetString()!;
        message.Should().Contain("m" + new string('x', 39) + "…").And.NotContain(new string('x', 41));
    }

    public static TheoryData<string, string> BadHeaders() => new()
    {
        { "x-gateway-timeout-ms", "4294967296" },
        { "x-gateway-timeout-ms", "1e14" },
        { "x-gateway-timeout-ms", "1e300" },
        { "x-gateway-timeout-ms", "NaN" },
        { "x-gateway-timeout-ms", "Infinity" },
        { "x-gateway-timeout-ms", "86400000000" },
        { "x-gateway-timeout-ms", "0" },
        { "x-gateway-timeout-ms", "-5" },
        { "x-gateway-timeout-ms", "" },
        { "x-gateway-cache-ttl", "NaN" },
        { "x-gateway-cache-ttl", "Infinity" },
        { "x-gateway-cache-ttl", "1e300" },
        { "x-gateway-cache-ttl", "5e11" },
        { "x-gateway-cache-ttl", "500000000000" },
        { "x-gateway-cache", "sometimes" },
        { "x-gateway-priority", "urgent" },
        { "x-gateway-tiemout-ms", "1000" },
    };

    [Theory]
    [MemberData(nameof(BadHeaders))]
    public async Task A_bad_gateway_header_is_a_400_naming_it_on_both_routes_and_the_upstream_is_not_called(string header, string value)
    {
        foreach (var (path, body) in new[] { (Chat, ChatBody()), (Messages, MessagesBody()) })
        {
            var (status, json, _) = await Send(path, body, headers: (header, value));

            status.Should().Be(HttpStatusCode.BadRequest, $"{header}: {value} on {path}");
            ErrorIn(path, json).GetProperty("message").GetString().Should().Contain(header);
        }

        _sim.Requests.Should().Be(0);
    }

    [Fact]
    public async Task A_header_error_says_the_valid_range()
    {
        var (_, json, _) = await Send(Chat, ChatBody(), headers: ("x-gateway-timeout-ms", "1e300"));

        var error = ErrorIn(Chat, json);
        error.GetProperty("param").GetString().Should().Be("x-gateway-timeout-ms");
        error.GetProperty("message").GetString().Should().Contain("1 to 3600000");
    }

    [Theory]
    [InlineData(Chat, false)]
    [InlineData(Chat, true)]
    [InlineData(Messages, false)]
    [InlineData(Messages, true)]
    public async Task A_key_limited_by_AllowedModels_is_refused_other_models_on_every_route_before_the_upstream(string path, bool stream)
    {
        var body = path == Chat ? ChatBody("restricted", stream) : MessagesBody("restricted", stream);

        var (status, json, _) = await Send(path, body);

        status.Should().Be(HttpStatusCode.Forbidden);
        ErrorIn(path, json).GetProperty("type").GetString().Should().Be("permission_error");
        _sim.Requests.Should().Be(0);

        (await Send(path, body, key: AdminKey)).Status.Should().Be(HttpStatusCode.OK, "a key without AllowedModels may use any model");
    }

    [Fact]
    public async Task The_model_list_shows_a_key_only_what_it_may_use()
    {
        var (_, limited, _) = await Send("v1/models", null);
        var (_, all, _) = await Send("v1/models", null, key: AdminKey);

        limited.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).Should().Equal("gpt-4o-mini");
        all.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).Should().BeEquivalentTo("gpt-4o-mini", "restricted");
    }

    [Theory]
    [InlineData("v1/gateway/metrics")]
    [InlineData("metrics")]
    public async Task The_admin_surface_needs_an_admin_key(string path)
    {
        (await Send(path, null, key: null)).Status.Should().Be(HttpStatusCode.Unauthorized);
        var (status, json, _) = await Send(path, null);
        status.Should().Be(HttpStatusCode.Forbidden);
        ErrorIn(path, json).GetProperty("code").GetString().Should().Be("admin_key_required");

        (await Send(path, null, key: AdminKey)).Status.Should().Be(HttpStatusCode.OK);
    }

    [Theory]
    [InlineData("v1/chat/completions", "x-request-id")]
    [InlineData("v1/messages", "request-id")]
    public async Task A_refusal_before_the_pipeline_has_a_request_id_as_every_answer_has(string path, string header)
    {
        var ids = new List<string>();
        foreach (var (key, body, contentType) in new[] { ((string?)null, "{}", "application/json"), (Key, "{}", "text/plain"), (Key, "{", "application/json") })
        {
            var (status, _, response) = await Send(path, body, key, contentType);
            ((int)status).Should().BeInRange(400, 499);
            var id = response.Headers.GetValues(header).Single();
            response.Headers.GetValues("x-gateway-request-id").Single().Should().Be(id);
            ids.Add(id);
        }

        ids.Should().OnlyHaveUniqueItems();
    }

    [Theory]
    [InlineData("{}", "model")]
    [InlineData("{  }", "model")]
    [InlineData("[1]", "object")]
    [InlineData("{", "not valid")]
    [InlineData("""{"model":"gpt-4o-mini","messages":[{"role":"user","content":[{"type":"text"}]}]}""", "messages.0.content.0.text")]
    [InlineData("""{"model":"gpt-4o-mini","max_tokens":"x","messages":[{"role":"user","content":"hi"}]}""", "max_tokens")]
    public async Task A_malformed_count_tokens_body_is_a_400_in_the_Anthropic_shape_naming_the_field(string body, string field)
    {
        var (status, json, _) = await Send("v1/messages/count_tokens", body);

        status.Should().Be(HttpStatusCode.BadRequest, body);
        var error = ErrorIn(Messages, json);
        error.GetProperty("type").GetString().Should().Be("invalid_request_error");
        error.GetProperty("message").GetString().Should().Contain(field);
    }

    [Fact]
    public async Task Count_tokens_without_max_tokens_counts_with_the_tokenizer_when_no_Claude_serves_the_model()
    {
        var (status, json, response) = await Send("v1/messages/count_tokens", """{"model":"gpt-4o-mini","system":"Be brief.","messages":[{"role":"user","content":"How many tokens?"}]}""");

        status.Should().Be(HttpStatusCode.OK);
        json.GetProperty("input_tokens").GetInt32().Should().BeInRange(5, 40);
        response.Headers.GetValues("x-gateway-token-count").Single().Should().Be("tokenizer");
        response.Headers.GetValues("request-id").Single().Should().NotBeEmpty();
        _sim.Requests.Should().Be(0, "counting calls no chat upstream");
    }

    [Theory]
    [InlineData("healthz")]
    [InlineData("readyz")]
    public async Task Liveness_and_readiness_stay_open(string path) =>
        (await Send(path, null, key: null)).Status.Should().Be(HttpStatusCode.OK);

    [Theory]
    [InlineData(Chat, "text/plain")]
    [InlineData(Chat, "")]
    [InlineData(Chat, "application/x-www-form-urlencoded")]
    [InlineData(Messages, "text/plain")]
    [InlineData(Messages, "")]
    public async Task A_body_that_is_not_declared_JSON_is_a_415(string path, string contentType)
    {
        var (status, json, _) = await Send(path, path == Chat ? ChatBody() : MessagesBody(), contentType: contentType);

        status.Should().Be(HttpStatusCode.UnsupportedMediaType);
        ErrorIn(path, json);
        _sim.Requests.Should().Be(0);
    }

    /// <summary>
    /// A compressed body is refused by name (415), not read as JSON (its bytes were "not valid UTF-8 (at byte 1)"); an
    /// identity encoding is no compression.
    /// </summary>
    [Theory]
    [InlineData(Chat, "gzip", HttpStatusCode.UnsupportedMediaType)]
    [InlineData(Messages, "br", HttpStatusCode.UnsupportedMediaType)]
    [InlineData(Chat, "identity", HttpStatusCode.OK)]
    public async Task A_compressed_body_is_a_415_naming_its_encoding(string path, string encoding, HttpStatusCode expected)
    {
        var json = Encoding.UTF8.GetBytes(path == Chat ? ChatBody() : MessagesBody());
        using var body = new MemoryStream();
        if (encoding == "identity")
        {
            body.Write(json);
        }
        else
        {
            using var gzip = new System.IO.Compression.GZipStream(body, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true);
            gzip.Write(json);
        }

        using var http = new HttpClient();
        using var message = new HttpRequestMessage(HttpMethod.Post, new Uri(Base, path)) { Content = new ByteArrayContent(body.ToArray()) };
        message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        message.Content.Headers.ContentEncoding.Add(encoding);
        message.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Key);

        using var response = await http.SendAsync(message, Ct);

        response.StatusCode.Should().Be(expected, await response.Content.ReadAsStringAsync(Ct));
        if (expected != HttpStatusCode.OK)
        {
            var error = ErrorIn(path, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement);
            error.GetProperty("message").GetString().Should().Contain(encoding).And.Contain("uncompressed");
            _sim.Requests.Should().Be(0);
        }
    }

    private const string LongText = "long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, long text, ";

    /// <summary>
    /// A value of the wrong type on the chat route says what was expected there, in the caller's words, and names the
    /// field — never the .NET type the serializer read it into (<c>System.Nullable`1[System.Int32]</c>).
    /// </summary>
    [Theory]
    [InlineData("\"n\":2147483648", "n", "expected a whole number from -2147483648 to 2147483647")]
    [InlineData("\"max_tokens\":1.5", "max_tokens", "expected a whole number")]
    [InlineData("\"seed\":1e30", "seed", "expected a whole number")]
    [InlineData("\"top_p\":\"0.5\"", "top_p", "expected a number")]
    [InlineData("\"stream\":\"yes\"", "stream", "expected true or false")]
    [InlineData("\"user\":5", "user", "expected a string")]
    [InlineData("\"tools\":{}", "tools", "expected a list")]
    [InlineData("\"stream_options\":[]", "stream_options", "expected an object")]
    [InlineData("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":5}}]", "tools[0].function.name", "expected a string")]
    [InlineData("\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]", "messages[0].content", "lone surrogate")]
    [InlineData("\"messages\":[{\"role\":\"user\",\"content\":\"" + LongText + "\\ud800\"}]", "messages[0].content", "lone surrogate")] // a text kept as its JSON
    [InlineData("\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\ud800\"}]}]", "messages[0].content[0].text", "lone surrogate")]
    [InlineData("\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":5}]}]", "messages[0].content[0].text", "expected a string")]
    [InlineData("\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image_url\",\"image_url\":{\"url\":7}}]}]", "messages[0].content[1].image_url.url", "expected a string")]
    public async Task A_value_of_the_wrong_type_is_a_400_saying_what_was_expected_without_a_dotnet_type(string member, string param, string expected)
    {
        var messages = member.StartsWith("\"messages\"", StringComparison.Ordinal) ? string.Empty : """ "messages":[{"role":"user","content":"hi"}],""";
        var (status, json, _) = await Send(Chat, $$"""{"model":"gpt-4o-mini",{{messages}}{{member}}}""");

        status.Should().Be(HttpStatusCode.BadRequest, member);
        var error = ErrorIn(Chat, json);
        error.GetProperty("param").GetString().Should().Be(param);
        error.GetProperty("message").GetString().Should().Contain(expected).And.NotContain("System.").And.NotContain("PipelineGateway.");
        _sim.Requests.Should().Be(0);
    }

    [Theory]
    [InlineData(Chat, """{"model":"restricted","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}""")]
    [InlineData(Chat, """{"model":"gpt-4o-mini","messages":[{"role":"user","role":"system","content":"hi"}]}""")]
    [InlineData(Messages, """{"model":"restricted","model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}""")]
    [InlineData(Messages, """{"model":"gpt-4o-mini","max_tokens":5,"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}""")]
    public async Task A_duplicate_key_is_a_400_never_last_one_wins(string path, string body)
    {
        var (status, json, _) = await Send(path, body);

        status.Should().Be(HttpStatusCode.BadRequest);
        ErrorIn(path, json).GetProperty("message").GetString().Should().ContainEquivalentOf("duplicate");
        _sim.Requests.Should().Be(0);
    }

    [Theory]
    [InlineData("""[{"role":"user","content":[{"text":"no type"}]}]""", "type")]
    [InlineData("""[{"role":"user","content":[{"type":"text"}]}]""", "text")]
    [InlineData("""[{"role":"user","content":[{"type":"image_url"}]}]""", "image_url")]
    public async Task A_chat_content_part_without_its_fields_is_a_400(string messages, string field)
    {
        var (status, json, _) = await Send(Chat, $$"""{"model":"gpt-4o-mini","messages":{{messages}}}""");

        status.Should().Be(HttpStatusCode.BadRequest);
        ErrorIn(Chat, json).GetProperty("message").GetString().Should().Contain(field);
    }

    /// <summary>The twenty client mistakes that once answered an empty 500 on <c>/v1/messages</c>, and the inputs it dropped silently.</summary>
    public static TheoryData<string, string> BadMessages() => new()
    {
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":["hi"]}""", "messages.0" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[null]}""", "messages.0" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":5,"content":"hi"}]}""", "messages.0.role" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"text":"hi"}]}]}""", "messages.0.content.0.type" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"text"}]}]}""", "messages.0.content.0.text" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":["hi"]}]}""", "messages.0.content.0" },
        { """{"model":"gpt-4o-mini","max_tokens":"16","messages":[{"role":"user","content":"hi"}]}""", "max_tokens" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"temperature":"hot","messages":[{"role":"user","content":"hi"}]}""", "temperature" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"top_p":"x","messages":[{"role":"user","content":"hi"}]}""", "top_p" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"tool_choice":"auto","messages":[{"role":"user","content":"hi"}]}""", "tool_choice" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"tool_choice":{"type":"tool"},"tools":[{"name":"f","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"hi"}]}""", "tool_choice.name" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"tool_choice":{"type":"tool","name":"g"},"tools":[{"name":"f","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"hi"}]}""", "'tool_choice' names the function 'g', which is not among 'tools'" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"tool_choice":{"type":"any"},"messages":[{"role":"user","content":"hi"}]}""", "'tool_choice' asks for a tool call, but the request has no 'tools'" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"stop_sequences":[1],"messages":[{"role":"user","content":"hi"}]}""", "stop_sequences" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"tools":[{}],"messages":[{"role":"user","content":"hi"}]}""", "tools.0" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"metadata":{"user_id":5},"messages":[{"role":"user","content":"hi"}]}""", "metadata.user_id" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"system":["x"],"messages":[{"role":"user","content":"hi"}]}""", "system" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"image"}]}]}""", "messages.0.content.0.source" },
        // A search result's source is its URL (a string), not a source that "must be an object"; one without its title names it.
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"search_result","source":"https://example.test/a","content":[{"type":"text","text":"c"}]},{"type":"text","text":"q"}]}]}""", "messages.0.content.0.title: Field required" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"image","source":5}]}]}""", "messages.0.content.0.source: must be an object" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":[{"type":"image","source":{"type":5}}]}]}""", "messages.2.content.0.source.type: must be a string" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","name":"f"}]}]}""", "messages.1.content.0.id" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"tool_result"}]}]}""", "messages.0.content.0.tool_use_id" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"x"}}]}]}""", "document" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://example.test/a.pdf"}}]}]}""", "messages.0.content.0.source" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="},"citations":{"enabled":true}}]}]}""", "citations" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf"}}]}]}""", "messages.0.content.0.source.data" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"ok"}]}]}""", "thinking blocks belong to assistant turns" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"ok"}]}]}""", "messages.1.content.0.signature" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"redacted_thinking"},{"type":"text","text":"ok"}]}]}""", "messages.1.content.0.data" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":5}]}""", "messages.1.content" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"stream":"yes","messages":[{"role":"user","content":"hi"}]}""", "stream" },
        { """{"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}""", "model" },
        { """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}""", "max_tokens" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[]}""", "messages" },
        { """[1,2]""", "object" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":[{"type":"text","text":"\ud800"}]}]}""", "messages.0.content.0.text: a string with an escape no character can be made of (a lone surrogate" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"\udc00"}]}""", "messages.0.content: a string with an escape no character can be made of (a lone surrogate" },
        { """{"model":"gpt-4o-mini","max_tokens":16,"system":"\ud800","messages":[{"role":"user","content":"hi"}]}""", "system: a string with an escape no character can be made of (a lone surrogate" },
    };

    [Theory]
    [MemberData(nameof(BadMessages))]
    public async Task Every_malformed_messages_request_is_a_400_in_the_Anthropic_shape_naming_the_field(string body, string field)
    {
        var (status, json, _) = await Send(Messages, body);

        status.Should().Be(HttpStatusCode.BadRequest, body);
        var error = ErrorIn(Messages, json);
        error.GetProperty("type").GetString().Should().Be("invalid_request_error");
        error.GetProperty("message").GetString().Should().Contain(field);
        _sim.Requests.Should().Be(0, "nothing is sent upstream, nothing silently dropped");
    }

    [Theory]
    [InlineData(Chat)]
    [InlineData(Messages)]
    public async Task Invalid_UTF8_is_a_400_in_the_route_shape(string path)
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Key);
        var prefix = Encoding.UTF8.GetBytes("""{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"a""");
        var suffix = Encoding.UTF8.GetBytes("\"}]}");
        var content = new ByteArrayContent([.. prefix, 0xC3, 0x28, 0xFF, .. suffix]);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");

        var response = await http.PostAsync(new Uri(Base, path), content, Ct);

        response.StatusCode.Should().Be(HttpStatusCode.BadRequest);
        ErrorIn(path, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement);
    }

    /// <summary>
    /// A UTF-8 byte order mark before the JSON (what Windows tools write) is read past on every JSON route, as RFC 8259
    /// allows and ASP.NET's own JSON reading does — it was a 400 ("'0xEF' is an invalid start of a value").
    /// </summary>
    [Theory]
    [InlineData(Chat, """{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}""")]
    [InlineData(Messages, """{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}""")]
    [InlineData("v1/responses", """{"model":"gpt-4o-mini","input":"hi","store":false}""")]
    public async Task A_byte_order_mark_before_the_JSON_is_read_past(string path, string body)
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Key);
        var content = new ByteArrayContent([0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes(body)]);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");

        var response = await http.PostAsync(new Uri(Base, path), content, Ct);

        response.StatusCode.Should().Be(HttpStatusCode.OK, await response.Content.ReadAsStringAsync(Ct));
    }

    [Fact]
    public async Task A_chat_body_wrong_at_its_root_has_no_param()
    {
        var (status, json, _) = await Send(Chat, "[1]");

        status.Should().Be(HttpStatusCode.BadRequest);
        ErrorIn(Chat, json).GetProperty("param").ValueKind.Should().Be(JsonValueKind.Null, "OpenAI's param is null when no field is at fault (it was \"\")");
    }

    [Theory]
    [InlineData(Chat)]
    [InlineData(Messages)]
    public async Task A_non_ASCII_Authorization_header_is_a_401_in_the_route_shape_not_Kestrels_empty_400(string path)
    {
        var (status, json) = await RawAsync(path, "Authorization: Bearer sk-gw-\u00e9\u00e8\u00ff-key\r\nContent-Type: application/json\r\n", MessagesBody());

        status.Should().Be(401);
        ErrorIn(path, json);
    }

    [Theory]
    [InlineData(Chat)]
    [InlineData(Messages)]
    public async Task A_malformed_chunked_body_is_answered_in_the_route_shape(string path)
    {
        var (status, json) = await RawAsync(path, $"Authorization: Bearer {Key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n", null, "zz\r\n{}\r\n0\r\n\r\n");

        status.Should().Be(400);
        ErrorIn(path, json);
    }

    [Fact]
    public async Task Too_many_failed_keys_from_one_address_are_throttled_for_a_minute_even_with_the_right_key()
    {
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Providers:0:Type"] = "Simulated",
            ["Gateway:Models:0:Name"] = "gpt-4o-mini",
            ["Gateway:Models:0:Deployments:0:Provider"] = "sim",
            ["Gateway:Server:Keys:0:Id"] = "team-a",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash(Key),
            ["Gateway:Server:MaxAuthFailuresPerMinute"] = "5",
        }).Build();
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", _ => { }, s => s.AddSingleton<TimeProvider>(time));
        var root = await GatewayServer.StartAsync(app, Ct);
        using var http = new HttpClient { BaseAddress = root };
        async Task<HttpResponseMessage> Models(string key)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, "v1/models");
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
            return await http.SendAsync(request, Ct);
        }

        for (var i = 0; i < 5; i++)
        {
            (await Models($"sk-wrong-{i}")).StatusCode.Should().Be(HttpStatusCode.Unauthorized);
            time.Advance(TimeSpan.FromSeconds(1));
        }

        var blocked = await Models(Key);
        blocked.StatusCode.Should().Be(HttpStatusCode.TooManyRequests, "the address is refused, whatever key it now sends");
        blocked.Headers.RetryAfter!.Delta!.Value.TotalSeconds.Should().BeInRange(55, 60, "until the oldest failure is a minute old");
        ErrorIn("v1/models", JsonDocument.Parse(await blocked.Content.ReadAsStringAsync(Ct)).RootElement).GetProperty("code").GetString().Should().Be("too_many_auth_failures");

        time.Advance(TimeSpan.FromSeconds(56));
        (await Models(Key)).StatusCode.Should().Be(HttpStatusCode.OK, "the oldest failure has left the minute");
        await app.StopAsync(Ct);
    }

    [Theory]
    [InlineData(Chat)]
    [InlineData(Messages)]
    public async Task A_body_sent_too_slowly_is_a_408_in_the_route_shape_logged_below_warning(string path)
    {
        // Kestrel's body data-rate check runs on its own one-second heartbeat (not a TimeProvider), so this test
        // runs in real time: the grace period is shortened to 1.5 s (Kestrel's least) and the body trickles until Kestrel gives up.
        var logs = new CapturingLoggerProvider();
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:Providers:0:Name"] = "sim",
            ["Gateway:Providers:0:Type"] = "Simulated",
            ["Gateway:Models:0:Name"] = "gpt-4o-mini",
            ["Gateway:Models:0:Deployments:0:Provider"] = "sim",
        }).Build();
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", l => l.AddProvider(logs).SetMinimumLevel(LogLevel.Debug),
            s => s.Configure<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>(k =>
                k.Limits.MinRequestBodyDataRate = new Microsoft.AspNetCore.Server.Kestrel.Core.MinDataRate(240, TimeSpan.FromSeconds(1.5))));
        var root = await GatewayServer.StartAsync(app, Ct);
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(root.Host, root.Port, Ct);
        var stream = tcp.GetStream();
        var body = Encoding.UTF8.GetBytes(MessagesBody());
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n"), Ct);
        var read = new byte[4096];
        var answer = stream.ReadAsync(read, Ct).AsTask();
        for (var i = 0; i < body.Length && !answer.IsCompleted; i++)
        {
            await stream.WriteAsync(body.AsMemory(i, 1), Ct);
            // The trickle itself, one byte per 100 ms: the slow client is what is tested, and Kestrel judges its data rate
            // on its own real-time heartbeat (not on a TimeProvider), so this cannot run on a fake clock. It ends as
            // soon as the server answers.
            await Task.WhenAny(answer, Task.Delay(100, Ct));
        }

        var n = await answer;
        var response = Encoding.UTF8.GetString(read, 0, n);
        response.Should().StartWith("HTTP/1.1 408");
        ErrorIn(path, JsonDocument.Parse(response[(response.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..]).RootElement);
        logs.Lines.Where(l => !l.Contains("No gateway keys are configured", StringComparison.Ordinal)) // the start-up warning of a keyless server
            .Should().NotContain(l => l.StartsWith("Warning", StringComparison.Ordinal) || l.StartsWith("Error", StringComparison.Ordinal) || l.StartsWith("Critical", StringComparison.Ordinal));
        await app.StopAsync(Ct);
    }

    /// <summary>Sends a request byte by byte as written (Latin-1 for the headers), to get past HttpClient's own checks.</summary>
    private async Task<(int Status, JsonElement Body)> RawAsync(string path, string headers, string? body, string? rawBody = null)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(Base.Host, Base.Port, Ct);
        var stream = tcp.GetStream();
        var bytes = body is null ? [] : Encoding.UTF8.GetBytes(body);
        var head = $"POST /{path} HTTP/1.1\r\nHost: {Base.Authority}\r\n{headers}" + (rawBody is null ? $"Content-Length: {bytes.Length}\r\n" : string.Empty) + "Connection: close\r\n\r\n";
        await stream.WriteAsync(Encoding.Latin1.GetBytes(head), Ct);
        await stream.WriteAsync(rawBody is null ? bytes : Encoding.ASCII.GetBytes(rawBody), Ct);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var response = await reader.ReadToEndAsync(Ct);
        var status = int.Parse(response.AsSpan(9, 3), provider: System.Globalization.CultureInfo.InvariantCulture);
        var split = response.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        var payload = response[(split + 4)..];
        if (response[..split].Contains("chunked", StringComparison.OrdinalIgnoreCase))
        {
            payload = Dechunk(payload);
        }

        return (status, JsonDocument.Parse(payload).RootElement.Clone());
    }

    private static string Dechunk(string chunked)
    {
        var sb = new StringBuilder();
        var at = 0;
        while (true)
        {
            var eol = chunked.IndexOf("\r\n", at, StringComparison.Ordinal);
            var size = Convert.ToInt32(chunked[at..eol], 16);
            if (size == 0)
            {
                return sb.ToString();
            }

            sb.Append(chunked, eol + 2, size);
            at = eol + 2 + size + 2;
        }
    }
}
