using System.Text.Json;
using PipelineGateway.Batch;

namespace PipelineGateway.Cli;

/// <summary>
/// <c>pgw demo</c>: runs the built-in sample batch (config/samples/demo-batch.jsonl, with duplicate prompts)
/// through <c>pgw batch</c> against the configuration's simulated providers (a flaky primary falls back to a
/// second provider, a tight rate limit makes requests wait), with the progress bar and the metrics summary.
/// </summary>
internal static class DemoCommand
{
    public static async Task<int> RunAsync(string? config, int concurrency, string? outputDir, bool json, TextWriter output, CancellationToken cancellationToken)
    {
        var (configuration, source) = GatewayConfiguration.Load(config);
        var dir = outputDir ?? Path.Combine(Path.GetTempPath(), $"pgw-demo-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        var input = Path.Combine(dir, "demo-batch.jsonl");
        if (!File.Exists(input))
        {
            await using var sample = GatewayConfiguration.OpenEmbedded("demo-batch.jsonl");
            await using var file = File.Create(input);
            await sample.CopyToAsync(file, cancellationToken).ConfigureAwait(false);
        }

        var options = new BatchOptions
        {
            InputPath = input,
            OutputPath = Path.Combine(dir, "output.jsonl"),
            Concurrency = concurrency,
        };
        // The demo's request log goes beside its output (not into the configuration's folder).
        var log = RequestLogSetup.Register(dir, disabled: false, path: Path.GetFullPath(Path.Combine(dir, "gateway.db")));
        return await BatchCommand.RunBatchAsync(configuration, source, options, output, cancellationToken, services: log, json: json).ConfigureAwait(false);
    }
}

internal static class CliJson
{
    public static readonly GatewayJsonContext Indented = new(new JsonSerializerOptions(GatewayJsonContext.Default.Options) { WriteIndented = true });
}
