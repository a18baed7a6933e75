namespace PipelineGateway.Benchmarks;

/// <summary>Runs <c>perOp</c> calls of an action on one thread, or split across <c>threads</c> parallel threads.</summary>
internal static class Threaded
{
    public static void Run(int threads, int perOp, Action<int> action)
    {
        if (threads == 1)
        {
            for (var i = 0; i < perOp; i++)
            {
                action(0);
            }

            return;
        }

        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            for (var i = 0; i < perOp / threads; i++)
            {
                action(t);
            }
        });
    }
}
