namespace PipelineGateway;

/// <summary>The OpenAI error body: <c>{"error":{"message","type","param","code"}}</c>.</summary>
internal sealed class OpenAIErrorBody
{
    public required OpenAIError Error { get; init; }
}

internal sealed class OpenAIError
{
    public required string Message { get; init; }

    public required string Type { get; init; }

    public string? Param { get; init; }

    public string? Code { get; init; }
}

/// <summary>
/// Maps every gateway failure to an HTTP status and an OpenAI error; never a 500 for a client's mistake.
/// One table for every surface that reports failures in OpenAI terms: the HTTP routes and the batch files.
/// </summary>
internal static class OpenAIErrorMapping
{
    public static (int Status, OpenAIError Error, TimeSpan? RetryAfter) Map(Exception error) => error switch
    {
        InvalidRequestException e => (400, new OpenAIError { Message = e.Message, Type = "invalid_request_error", Param = e.Param, Code = "invalid_request" }, null),
        ModelNotFoundException e => (404, new OpenAIError { Message = e.Message, Type = "invalid_request_error", Param = "model", Code = "model_not_found" }, null),
        RateLimitedException e => (429, new OpenAIError { Message = e.Message, Type = "rate_limit_error", Code = "rate_limit_exceeded" }, e.RetryAfter),
        BudgetExceededException e => (429, new OpenAIError { Message = e.Message, Type = "insufficient_quota", Code = "budget_exceeded" }, null),
        QueueFullException e => (503, new OpenAIError { Message = e.Message, Type = "server_overloaded", Code = "queue_full" }, e.RetryAfter),
        ProviderOverloadedException e => (503, new OpenAIError { Message = e.Message, Type = "server_overloaded", Code = "provider_overloaded" }, e.RetryAfter),
        DeadlineExceededException e => (504, new OpenAIError { Message = e.Message, Type = "timeout", Code = "deadline_exceeded" }, null),
        UpstreamRejectedException e => (e.StatusCode, new OpenAIError { Message = e.Message, Type = e.ErrorType ?? "invalid_request_error", Param = e.Param, Code = e.Code }, null),
        AllProvidersFailedException e => (e.StatusCode, new OpenAIError { Message = e.Message, Type = e.StatusCode switch { 504 => "timeout", 503 => "server_overloaded", _ => "upstream_error" }, Code = e.Code }, e.RetryAfter ?? (e.StatusCode == 503 ? TimeSpan.FromSeconds(1) : null)),
        GatewayUnavailableException e => (503, new OpenAIError { Message = e.Message, Type = "server_unavailable", Code = "unavailable" }, TimeSpan.FromSeconds(1)),
        OperationCanceledException => (499, new OpenAIError { Message = "The client closed the request.", Type = "cancelled", Code = "cancelled" }, null),
        _ => (500, new OpenAIError { Message = "The gateway failed unexpectedly.", Type = "server_error", Code = "internal_error" }, null),
    };

    /// <summary>
    /// Whether a client's retry cannot succeed now, though its status is one the SDKs retry (429, 5xx): a budget spent
    /// until its period ends, or every deployment's key or model refused (out of rotation for their cooldown). Said as
    /// <c>x-should-retry: false</c>, which the OpenAI and Anthropic SDKs obey — they would otherwise send it twice more
    /// at once, and every client of a misconfigured gateway would triple its load.
    /// </summary>
    public static bool RetryCannotHelp(Exception error) =>
        error is BudgetExceededException or AllProvidersFailedException { Code: "deployment_unavailable" };
}
