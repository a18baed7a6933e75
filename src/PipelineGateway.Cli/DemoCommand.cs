using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Metrics;

namespace PipelineGateway.Cli;

/// <summary>
/// <c>pgw demo</c>: pushes the built-in sample batch (with duplicate prompts) through the queue against the
/// simulated providers of the configuration (a flaky primary falls back to a second provider), shows
/// progress and prints the metrics snapshot.
/// </summary>
internal static class DemoCommand
{
    public static async Task<int> RunAsync(CommandLine args, TextWriter output, CancellationToken cancellationToken)
    {
        var (configuration, source) = GatewayConfiguration.Load(args.Get("config"));
        var concurrency = args.GetInt("concurrency", 64, 1, 100_000);

        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Error);
        builder.Services.AddPipelineGateway(configuration);
        using var host = builder.Build();
        await host.StartAsync(cancellationToken).ConfigureAwait(false);

        var queue = host.Services.GetRequiredService<IGatewayQueue>();
        var metrics = host.Services.GetRequiredService<IGatewayMetrics>();
        var requests = ReadSampleBatch();
        await output.WriteLineAsync($"pgw demo: {requests.Count} prompts from the built-in sample batch, config: {source}, concurrency {concurrency}").ConfigureAwait(false);

        long done = 0, failed = 0, cached = 0;
        var next = -1;
        await using (new ProgressReporter(output, !Console.IsOutputRedirected, requests.Count, () => (Interlocked.Read(ref done), Interlocked.Read(ref failed), Interlocked.Read(ref cached))))
        {
            var workers = Enumerable.Range(0, Math.Min(concurrency, requests.Count)).Select(async _ =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < requests.Count)
                {
                    try
                    {
                        var response = await queue.SubmitAsync(requests[i], cancellationToken).ConfigureAwait(false);
                        if (response.Gateway?.Cached == true)
                        {
                            Interlocked.Increment(ref cached);
                        }
                    }
                    catch (GatewayException)
                    {
                        Interlocked.Increment(ref failed);
                    }

                    Interlocked.Increment(ref done);
                }
            });
            await Task.WhenAll(workers).ConfigureAwait(false);
        }

        await host.StopAsync(CancellationToken.None).ConfigureAwait(false);
        await output.WriteLineAsync(JsonSerializer.Serialize(metrics.GetSnapshot(), CliJson.Indented.GatewayMetricsSnapshot)).ConfigureAwait(false);
        return 0;
    }

    private static List<ChatCompletionRequest> ReadSampleBatch()
    {
        var list = new List<ChatCompletionRequest>();
        using var reader = new StreamReader(GatewayConfiguration.OpenEmbedded("demo-batch.jsonl"));
        while (reader.ReadLine() is { } line)
        {
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            using var doc = JsonDocument.Parse(line);
            var body = doc.RootElement.GetProperty("body");
            list.Add(body.Deserialize(GatewayJsonContext.Default.ChatCompletionRequest)!);
        }

        return list;
    }
}

internal static class CliJson
{
    public static readonly GatewayJsonContext Indented = new(new JsonSerializerOptions(GatewayJsonContext.Default.Options) { WriteIndented = true });
}
