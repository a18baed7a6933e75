namespace PipelineGateway.Tests.Support;

public static class Outcomes
{
    /// <summary>How many of the submissions succeeded; the rest must have failed with <typeparamref name="TRefusal"/>.</summary>
    public static async Task<int> CountSucceeded<TRefusal>(IEnumerable<Task> submissions)
        where TRefusal : Exception
    {
        var results = await Task.WhenAll(submissions.Select(async t =>
        {
            try
            {
                await t;
                return true;
            }
            catch (TRefusal)
            {
                return false;
            }
        }));
        return results.Count(ok => ok);
    }
}
