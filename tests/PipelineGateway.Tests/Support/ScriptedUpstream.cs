using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// A hostile upstream that is not our simulator: a real Kestrel on 127.0.0.1 (port 0) answering every POST with the
/// fault named by the request's <c>x-fault</c> header — error bodies that echo the caller's own key whole, masked,
/// past a 500-character cut, in HTML or plain text, in a stream before or after content — in OpenAI's or
/// Anthropic's wire format (by path). The key it echoes is the one the gateway sent it.
/// </summary>
public sealed class ScriptedUpstream : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ScriptedUpstream(WebApplication app, Uri address)
    {
        _app = app;
        BaseAddress = address;
    }

    public Uri BaseAddress { get; }

    /// <summary>How many answers have sent their headers and then stalled (the <c>stall-body</c> fault).</summary>
    public int Stalled => _stalled;

    /// <summary>The Accept-Encoding of the last request, as received.</summary>
    public string? LastAcceptEncoding { get; private set; }

    private int _stalled;
    private int _rateLimited;

    /// <summary>What the <c>speech-gated</c> answer waits on between its two halves.</summary>
    public TaskCompletionSource SpeechGate { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>What the <c>sse-gated</c> answer waits on between its first content event and the rest.</summary>
    public TaskCompletionSource StreamGate { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>What the <c>speech-cut</c> answer waits on before it resets the connection after its first half.</summary>
    public TaskCompletionSource SpeechCutGate { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The audio of the <c>speech-*</c> answers: 40,000 bytes (three of the gateway's reads), each its index's low byte.</summary>
    public static readonly byte[] SpeechAudio = [.. Enumerable.Range(0, 40_000).Select(static i => (byte)(i == 0 ? 0xFF : i))];

    /// <summary>The faults it knows (the <c>x-fault</c> values).</summary>
    public static readonly string[] Faults =
    [
        "echo-400", "masked-401", "ellipsis-403", "long-500", "html-502", "plain-503", "masked-429", "stream-error-first", "stream-error-mid", "truncated-200", "redirect-308",
    ];

    /// <summary>Faults about the HTTP exchange rather than the error body (<see cref="UpstreamHttpTests"/>).</summary>
    public static readonly string[] HttpFaults = ["gzip-200", "deflate-200", "br-200", "gzip-stream", "zstd-200", "stall-body", "bomb-200", "long-200", "long-length-200"];

    /// <summary>The thought signature the <c>gemini-tools</c> answers put on their function call (opaque base64, as Gemini's).</summary>
    public const string GeminiSignature = "CiQBjz1rX0Zx9yQ2b3V0LXNpZ25hdHVyZS1hYmNk";

    /// <summary>The reasoning text the <c>kimi-thinking</c> answers carry beside their tool call, which the next step must give back.</summary>
    public const string KimiReasoning = "The user wants the weather in Paris, so I will call get_weather.";

    /// <summary>The text of the <c>bomb-200</c> and <c>long-*</c> answers: 4 MiB (a gzip bomb's ~4 KiB on the wire).</summary>
    public const int LongAnswerChars = 4 * 1024 * 1024;

    /// <summary>
    /// A gateway's settings with one provider, <c>echo</c>, sending every request here with <paramref name="fault"/>, and a
    /// model <c>m</c> on it (upstream model <c>m-up</c>), one attempt a request: the test's bytes, answered as they are.
    /// </summary>
    public Dictionary<string, string?> EchoSettings(string fault)
    {
        var settings = new Dictionary<string, string?> { ["Gateway:Pipeline:MaxAttempts"] = "1" };
        AddProvider(settings, 0, "echo", "OpenAICompatible", fault, "m", "m-up");
        return settings;
    }

    /// <summary>
    /// Adds provider number <paramref name="index"/> sending every request here with <paramref name="fault"/>, and model
    /// number <paramref name="index"/>, <paramref name="model"/>, deployed on it (as <paramref name="upstreamModel"/>).
    /// </summary>
    public void AddProvider(Dictionary<string, string?> settings, int index, string name, string type, string fault, string model, string? upstreamModel = null)
    {
        settings[$"Gateway:Providers:{index}:Name"] = name;
        settings[$"Gateway:Providers:{index}:Type"] = type;
        settings[$"Gateway:Providers:{index}:BaseUrl"] = new Uri(BaseAddress, "v1").ToString();
        settings[$"Gateway:Providers:{index}:Headers:x-fault"] = fault;
        settings[$"Gateway:Models:{index}:Name"] = model;
        settings[$"Gateway:Models:{index}:Deployments:0:Provider"] = name;
        if (upstreamModel is not null)
        {
            settings[$"Gateway:Models:{index}:Deployments:0:Model"] = upstreamModel;
        }
    }

    public static async Task<ScriptedUpstream> StartAsync(CancellationToken cancellationToken)
    {
        var app = LoopbackApp.Build();
        ScriptedUpstream? upstream = null;
        app.MapPost("/{**path}", (HttpContext ctx) => upstream!.AnswerAsync(ctx));
        upstream = new ScriptedUpstream(app, await LoopbackApp.StartAsync(app, cancellationToken));
        return upstream;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private async Task AnswerAsync(HttpContext ctx)
    {
        LastAcceptEncoding = ctx.Request.Headers.AcceptEncoding.ToString();
        var anthropic = ctx.Request.Path.Value!.EndsWith("/messages", StringComparison.Ordinal);
        var key = ctx.Request.Headers["x-api-key"].ToString() is { Length: > 0 } k ? k : ctx.Request.Headers.Authorization.ToString().Replace("Bearer ", string.Empty, StringComparison.Ordinal);
        var masked = key.Length > 12 ? $"{key[..8]}{new string('*', 24)}{key[^4..]}" : "****";
        switch (ctx.Request.Headers["x-fault"].ToString())
        {
            case "echo-400":
                await Error(ctx, anthropic, 400, "invalid_request_error", $"Invalid request sent with key {key}: temperature is too high.");
                break;
            case "masked-401":
                await Error(ctx, anthropic, 401, "authentication_error", $"Incorrect API key provided: {masked}. You can find your API key in your dashboard.");
                break;
            case "ellipsis-403":
                await Error(ctx, anthropic, 403, "permission_error", $"The key {key[..6]}…{key[^4..]} may not use this model.");
                break;
            case "long-500":
                // The key crosses the 500th character of the message: a cut made before redaction would leave its head.
                await Error(ctx, anthropic, 500, "api_error", new string('x', 490) + " " + key + " after the key");
                break;
            case "html-502":
                await Raw(ctx, 502, "text/html", $"<html><body><h1>502 Bad Gateway</h1><pre>upstream call with Authorization: Bearer {key} failed</pre></body></html>");
                break;
            case "plain-503":
                ctx.Response.Headers.RetryAfter = "0";
                await Raw(ctx, 503, "text/plain", $"overloaded; request from {key} shed");
                break;
            case "masked-429":
                ctx.Response.Headers.RetryAfter = "0";
                await Error(ctx, anthropic, 429, "rate_limit_error", $"Rate limit reached for key {masked} on requests per min.");
                break;
            case "speech-gated" or "speech-cut":
                // Audio as it is made: the first half, then (gated) the second — or a reset after the first half.
                ctx.Response.ContentType = "audio/mpeg";
                await ctx.Response.Body.WriteAsync(SpeechAudio.AsMemory(0, 20_000));
                await ctx.Response.Body.FlushAsync();
                if (ctx.Request.Headers["x-fault"] == "speech-cut")
                {
                    await SpeechCutGate.Task; // the caller has the first half: now the reset
                    ctx.Abort();
                    break;
                }

                await SpeechGate.Task;
                await ctx.Response.Body.WriteAsync(SpeechAudio.AsMemory(20_000));
                break;
            case "sse-gated":
                // A chat stream in OpenAI's shape whose upstream pauses after its first content event, until the test
                // lets it go on: what the gateway had must reach the client while it waits.
                ctx.Response.ContentType = "text/event-stream";
                await ctx.Response.WriteAsync("""
                    data: {"id":"g1","object":"chat.completion.chunk","created":1,"model":"m-up","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

                    data: {"id":"g1","object":"chat.completion.chunk","created":1,"model":"m-up","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}


                    """);
                await ctx.Response.Body.FlushAsync();
                await StreamGate.Task;
                await ctx.Response.WriteAsync("""
                    data: {"id":"g1","object":"chat.completion.chunk","created":1,"model":"m-up","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}

                    data: {"id":"g1","object":"chat.completion.chunk","created":1,"model":"m-up","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

                    data: [DONE]


                    """);
                break;
            case "speech-sse-cut":
                // Speech asked as events: one speech.audio.delta, then the connection is reset.
                ctx.Response.ContentType = "text/event-stream";
                await ctx.Response.WriteAsync("data: {\"type\":\"speech.audio.delta\",\"audio\":\"/+s=\"}\n\n");
                await ctx.Response.Body.FlushAsync();
                await SpeechCutGate.Task; // the caller has the first event: now the reset
                ctx.Abort();
                break;
            case "speech-brace":
                // Raw PCM whose first byte is '{' — audio that merely looks like JSON at its start.
                ctx.Response.ContentType = "audio/pcm";
                await ctx.Response.Body.WriteAsync("{\u0001\u0002 not json"u8.ToArray());
                break;
            case "transcript-error-mid":
                // A streamed transcription that fails after its first words (the error echoing the caller's key).
                ctx.Response.ContentType = "text/event-stream";
                await ctx.Response.WriteAsync("data: {\"type\":\"transcript.text.delta\",\"delta\":\"Hello\"}\n\n"
                    + $"data: {{\"error\":{{\"message\":{System.Text.Json.JsonSerializer.Serialize($"transcription failed for key {key}")},\"type\":\"server_error\"}}}}\n\n");
                break;
            case "transcript-cut":
                // A streamed transcription whose body ends after its first words, without transcript.text.done.
                ctx.Response.ContentType = "text/event-stream";
                await ctx.Response.WriteAsync("data: {\"type\":\"transcript.text.delta\",\"delta\":\"Hello\"}\n\n");
                break;
            case "stream-error-first":
                await Stream(ctx, anthropic, contentFirst: false, key);
                break;
            case "stream-error-mid":
                await Stream(ctx, anthropic, contentFirst: true, key);
                break;
            case "gzip-200" or "deflate-200" or "br-200" or "zstd-200":
                await Compressed(ctx, ctx.Request.Headers["x-fault"].ToString()[..^4], Answer(anthropic));
                break;
            case "bomb-200":
                await Compressed(ctx, "gzip", LongAnswer(anthropic));
                break;
            case "long-200":
                await Raw(ctx, 200, "application/json", LongAnswer(anthropic)); // chunked: no length announced
                break;
            case "long-length-200":
                ctx.Response.ContentLength = Encoding.UTF8.GetByteCount(LongAnswer(anthropic));
                await Raw(ctx, 200, "application/json", LongAnswer(anthropic));
                break;
            case "gzip-stream":
                ctx.Response.ContentType = "text/event-stream";
                await Compressed(ctx, "gzip", anthropic ? AnthropicStream : OpenAIStream);
                break;
            case "redirect-308":
                ctx.Response.StatusCode = 308;
                ctx.Response.Headers.Location = $"https://moved.example/v1/chat/completions?token={key}";
                break;
            case "embeddings-short":
                // One embedding for a request that asked for two or more (or none for one): the count is wrong.
                await Raw(ctx, 200, "application/json", """{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"m","usage":{"prompt_tokens":2,"total_tokens":2}}""");
                break;
            case "embeddings-shuffled":
                // Numbers whatever encoding_format asked, the items in reverse order (each with its index): input i's vector is [i, 0.5].
                await Raw(ctx, 200, "application/json", """{"object":"list","data":[{"object":"embedding","index":2,"embedding":[2,0.5]},{"object":"embedding","index":1,"embedding":[1,0.5]},{"object":"embedding","index":0,"embedding":[0,0.5]}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}""");
                break;
            case "embeddings-numbers-only":
                // Numbers whatever encoding_format asked, in order: input i's vector is [i, 0.5].
                await Raw(ctx, 200, "application/json", """{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0,0.5]},{"object":"embedding","index":1,"embedding":[1,0.5]},{"object":"embedding","index":2,"embedding":[2,0.5]}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}""");
                break;
            case "embeddings-base64-only":
                // Base64 whatever encoding_format asked, in order: input i's vector is [i, 0.5] (little-endian float32s).
                await Raw(ctx, 200, "application/json", """{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAAAAAAAD8="},{"object":"embedding","index":1,"embedding":"AACAPwAAAD8="},{"object":"embedding","index":2,"embedding":"AAAAQAAAAD8="}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}""");
                break;
            case "embeddings-no-vector":
                await Raw(ctx, 200, "application/json", """{"object":"list","data":[{"object":"embedding","index":0,"embedding":null}],"model":"m","usage":{"prompt_tokens":2,"total_tokens":2}}""");
                break;
            case "embeddings-404" when !ctx.Request.Path.Value!.EndsWith("/chat/completions", StringComparison.Ordinal):
                // A chat-only server: no embeddings or moderations route (its chat route answers, below).
                await Error(ctx, anthropic: false, 404, "invalid_request_error", "Not found: this server has no such route.");
                break;
            case "embeddings-404":
                await Raw(ctx, 200, "application/json", Answer(anthropic: false));
                break;
            case "moderations-no-id":
                await Raw(ctx, 200, "application/json", """{"model":"m","results":[{"flagged":false,"categories":{"hate":false}}]}""");
                break;
            case "moderations-no-flag":
                await Raw(ctx, 200, "application/json", """{"id":"modr-1","model":"m","results":[{"categories":{"hate":false}}]}""");
                break;
            case "rerank-bad-index":
                // A ranking of a document the request did not have.
                await Raw(ctx, 200, "application/json", """{"results":[{"index":7,"relevance_score":0.5}],"usage":{"total_tokens":3}}""");
                break;
            case "rerank-no-index":
                await Raw(ctx, 200, "application/json", """{"results":[{"relevance_score":0.5,"document":{"text":"a"}}]}""");
                break;
            case "rerank-twice":
                await Raw(ctx, 200, "application/json", """{"results":[{"index":0,"relevance_score":0.5},{"index":0,"relevance_score":0.4}],"usage":{"total_tokens":3}}""");
                break;
            case "embeddings-chat":
                // A chat completion where embeddings were asked (a server that ignores the path).
                await Raw(ctx, 200, "application/json", Answer(anthropic: false));
                break;
            case "stall-body":
                ctx.Response.ContentType = "application/json";
                ctx.Response.ContentLength = 1000;
                await ctx.Response.Body.WriteAsync("{\"id\":"u8.ToArray());
                await ctx.Response.Body.FlushAsync();
                Interlocked.Increment(ref _stalled);
                await Aborted(ctx.RequestAborted); // the rest never comes: held until the gateway gives up
                break;
            case "ratelimit-200" or "ratelimit-429":
                // OpenAI's rate-limit headers, one request fewer remaining on every call (100 before the first).
                ctx.Response.Headers["x-ratelimit-limit-requests"] = "100";
                ctx.Response.Headers["x-ratelimit-remaining-requests"] = (100 - Interlocked.Increment(ref _rateLimited)).ToString(System.Globalization.CultureInfo.InvariantCulture);
                ctx.Response.Headers["x-ratelimit-reset-requests"] = "1s";
                if (ctx.Request.Headers["x-fault"] == "ratelimit-429")
                {
                    ctx.Response.Headers.RetryAfter = "0";
                    await Error(ctx, anthropic, 429, "rate_limit_error", "Rate limit reached on requests per min.");
                    break;
                }

                await Raw(ctx, 200, "application/json", Answer(anthropic));
                break;
            case "body-200":
                // The answer body the test chose, sent as a 200 (odd shapes a real upstream could send).
                await Raw(ctx, 200, "application/json", ctx.Request.Headers["x-body"].ToString());
                break;
            case "sse-200":
                // One event the test chose, then [DONE].
                await Raw(ctx, 200, "text/event-stream", $"data: {ctx.Request.Headers["x-body"]}\n\ndata: [DONE]\n\n");
                break;
            case "sse-echo":
                // The SSE body the test chose, any bytes at all, carried as the request's last message (a header holds
                // neither line breaks nor UTF-8): sent as it is, after headers that say event-stream.
                await Raw(ctx, 200, "text/event-stream", await LastMessageAsync(ctx));
                break;
            case "body-echo":
                // The same for a whole answer: the JSON body the test chose, sent as it is with a 200.
                await Raw(ctx, 200, "application/json", await LastMessageAsync(ctx));
                break;
            case "gemini-tools":
                // Gemini's OpenAI-compatible endpoint with a thinking model: a function call carries its thought signature
                // (extra_content.google.thought_signature, and no refusal member: off the gateway's shape), whole or
                // streamed; the next turn must send it back on the call, or it is a 400 (as Gemini 3 answers).
                using (var request = await System.Text.Json.JsonDocument.ParseAsync(ctx.Request.Body))
                {
                    var messages = request.RootElement.GetProperty("messages");
                    if (messages[messages.GetArrayLength() - 1].GetProperty("role").GetString() == "tool")
                    {
                        var call = messages[messages.GetArrayLength() - 2].GetProperty("tool_calls")[0];
                        if (!call.TryGetProperty("extra_content", out var extra) || !extra.TryGetProperty("google", out var google)
                            || !google.TryGetProperty("thought_signature", out var signature) || signature.GetString() != GeminiSignature)
                        {
                            await Error(ctx, anthropic: false, 400, "INVALID_ARGUMENT", "Function call is missing a thought_signature in functionCall parts.");
                            break;
                        }

                        await Raw(ctx, 200, "application/json", """{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"It is sunny in Paris.","role":"assistant"}}],"created":1700000000,"id":"gem-2","model":"gemini-3-pro-preview","object":"chat.completion","usage":{"completion_tokens":6,"prompt_tokens":30,"total_tokens":36}}""");
                        break;
                    }

                    var asStream = request.RootElement.TryGetProperty("stream", out var stream) && stream.ValueKind == System.Text.Json.JsonValueKind.True;
                    var index = asStream ? ",\"index\":0" : string.Empty;
                    var calls = $$$"""[{"extra_content":{"google":{"thought_signature":"{{{GeminiSignature}}}"}},"function":{"arguments":"{\"city\":\"Paris\"}","name":"get_weather"},"id":"function-call-1","type":"function"{{{index}}}}]""";
                    if (asStream)
                    {
                        await Raw(ctx, 200, "text/event-stream",
                            $$$"""data: {"choices":[{"delta":{"role":"assistant","tool_calls":{{{calls}}}},"index":0}],"created":1700000000,"id":"gem-1","model":"gemini-3-pro-preview","object":"chat.completion.chunk"}"""
                            + "\n\n"
                            + """data: {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0}],"created":1700000000,"id":"gem-1","model":"gemini-3-pro-preview","object":"chat.completion.chunk","usage":{"completion_tokens":5,"prompt_tokens":20,"total_tokens":25}}"""
                            + "\n\ndata: [DONE]\n\n");
                        break;
                    }

                    await Raw(ctx, 200, "application/json", $$$"""{"choices":[{"finish_reason":"tool_calls","index":0,"message":{"role":"assistant","tool_calls":{{{calls}}}}}],"created":1700000000,"id":"gem-1","model":"gemini-3-pro-preview","object":"chat.completion","usage":{"completion_tokens":5,"prompt_tokens":20,"total_tokens":25}}""");
                }

                break;
            case "mistral-ids":
                // Mistral: every tool-call id in the conversation must be 9 letters and digits, or it is its 400.
                using (var request = await System.Text.Json.JsonDocument.ParseAsync(ctx.Request.Body))
                {
                    foreach (var message in request.RootElement.GetProperty("messages").EnumerateArray())
                    {
                        var ids = message.TryGetProperty("tool_calls", out var calls) ? calls.EnumerateArray().Select(static c => c.GetProperty("id").GetString()) : [];
                        foreach (var id in message.TryGetProperty("tool_call_id", out var result) ? ids.Append(result.GetString()) : ids)
                        {
                            if (id is not { Length: 9 } || !id.All(char.IsAsciiLetterOrDigit))
                            {
                                await Raw(ctx, 400, "application/json", $$$"""{"object":"error","message":"Tool call id was {{{id}}} but must be a-z, A-Z, 0-9, with a length of 9.","type":"invalid_request_message_error","param":null,"code":null}""");
                                return;
                            }
                        }
                    }

                    await Raw(ctx, 200, "application/json", """{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"It is sunny in Paris.","role":"assistant"}}],"created":1700000000,"id":"mistral-1","model":"mistral-large","object":"chat.completion","usage":{"completion_tokens":6,"prompt_tokens":30,"total_tokens":36}}""");
                }

                break;
            case "kimi-thinking":
                // A thinking model that calls tools (Kimi K2.5+, GLM, DeepSeek's thinking mode): its answer carries its
                // reasoning_content beside the call, whole or streamed (reasoning pieces in OpenAI's own shape, so the
                // gateway forwards them as bytes); the next step must give the assistant tool-call message its
                // reasoning_content back, or it is Kimi's 400.
                using (var request = await System.Text.Json.JsonDocument.ParseAsync(ctx.Request.Body))
                {
                    var messages = request.RootElement.GetProperty("messages");
                    if (messages[messages.GetArrayLength() - 1].GetProperty("role").GetString() == "tool")
                    {
                        for (var i = 0; i < messages.GetArrayLength(); i++)
                        {
                            if (messages[i].TryGetProperty("tool_calls", out _)
                                && (!messages[i].TryGetProperty("reasoning_content", out var kept) || kept.GetString() != KimiReasoning))
                            {
                                await Raw(ctx, 400, "application/json", $$$"""{"error":{"message":"thinking is enabled but reasoning_content is missing in assistant tool call message at index {{{i}}}","type":"invalid_request_error"}}""");
                                return;
                            }
                        }

                        await Raw(ctx, 200, "application/json", """{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"It is sunny in Paris.","role":"assistant"}}],"created":1700000000,"id":"kimi-2","model":"kimi-k2.6","object":"chat.completion","usage":{"completion_tokens":6,"prompt_tokens":30,"total_tokens":36}}""");
                        break;
                    }

                    const string Call = """{"id":"functions.get_weather:0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}""";
                    if (request.RootElement.TryGetProperty("stream", out var stream) && stream.ValueKind == System.Text.Json.JsonValueKind.True)
                    {
                        var body = new StringBuilder();
                        foreach (var piece in KimiReasoning.Split(' '))
                        {
                            var text = body.Length == 0 ? piece : " " + piece;
                            body.Append($$"""data: {"id":"kimi-1","object":"chat.completion.chunk","created":1700000000,"model":"kimi-k2.6","choices":[{"index":0,"delta":{"reasoning_content":"{{text}}"},"finish_reason":null,"logprobs":null}]}""").Append("\n\n");
                        }

                        body.Append($$"""data: {"id":"kimi-1","object":"chat.completion.chunk","created":1700000000,"model":"kimi-k2.6","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,{{Call[1..]}}]},"finish_reason":null,"logprobs":null}]}""").Append("\n\n");
                        body.Append("""data: {"id":"kimi-1","object":"chat.completion.chunk","created":1700000000,"model":"kimi-k2.6","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls","logprobs":null}],"usage":{"completion_tokens":12,"prompt_tokens":20,"total_tokens":32}}""").Append("\n\ndata: [DONE]\n\n");
                        await Raw(ctx, 200, "text/event-stream", body.ToString());
                        break;
                    }

                    await Raw(ctx, 200, "application/json", $$$"""{"choices":[{"finish_reason":"tool_calls","index":0,"message":{"content":"","reasoning_content":"{{{KimiReasoning}}}","role":"assistant","tool_calls":[{{{Call}}}]}}],"created":1700000000,"id":"kimi-1","model":"kimi-k2.6","object":"chat.completion","usage":{"completion_tokens":12,"prompt_tokens":20,"total_tokens":32}}""");
                }

                break;
            case "strict-200":
                // A strict OpenAI-compatible server (Fireworks, Kimi): a member it does not know is a 400 naming it.
                using (var request = await System.Text.Json.JsonDocument.ParseAsync(ctx.Request.Body))
                {
                    if (Unknown(request.RootElement) is { } member)
                    {
                        await Error(ctx, anthropic: false, 400, "invalid_request_error", $"Extra inputs are not permitted: {member}");
                        break;
                    }
                }

                await Raw(ctx, 200, "application/json", ctx.Request.Headers["x-body"].ToString());
                break;
            case "latin1-200":
                // The answer the test chose with its 'é's sent as Latin-1 bytes: JSON that is not UTF-8 (a misconfigured proxy).
                ctx.Response.StatusCode = 200;
                ctx.Response.ContentType = "application/json";
                await ctx.Response.Body.WriteAsync(Encoding.Latin1.GetBytes(ctx.Request.Headers["x-body"].ToString().Replace("\\u00e9", "\u00e9", StringComparison.Ordinal)));
                break;
            case "truncated-200":
                await Raw(ctx, 200, "application/json", $"{{\"id\":\"x\",\"note\":\"{key}\",\"choices\":[");
                break;
            case "refusal":
                // The model declines, as OpenAI's models do: the message's refusal (no content), whole or streamed as asked.
                if ((await System.Text.Json.JsonDocument.ParseAsync(ctx.Request.Body)).RootElement.TryGetProperty("stream", out var streamed) && streamed.ValueKind == System.Text.Json.JsonValueKind.True)
                {
                    await Raw(ctx, 200, "text/event-stream", """
                        data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]}

                        data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":"I can't "},"finish_reason":null}]}

                        data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":"help with that."},"finish_reason":null}]}

                        data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}

                        data: [DONE]


                        """);
                }
                else
                {
                    await Raw(ctx, 200, "application/json", """{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}""");
                }

                break;
            case "tools-interleaved":
                // Two parallel calls whose argument deltas interleave (each names its call's index), text after them.
                await Raw(ctx, 200, "text/event-stream", """
                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Checking."},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{\"tz\":"}}]},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"UTC\"}"}}]},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" Done."},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}

                    data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}

                    data: [DONE]


                    """);
                break;
            case "raw":
                // An upstream's own error shape: the status and body the test chose (x-raw-status; x-raw-body, base64).
                await Raw(ctx, int.Parse(ctx.Request.Headers["x-raw-status"].ToString(), System.Globalization.CultureInfo.InvariantCulture), "application/json",
                    Encoding.UTF8.GetString(Convert.FromBase64String(ctx.Request.Headers["x-raw-body"].ToString())));
                break;
            default:
                await Raw(ctx, 418, "text/plain", "no such fault");
                break;
        }
    }

    /// <summary>The first of Anthropic's own members anywhere in a request body, as a strict OpenAI schema would find it.</summary>
    /// <summary>The text of the request's last message (an Anthropic request carries it as a block).</summary>
    private static async Task<string> LastMessageAsync(HttpContext ctx)
    {
        using var request = await System.Text.Json.JsonDocument.ParseAsync(ctx.Request.Body);
        var messages = request.RootElement.GetProperty("messages");
        var content = messages[messages.GetArrayLength() - 1].GetProperty("content");
        return content.ValueKind == System.Text.Json.JsonValueKind.Array ? content[0].GetProperty("text").GetString()! : content.GetString()!;
    }

    private static string? Unknown(System.Text.Json.JsonElement e)
    {
        switch (e.ValueKind)
        {
            case System.Text.Json.JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    if (p.Name is "cache_control" or "thinking_blocks" or "is_error" or "thinking" or "top_k" or "context_management")
                    {
                        return p.Name;
                    }

                    if (Unknown(p.Value) is { } inner)
                    {
                        return inner;
                    }
                }

                return null;
            case System.Text.Json.JsonValueKind.Array:
                return e.EnumerateArray().Select(Unknown).FirstOrDefault(static m => m is not null);
            default:
                return null;
        }
    }

    private const string OpenAIStream =
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello compressed\"},\"finish_reason\":null}]}\n\n"
        + "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
        + "data: [DONE]\n\n";

    private const string AnthropicStream =
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n"
        + "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
        + "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello compressed\"}}\n\n"
        + "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
        + "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n"
        + "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    private static string LongAnswer(bool anthropic) => Answer(anthropic).Replace("Hello compressed", new string('a', LongAnswerChars), StringComparison.Ordinal);

    private static string Answer(bool anthropic) => anthropic
        ? """{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Hello compressed"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"""
        : """{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello compressed"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}""";

    /// <summary>The body compressed as <paramref name="encoding"/> says, whatever the request accepted (zstd: labelled, sent plain).</summary>
    private static async Task Compressed(HttpContext ctx, string encoding, string body)
    {
        ctx.Response.ContentType ??= "application/json";
        ctx.Response.Headers.ContentEncoding = encoding;
        var plain = Encoding.UTF8.GetBytes(body);
        using var buffer = new MemoryStream();
        await using (System.IO.Stream? compressor = encoding switch
        {
            "gzip" => new System.IO.Compression.GZipStream(buffer, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true),
            "deflate" => new System.IO.Compression.ZLibStream(buffer, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true),
            "br" => new System.IO.Compression.BrotliStream(buffer, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true),
            _ => null,
        })
        {
            if (compressor is null)
            {
                await ctx.Response.Body.WriteAsync(plain);
                return;
            }

            await compressor.WriteAsync(plain);
        }

        await ctx.Response.Body.WriteAsync(buffer.ToArray());
    }

    /// <summary>Completes when the client abandons the request (the explicit signal a stalled answer waits for).</summary>
    private static async Task Aborted(CancellationToken requestAborted)
    {
        var aborted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using (requestAborted.Register(static s => ((TaskCompletionSource)s!).TrySetResult(), aborted))
        {
            await aborted.Task;
        }
    }

    private static Task Error(HttpContext ctx, bool anthropic, int status, string type, string message)
    {
        var json = System.Text.Json.JsonSerializer.Serialize(message);
        return Raw(ctx, status, "application/json", anthropic
            ? $$$"""{"type":"error","error":{"type":"{{{type}}}","message":{{{json}}}}}"""
            : $$$"""{"error":{"message":{{{json}}},"type":"{{{(status == 400 ? "invalid_request_error" : type)}}}","param":null,"code":null}}""");
    }

    private static async Task Raw(HttpContext ctx, int status, string contentType, string body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = contentType;
        await ctx.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(body));
    }

    private static async Task Stream(HttpContext ctx, bool anthropic, bool contentFirst, string key)
    {
        var body = await new StreamReader(ctx.Request.Body).ReadToEndAsync();
        var streaming = body.Contains("\"stream\":true", StringComparison.Ordinal);
        var error = System.Text.Json.JsonSerializer.Serialize($"stream failed for key {key}");
        if (!streaming)
        {
            // A non-streaming caller gets the same failure as a plain error.
            await Error(ctx, anthropic, 500, "api_error", $"stream failed for key {key}");
            return;
        }

        ctx.Response.ContentType = "text/event-stream";
        var sb = new StringBuilder();
        if (anthropic)
        {
            sb.Append("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n");
            if (contentFirst)
            {
                sb.Append("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
                sb.Append("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n");
            }

            sb.Append($"event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":{error}}}}}\n\n");
        }
        else
        {
            if (contentFirst)
            {
                sb.Append("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n");
            }

            sb.Append($"data: {{\"error\":{{\"message\":{error},\"type\":\"server_error\"}}}}\n\n");
        }

        await ctx.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(sb.ToString()));
    }
}
