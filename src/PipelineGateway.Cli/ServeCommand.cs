using PipelineGateway.Server;

namespace PipelineGateway.Cli;

/// <summary><c>pgw serve</c>: the HTTP front door on the configured pipeline, until SIGTERM or Ctrl+C.</summary>
internal static class ServeCommand
{
    public static async Task<int> RunAsync(string? config, string urls, bool noLog, TextWriter output)
    {
        var (configuration, source) = GatewayConfiguration.Load(config, watch: true);

        // SIGHUP reads the configuration again at once (its keys are applied: GatewayServer), as daemons do; the file's
        // own changes are picked up by polling within ~4 s too (GatewayConfiguration.AddFile).
        using var reload = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGHUP, signal =>
        {
            signal.Cancel = true; // not the default: ending the process
            configuration.Reload();
        });
        await using var app = GatewayServer.Build(configuration, urls, services: RequestLogSetup.Register(GatewayConfiguration.DirectoryOf(config), noLog));
        Uri address;
        try
        {
            address = await GatewayServer.StartAsync(app);
        }
        catch (InvalidOperationException ex)
        {
            throw new CliException(ex.Message, exitCode: 1);
        }
        catch (IOException ex) when (ex.InnerException is System.Net.Sockets.SocketException || ex.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase) || ex.GetType().Name == "AddressInUseException")
        {
            // Kestrel's bind failure (the port is taken, or the address is not this machine's): one line, not a stack.
            var why = ex.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase) ? "the address is already in use (another process listens there)" : ex.Message;
            throw new CliException($"cannot listen on {urls}: {why}.", exitCode: 1);
        }

        await output.WriteLineAsync($"pgw serve: listening on {address} (config: {source}). Try: curl {address}v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'");
        await output.WriteLineAsync(RuntimeSettings.Describe(GC.GetConfigurationVariables()));

        // The host's console lifetime turns SIGTERM / Ctrl+C into a graceful stop: admission closes, /readyz goes
        // not-ready, in-flight requests finish within the drain timeout, the rest fail explicitly.
        await app.WaitForShutdownAsync();
        return 0;
    }
}
