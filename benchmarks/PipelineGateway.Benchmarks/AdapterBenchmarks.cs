using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.OpenAI;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// What an adapter costs per request apart from the network: building the request (serialization) and reading
/// the answer (parsing), against an in-memory handler that returns a canned upstream body. The baseline sends
/// the same bytes through the same HttpClient and reads them as a string, so the difference is the adapter.
/// </summary>
[MemoryDiagnoser]
public class AdapterBenchmarks
{
    private const string OpenAIBody = """
        {"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"The gateway routes requests across providers with bounded channels and backpressure so bursts become waiting instead of memory growth."},"finish_reason":"stop"}],"usage":{"prompt_tokens":52,"completion_tokens":24,"total_tokens":76}}
        """;

    private const string AnthropicBody = """
        {"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"The gateway routes requests across providers with bounded channels and backpressure so bursts become waiting instead of memory growth."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":52,"output_tokens":24}}
        """;

    private static readonly string OpenAIStream = string.Concat(Enumerable.Range(0, 24).Select(i =>
        $"data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n")) + "data: [DONE]\n\n";

    private HttpClient _raw = null!;
    private OpenAIChatProvider _openai = null!;
    private OpenAIChatProvider _openaiStream = null!;
    private AnthropicChatProvider _anthropic = null!;
    private ProviderRequest _request;

    [GlobalSetup]
    public void Setup()
    {
        _raw = new HttpClient(new CannedHandler(OpenAIBody));
        var options = new ProviderOptions { Name = "p", BaseUrl = "http://upstream.test/v1" };
        _openai = new OpenAIChatProvider("openai", new HttpClient(new CannedHandler(OpenAIBody)), options, "sk-bench", TimeProvider.System, NullLogger.Instance);
        _openaiStream = new OpenAIChatProvider("openai", new HttpClient(new CannedHandler(OpenAIStream)), options, "sk-bench", TimeProvider.System, NullLogger.Instance);
        _anthropic = new AnthropicChatProvider("anthropic", new HttpClient(new CannedHandler(AnthropicBody)), options, "sk-bench", TimeProvider.System, NullLogger.Instance);
        _request = new ProviderRequest(
            new ChatCompletionRequest
            {
                Model = "group",
                Temperature = 0.2,
                MaxTokens = 256,
                Messages =
                [
                    ChatCompletionMessage.System("You are a concise assistant for a .NET team."),
                    ChatCompletionMessage.User("Explain in two sentences how a bounded channel gives backpressure in an LLM gateway."),
                ],
            },
            "gpt-4o-mini");
    }

    [Benchmark(Baseline = true)]
    public async Task<int> RawHttpClient_SameBytes()
    {
        using var content = new StringContent("""{"model":"gpt-4o-mini","messages":[]}""", Encoding.UTF8, "application/json");
        using var response = await _raw.PostAsync("http://upstream.test/v1/chat/completions", content);
        return (await response.Content.ReadAsStringAsync()).Length;
    }

    [Benchmark]
    public async Task<int> OpenAI_Whole() => (await _openai.CompleteAsync(_request, CancellationToken.None)).Choices.Count;

    [Benchmark]
    public async Task<int> OpenAI_Stream24Chunks()
    {
        var n = 0;
        await foreach (var _ in _openaiStream.StreamAsync(_request, CancellationToken.None))
        {
            n++;
        }

        return n;
    }

    [Benchmark]
    public async Task<int> Anthropic_Whole() => (await _anthropic.CompleteAsync(_request, CancellationToken.None)).Choices.Count;

    internal sealed class CannedHandler(string body) : HttpMessageHandler
    {
        private readonly byte[] _body = Encoding.UTF8.GetBytes(body);

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            // Serialize the request as the socket handler would, so request-building cost is counted.
            if (request.Content is not null)
            {
                await request.Content.CopyToAsync(Stream.Null, cancellationToken);
            }

            return new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(_body) };
        }
    }
}
