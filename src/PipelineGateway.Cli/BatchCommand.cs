using System.Text.Json;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Batch;
using PipelineGateway.Metrics;
using PipelineGateway.Redis;

namespace PipelineGateway.Cli;

/// <summary><c>pgw batch INPUT -o OUTPUT …</c> (options in <see cref="Commands"/>): a resumable OpenAI-Batch-format run through the gateway.</summary>
internal static class BatchCommand
{
    public static Task<int> RunAsync(string? config, BatchOptions options, RedisBatchOptions? shared, bool noLog, bool json, TextWriter output, CancellationToken stop)
    {
        var (configuration, source) = GatewayConfiguration.Load(config);
        return RunBatchAsync(configuration, source, options, output, stop, shared, RequestLogSetup.Register(GatewayConfiguration.DirectoryOf(config), noLog), json);
    }

    /// <summary>Runs one batch with a progress display, then prints the summary and the metrics snapshot.</summary>
    public static async Task<int> RunBatchAsync(Microsoft.Extensions.Configuration.IConfiguration configuration, string source, BatchOptions options, TextWriter output, CancellationToken stop, RedisBatchOptions? shared = null, Action<IServiceCollection>? services = null, bool json = false)
    {
        using var host = await GatewayHost.StartAsync(configuration, stop, services).ConfigureAwait(false);
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

        if (json)
        {
            await output.WriteLineAsync(JsonSerializer.Serialize(metrics.GetSnapshot(), CliJson.Indented.GatewayMetricsSnapshot)).ConfigureAwait(false);
        }
        else
        {
            MetricsSummary.Write(output, metrics.GetSnapshot(), interactive: !Console.IsOutputRedirected);
        }

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
