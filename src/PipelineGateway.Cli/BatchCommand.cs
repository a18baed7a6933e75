using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Batch;
using PipelineGateway.Metrics;
using PipelineGateway.Redis;

namespace PipelineGateway.Cli;

/// <summary>
/// <c>pgw batch INPUT -o OUTPUT [--errors FILE] [--concurrency N] [--retry-failed] [--config FILE]</c>:
/// a resumable OpenAI-Batch-format run through the gateway.
/// </summary>
internal static class BatchCommand
{
    public static async Task<int> RunAsync(CommandLine args, TextWriter output, CancellationToken stop)
    {
        if (args.Positional.Count != 1)
        {
            throw new CliException("Usage: pgw batch INPUT.jsonl -o OUTPUT.jsonl [--errors FILE] [--concurrency N] [--retry-failed] [--config FILE] [--redis CONNECTION [--batch-id ID] [--claim-after SECONDS]]");
        }

        var outputPath = args.Get("o") ?? args.Get("output") ?? throw new CliException("Name the output file with -o OUTPUT.jsonl.");
        var options = new BatchOptions
        {
            InputPath = args.Positional[0],
            OutputPath = outputPath,
            ErrorsPath = args.Get("errors"),
            Concurrency = args.GetInt("concurrency", 128, 1, 100_000),
            RetryFailed = args.Has("retry-failed"),
        };
        var (configuration, source) = GatewayConfiguration.Load(args.Get("config"));
        if (args.Has("redis") && options.RetryFailed)
        {
            throw new CliException("--retry-failed works on a local batch's files; a shared (--redis) batch keeps its results in Redis. Run the failed lines as a new batch instead.");
        }

        RedisBatchOptions? shared = args.Get("redis") is { } redis
            ? new RedisBatchOptions
            {
                Configuration = redis,
                BatchId = args.Get("batch-id"),
                ClaimAfter = TimeSpan.FromSeconds(args.GetInt("claim-after", 120, 1, 86_400)),
            }
            : null;
        return await RunBatchAsync(configuration, source, options, output, stop, shared).ConfigureAwait(false);
    }

    /// <summary>Runs one batch with a progress display, then prints the summary and the metrics snapshot.</summary>
    public static async Task<int> RunBatchAsync(Microsoft.Extensions.Configuration.IConfiguration configuration, string source, BatchOptions options, TextWriter output, CancellationToken stop, RedisBatchOptions? shared = null)
    {
        using var host = await GatewayHost.StartAsync(configuration, stop).ConfigureAwait(false);
        var queue = host.Services.GetRequiredService<IGatewayQueue>();
        var metrics = host.Services.GetRequiredService<IGatewayMetrics>();
        var progress = new BatchProgress();
        await output.WriteLineAsync($"pgw batch: {options.InputPath} -> {options.OutputPath} (errors: {options.ResolvedErrorsPath}), config: {source}, concurrency {options.Concurrency}").ConfigureAwait(false);

        BatchSummary summary;
        try
        {
            await using (new ProgressReporter(output, !Console.IsOutputRedirected, progress))
            {
                summary = shared is null
                    ? await BatchRunner.RunAsync(queue, options, progress, stop).ConfigureAwait(false)
                    : await RedisBatchRunner.RunAsync(queue, options, shared, progress, stop).ConfigureAwait(false);
            }
        }
        catch (BatchException ex)
        {
            throw new CliException(ex.Message);
        }
        finally
        {
            await host.StopAsync(CancellationToken.None).ConfigureAwait(false);
        }

        await output.WriteLineAsync(JsonSerializer.Serialize(metrics.GetSnapshot(), CliJson.Indented.GatewayMetricsSnapshot)).ConfigureAwait(false);
        await output.WriteLineAsync($"""
            {summary.Lines} lines: {summary.Succeeded} answered ({summary.CacheHits} from cache), {summary.Failed} failed, {summary.BadLines} bad lines, {summary.AlreadyDone} done by an earlier run{(shared is null ? string.Empty : " or another worker")}.
            Results: {Path.GetFullPath(summary.OutputPath)}
            Errors:  {Path.GetFullPath(summary.ErrorsPath)}
            """).ConfigureAwait(false);
        if (summary.Stopped)
        {
            await output.WriteLineAsync($"Stopped with {summary.Remaining} lines to go: run the same command again to continue.").ConfigureAwait(false);
            return 130;
        }

        return 0;
    }
}
