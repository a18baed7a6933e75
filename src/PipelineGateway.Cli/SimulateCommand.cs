using PipelineGateway.Simulator;

namespace PipelineGateway.Cli;

/// <summary><c>pgw simulate</c>: the upstream simulator, until Ctrl+C or SIGTERM.</summary>
internal static class SimulateCommand
{
    public static async Task<int> RunAsync(SimulatorOptions options, string urls, TextWriter output, CancellationToken cancellationToken)
    {
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
