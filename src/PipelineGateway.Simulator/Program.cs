using PipelineGateway.Simulator;

// pgw-simulator [--urls http://127.0.0.1:8081] [--latency-ms N] [--error-rate R] ... (see SimulatorOptions)
try
{
    var options = SimulatorOptions.Parse(args, out var urls);
    await using var server = await SimulatorServer.StartAsync(options, urls);
    Console.WriteLine($"pgw-simulator listening on {server.BaseAddress} (OpenAI: {server.BaseAddress}v1, Anthropic: {server.BaseAddress}v1/messages). Ctrl+C to stop.");
    using var stop = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) =>
    {
        e.Cancel = true;
        stop.Cancel();
    };
    AppDomain.CurrentDomain.ProcessExit += (_, _) => stop.Cancel();
    try
    {
        await Task.Delay(Timeout.Infinite, stop.Token);
    }
    catch (OperationCanceledException)
    {
    }

    return 0;
}
catch (ArgumentException ex)
{
    Console.Error.WriteLine($"pgw-simulator: {ex.Message}");
    return 2;
}
