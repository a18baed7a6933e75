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
}
