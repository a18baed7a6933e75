namespace PipelineGateway.Providers;

/// <summary>
/// A backend the gateway can send chat requests to. One instance serves every deployment that names
/// it; the gateway calls it from the provider's worker pool, one attempt per call.
/// </summary>
/// <remarks>
/// Implementations report failures by throwing <see cref="ProviderException"/> with the failure class;
/// the worker pool turns that into an attempt outcome for the dead-letter stage. Any other exception
/// is treated as a retryable failure. Implementations must honour the cancellation token: it fires when
/// the caller gives up, the request's deadline passes or the gateway shuts down.
/// </remarks>
public interface ILlmProvider
{
    /// <summary>The provider's name, unique in a gateway; deployments refer to it.</summary>
    string Name { get; }

    /// <summary>Sends one request and returns the whole answer.</summary>
    ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken);

    /// <summary>Sends one request and streams the answer as it arrives.</summary>
    IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, CancellationToken cancellationToken);
}

/// <summary>One call to a provider: the caller's request and the upstream model the deployment maps it to.</summary>
public readonly record struct ProviderRequest(ChatCompletionRequest Request, string Model)
{
    /// <summary>
    /// When the gateway gives up on the request (its timeout), if it has one: the cancellation token passed with this
    /// request fires then. A provider need not time its attempt beyond it; the HTTP adapters then run no timer of
    /// their own when their per-attempt timeout would end later.
    /// </summary>
    public DateTimeOffset? Deadline { get; init; }

    /// <summary>
    /// A streamed chunk that keeps its upstream bytes (<see cref="GatewayRequestOptions.KeepsUpstreamJson"/>) may leave its
    /// choices in them (<see cref="ChatCompletionChunk.ChoicesUnread"/>): nothing in the gateway reads them on the way
    /// (no cached answer is being built from the chunks).
    /// </summary>
    internal bool ChoicesMayStayUnread { get; init; }

    /// <summary>
    /// Where a streamed attempt's chunks go when the adapter hands them over itself (the HTTP adapters' event loop)
    /// instead of yielding them: the worker's per-chunk logic, run in the adapter's loop. Null for a whole answer;
    /// a provider that ignores it yields its chunks as always.
    /// </summary>
    internal IChunkSink? Sink { get; init; }
}

/// <summary>A streamed attempt's per-chunk logic, handed each chunk by the adapter that read it (<see cref="ProviderRequest.Sink"/>).</summary>
internal interface IChunkSink
{
    /// <summary>The next chunk; the adapter awaits what it returns (not completed at once when the caller's channel is full) before reading on.</summary>
    ValueTask TakeAsync(ChatCompletionChunk chunk);

    /// <summary>The adapter is about to wait for the upstream: its next event is not buffered yet (a burst of chunks ended).</summary>
    void Waiting();
}
