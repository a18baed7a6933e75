using Microsoft.Extensions.Options;
using PipelineGateway.Cli;

var flags = new HashSet<string>(StringComparer.Ordinal) { "help", "h" };
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

try
{
    var line = CommandLine.Parse(args, flags);
    return line.Command switch
    {
        "demo" => await DemoCommand.RunAsync(line, Console.Out, cts.Token),
        "help" or "--help" or "-h" => Usage(Console.Out),
        _ => throw new CliException($"Unknown command '{line.Command}'. Run 'pgw help' for the commands."),
    };
}
catch (CliException ex)
{
    Console.Error.WriteLine($"pgw: {ex.Message}");
    return 2;
}
catch (OptionsValidationException ex)
{
    Console.Error.WriteLine("pgw: the configuration is invalid:");
    foreach (var failure in ex.Failures)
    {
        Console.Error.WriteLine($"  - {failure}");
    }

    return 2;
}
catch (OperationCanceledException) when (cts.IsCancellationRequested)
{
    Console.Error.WriteLine("pgw: stopped.");
    return 130;
}

static int Usage(TextWriter output)
{
    output.WriteLine("""
        pgw — PipelineGateway, an LLM gateway on a bounded channel pipeline

        Commands:
          demo [--config FILE] [--concurrency N]
              Push the built-in sample batch through the gateway (simulated providers, no keys needed)
              and print the metrics snapshot.
          help
              Show this text.

        Configuration: --config FILE, else config/gateway.json in the working directory, else the
        embedded default. Environment variables prefixed PGW_ override settings, for example
        PGW_Gateway__Pipeline__MaxInFlight=256.
        """);
    return 0;
}
