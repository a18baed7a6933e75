using PipelineGateway.Simulator;

namespace PipelineGateway.Cli;

/// <summary><c>pgw simulate</c>: the upstream simulator, until Ctrl+C or SIGTERM.</summary>
internal static class SimulateCommand
{
    public static async Task<int> RunAsync(string[] args, TextWriter output, CancellationToken cancellationToken)
    {
        SimulatorOptions options;
        string urls;
        try
        {
            options = SimulatorOptions.Parse(args, out urls);
        }
        catch (Exception ex) when (ex is ArgumentException or FormatException)
        {
            throw new CliException(ex.Message);
        }

        await using var server = await SimulatorServer.StartAsync(options, urls, cancellationToken: cancellationToken).ConfigureAwait(false);
        await output.WriteLineAsync($"pgw simulate: listening on {server.BaseAddress} (OpenAI base URL {server.BaseAddress}v1, Anthropic {server.BaseAddress}v1/messages). Ctrl+C stops.").ConfigureAwait(false);
        try
        {
            await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        return 0;
    }
}
