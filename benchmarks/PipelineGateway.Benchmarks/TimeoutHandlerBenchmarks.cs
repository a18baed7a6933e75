using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Http.Resilience;
using Polly;

namespace PipelineGateway.Benchmarks;

/// <summary>
/// What the per-attempt timeout costs per upstream call (issue 21): the same canned call through an HttpClient with
/// Microsoft.Extensions.Http.Resilience's handler holding a Polly timeout (how the provider clients were built), and
/// with the timeout as a linked CancellationTokenSource cancelled after the same time.
/// </summary>
[MemoryDiagnoser]
public class TimeoutHandlerBenchmarks
{
    private static readonly Uri Url = new("http://upstream.invalid/v1/chat/completions");
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private HttpClient _polly = null!;
    private HttpClient _plain = null!;

    [GlobalSetup]
    public void Setup()
    {
        var pipeline = new ResiliencePipelineBuilder<HttpResponseMessage>().AddTimeout(Timeout).Build();
        _polly = new HttpClient(new ResilienceHandler(pipeline) { InnerHandler = new AdapterBenchmarks.CannedHandler("{}") });
        _plain = new HttpClient(new AdapterBenchmarks.CannedHandler("{}"));
    }

    [Benchmark(Baseline = true)]
    public async Task<int> LinkedTokenSource()
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(CancellationToken.None);
        timeout.CancelAfter(Timeout);
        using var request = new HttpRequestMessage(HttpMethod.Post, Url);
        using var response = await _plain.SendAsync(request, timeout.Token);
        return (int)response.StatusCode;
    }

    [Benchmark]
    public async Task<int> PollyTimeoutHandler()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, Url);
        using var response = await _polly.SendAsync(request, CancellationToken.None);
        return (int)response.StatusCode;
    }
}
