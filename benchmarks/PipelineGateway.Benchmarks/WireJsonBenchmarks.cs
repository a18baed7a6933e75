using System.Buffers;
using System.Text.Encodings.Web;
using System.Text.Json;
using BenchmarkDotNet.Attributes;
using PipelineGateway.Serialization;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// Writing an answer as the HTTP front door does (the serializer into a reused writer), with the default encoder (what
/// the gateway used before WireJson: non-ASCII as \uXXXX) and with the wire encoder (non-ASCII as UTF-8), for an English
/// and a Chinese answer of the same length in characters. Each method returns the bytes written.
/// </summary>
[MemoryDiagnoser]
public class WireJsonBenchmarks
{
    private static readonly string English = string.Concat(Enumerable.Repeat("The gateway routes requests across providers. ", 10));
    private static readonly string Chinese = string.Concat(Enumerable.Repeat("网关在多个提供商之间路由请求，用有界通道把突发变成等待。", 18))[..English.Length];

    private readonly ArrayBufferWriter<byte> _buffer = new(8192);
    private Utf8JsonWriter _default = null!;
    private Utf8JsonWriter _wire = null!;
    private ChatCompletionResponse _answer = null!;

    [Params("English", "Chinese")]
    public string Language { get; set; } = "English";

    [GlobalSetup]
    public void Setup()
    {
        _default = new Utf8JsonWriter(_buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.Default, SkipValidation = true });
        _wire = new Utf8JsonWriter(_buffer, new JsonWriterOptions { Encoder = WireJson.Encoder, SkipValidation = true });
        _answer = new ChatCompletionResponse
        {
            Id = "chatcmpl-1",
            Model = "gpt-4o-mini",
            Created = 1,
            Choices = [new ChatChoice { Index = 0, Message = ChatCompletionMessage.Assistant(Language == "Chinese" ? Chinese : English), FinishReason = "stop" }],
            Usage = new TokenUsage { PromptTokens = 52, CompletionTokens = 120, TotalTokens = 172 },
        };
    }

    [Benchmark(Baseline = true)]
    public int DefaultEncoder() => Write(_default);

    [Benchmark]
    public int WireEncoder() => Write(_wire);

    private int Write(Utf8JsonWriter writer)
    {
        _buffer.ResetWrittenCount();
        writer.Reset(_buffer);
        JsonSerializer.Serialize(writer, _answer, GatewayJsonContext.Default.ChatCompletionResponse);
        writer.Flush();
        return _buffer.WrittenCount;
    }
}
