namespace PipelineGateway.Pipeline;

internal enum CancelReason
{
    None = 0,
    Deadline = 1,
    Caller = 2,
    Shutdown = 3,
}

/// <summary>A failed attempt as a value, handed from a worker to the dead-letter stage.</summary>
internal sealed record ProviderFailure(AttemptOutcome Outcome, int? StatusCode, TimeSpan? RetryAfter, string Message)
{
    /// <summary>The upstream's error type, code, param and own message (redacted), when it said.</summary>
    public string? ErrorType { get; init; }

    public string? ErrorCode { get; init; }

    public string? Param { get; init; }

    public string? UpstreamMessage { get; init; }

    /// <summary>The request never left the gateway: the deployment cannot carry it (<see cref="Providers.ProviderException.NotSent"/>).</summary>
    public bool NotSent { get; init; }

    /// <summary>A wildcard's upstream said 404: the model the caller named does not exist there (another deployment may have it).</summary>
    public bool UnknownModel { get; init; }

    /// <summary>The attempt this failure describes, as the caller sees it.</summary>
    public GatewayAttempt ToAttempt(string provider, string model, TimeSpan latency) =>
        new(provider, model, Outcome, latency, StatusCode, Message) { ErrorType = ErrorType, ErrorCode = ErrorCode, Param = Param, RetryAfter = RetryAfter, NotSent = NotSent };
}
