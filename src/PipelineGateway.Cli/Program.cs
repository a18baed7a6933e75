using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Options;
using PipelineGateway.Cli;

using var cts = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    // First Ctrl+C: stop admitting and finish in-flight work. A second one ends the process.
    if (!cts.IsCancellationRequested)
    {
        e.Cancel = true;
        cts.Cancel();
    }
};

// SIGTERM (a service manager, `kill`, a script's clean-up) stops a command the way the first Ctrl+C does. Without
// this, a hosted server inside a command takes the signal for itself and the command never returns.
using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx =>
{
    ctx.Cancel = true;
    cts.Cancel();
});

return await Cli.RunAsync(args, Console.Out, Console.Error, cts.Token);

namespace PipelineGateway.Cli
{
    /// <summary>Parses, reports usage mistakes in one line (exit 2), runs the command, and maps its failures to exit codes.</summary>
    internal static class Cli
    {
        public static async Task<int> RunAsync(string[] args, TextWriter output, TextWriter error, CancellationToken stop)
        {
            // `pgw` alone and `pgw help` show the help, as `pgw --help` does.
            if (args is [] or ["help"])
            {
                args = ["--help"];
            }

            var root = Commands.Create(output);
            var parsed = root.Parse(args);
            if (parsed.Errors.Count > 0)
            {
                foreach (var e in parsed.Errors)
                {
                    await error.WriteLineAsync($"pgw: {e.Message}").ConfigureAwait(false);
                }

                var command = parsed.CommandResult.Command;
                await error.WriteLineAsync($"Run 'pgw{(command == root ? string.Empty : " " + command.Name)} --help' for the options.").ConfigureAwait(false);
                return 2;
            }

            try
            {
                // ProcessTerminationTimeout null: System.CommandLine would otherwise take SIGTERM and Ctrl+C itself and end
                // the process 2 s later, in the middle of `serve`'s drain. The signals are handled above, and by the host.
                var invocation = new InvocationConfiguration { EnableDefaultExceptionHandler = false, Output = output, Error = error, ProcessTerminationTimeout = null };
                return await parsed.InvokeAsync(invocation, stop).ConfigureAwait(false);
            }
            catch (CliException ex)
            {
                await error.WriteLineAsync($"pgw: {ex.Message}").ConfigureAwait(false);
                return ex.ExitCode;
            }
            catch (OptionsValidationException ex)
            {
                // One line, naming every setting that is wrong: start-up failures are read in service logs.
                await error.WriteLineAsync($"pgw: the configuration is invalid: {string.Join("; ", ex.Failures)}").ConfigureAwait(false);
                return 1;
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                await error.WriteLineAsync("pgw: stopped.").ConfigureAwait(false);
                return 130;
            }
        }
    }
}
