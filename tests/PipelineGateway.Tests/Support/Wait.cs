using System.Diagnostics;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// Waits for asynchronous progress (a stage picking an item up). This is not a timed assertion: it polls
/// a condition and only gives up after a generous bound, so a slow machine passes and a bug fails.
/// </summary>
public static class Wait
{
    public static async Task Until(Func<bool> condition, string what, int timeoutMs = 20_000)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.ElapsedMilliseconds > timeoutMs)
            {
                throw new TimeoutException($"Timed out waiting until {what}.");
            }

            await Task.Delay(1);
        }
    }
}
