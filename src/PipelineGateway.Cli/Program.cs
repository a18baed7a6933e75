using System.Runtime.InteropServices;
using Microsoft.Extensions.Options;
using PipelineGateway.Cli;

var flags = new HashSet<string>(StringComparer.Ordinal) { "help", "h", "retry-failed" };
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

try
{
    var line = CommandLine.Parse(args, flags);
    return line.Command switch
    {
        "demo" => await DemoCommand.RunAsync(line, Console.Out, cts.Token),
        "batch" => await BatchCommand.RunAsync(line, Console.Out, cts.Token),
        "simulate" => await SimulateCommand.RunAsync(args[1..], Console.Out, cts.Token),
        "serve" => await ServeCommand.RunAsync(line, Console.Out),
        "help" or "--help" or "-h" => Usage(Console.Out),
        _ => throw new CliException($"Unknown command '{line.Command}'. Run 'pgw help' for the commands."),
    };
}
catch (CliException ex)
{
    Console.Error.WriteLine($"pgw: {ex.Message}");
    return ex.ExitCode;
}
catch (OptionsValidationException ex)
{
    // One line, naming every setting that is wrong: start-up failures are read in service logs.
    Console.Error.WriteLine($"pgw: the configuration is invalid: {string.Join("; ", ex.Failures)}");
    return 1;
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
          demo [--config FILE] [--concurrency N] [--output DIR]
              Run the built-in sample batch through the gateway (simulated providers with a flaky primary,
              duplicate prompts, a tight rate limit; no keys needed), then print the metrics snapshot.
          batch INPUT.jsonl -o OUTPUT.jsonl [--errors FILE] [--concurrency N] [--retry-failed] [--config FILE]
              Run an OpenAI Batch API input file through the gateway; results in the Batch output format.
              Killed or stopped, the same command again continues where it stopped (each custom_id once).
              --retry-failed runs the requests that failed before again.
              --redis CONNECTION [--batch-id ID] [--claim-after SECONDS]: work one batch from several machines
              through a Redis Stream; every machine ends with the complete output.
          serve [--urls http://127.0.0.1:8080] [--config FILE]
              Run the OpenAI-compatible HTTP front door (POST /v1/chat/completions, GET /v1/models,
              GET /v1/gateway/metrics, /healthz, /readyz). SIGTERM or Ctrl+C drains in-flight requests.
          simulate [--urls http://127.0.0.1:8081] [--latency-ms N] [--jitter-ms N] [--token-delay-ms N]
                   [--error-rate R] [--error-status 500|503|529] [--rate-limit-rate R] [--retry-after S]
                   [--hang-rate R] [--break-rate R] [--truncate-rate R] [--seed N] [--api-key-env VAR]
              Run the upstream simulator: OpenAI /v1/chat/completions and /v1/models, Anthropic /v1/messages,
              whole and streamed, with scripted faults (per request: header x-sim-fault, e.g. status=429;retry-after=2).
          help
              Show this text.

        Configuration: --config FILE, else config/gateway.json in the working directory or a parent, else the
        embedded default. Environment variables prefixed PGW_ override settings, for example
        PGW_Gateway__Pipeline__MaxInFlight=256.
        """);
    return 0;
}
