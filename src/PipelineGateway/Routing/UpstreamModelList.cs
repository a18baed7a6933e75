using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Routing;

/// <summary>
/// The names a wildcard group with <c>ListUpstreamModels</c> shows on <c>/v1/models</c>: its providers' own model lists
/// (<c>GET {base}/models</c>), each id put through the deployment's <c>Model</c> pattern back into a name the wildcard
/// takes (<c>openai/*</c> over <c>gpt-4.1</c>: <c>openai/gpt-4.1</c>). A provider's list is fetched once for every
/// wildcard and caller, kept for <see cref="Fresh"/>; a failed fetch is logged, the last list (if any) shown meanwhile,
/// and asked again after <see cref="RetryAfterFailure"/> — a model list never waits long on an upstream that is down.
/// </summary>
internal sealed partial class UpstreamModelList(TimeProvider time, ILogger<UpstreamModelList> logger)
{
    public static readonly TimeSpan Fresh = TimeSpan.FromMinutes(5);
    public static readonly TimeSpan RetryAfterFailure = TimeSpan.FromSeconds(30);

    /// <summary>How long a caller of <c>/v1/models</c> waits for a list being fetched, before going on without it.</summary>
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);

    private readonly ConcurrentDictionary<string, Entry> _lists = new(StringComparer.Ordinal);

    /// <summary>A fetch and when it started; the list read before it, shown while it runs or when it failed.</summary>
    private sealed record Entry(Task<IReadOnlyList<string>> Fetch, DateTimeOffset Started, IReadOnlyList<string> Last)
    {
        /// <summary>Still the one to use: running, read less than <see cref="Fresh"/> ago, or failed less than <see cref="RetryAfterFailure"/> ago.</summary>
        public bool Current(DateTimeOffset now) => now < Started + (Fetch.IsFaulted ? RetryAfterFailure : Fresh);
    }

    /// <summary>The names the wildcard's providers list (none from a provider that cannot list, or has not answered).</summary>
    public async Task<IReadOnlyList<string>> NamesAsync(WildcardModels wildcard, CancellationToken cancellationToken)
    {
        var names = new List<string>();
        foreach (var d in wildcard.Template.DeploymentArray)
        {
            if (d.Pool.Provider is not IUpstreamModelLister { CanListModels: true } lister || d.Model.IndexOf('*') is not (>= 0 and var star))
            {
                continue; // a deployment with a fixed upstream model serves every name as that one model: nothing to list
            }

            var (head, tail) = (d.Model[..star], d.Model[(star + 1)..]);
            foreach (var id in await IdsAsync(d.ProviderName, lister, cancellationToken).ConfigureAwait(false))
            {
                if (id.Length > head.Length + tail.Length && id.StartsWith(head, StringComparison.Ordinal) && id.EndsWith(tail, StringComparison.Ordinal)
                    && wildcard.Prefix + id[head.Length..^tail.Length] is var name && wildcard.Matches(name, out _))
                {
                    names.Add(name);
                }
            }
        }

        return names;
    }

    private async Task<IReadOnlyList<string>> IdsAsync(string provider, IUpstreamModelLister lister, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var entry = _lists.AddOrUpdate(
            provider,
            static (name, s) => s.Self.Start(name, s.Lister, [], s.Now),
            static (name, old, s) => old.Current(s.Now) ? old : s.Self.Start(name, s.Lister, old.Fetch.IsCompletedSuccessfully ? old.Fetch.Result : old.Last, s.Now),
            (Self: this, Lister: lister, Now: now));
        try
        {
            return await entry.Fetch.WaitAsync(Wait, time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            return entry.Last; // still fetching: what was known, and the fetch goes on for the next caller
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return entry.Last;
        }
    }

    /// <summary>A fetch, shared by every caller until it is stale; a failure is kept for <see cref="RetryAfterFailure"/>.</summary>
    private Entry Start(string provider, IUpstreamModelLister lister, IReadOnlyList<string> last, DateTimeOffset now) =>
        new(FetchAsync(provider, lister), now, last);

    private async Task<IReadOnlyList<string>> FetchAsync(string provider, IUpstreamModelLister lister)
    {
        try
        {
            return await lister.ListModelsAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            LogListFailed(logger, provider, ex.Message);
            throw; // kept as the entry's failure: asked again after RetryAfterFailure
        }
    }

    [LoggerMessage(EventId = 160, Level = LogLevel.Warning, Message = "Provider {Provider}: its model list (for a wildcard's /v1/models) could not be read: {Error}; the last one read is shown meanwhile.")]
    private static partial void LogListFailed(ILogger logger, string provider, string error);
}
