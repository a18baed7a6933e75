using System.Net;
using PipelineGateway.Pipeline;

namespace PipelineGateway.Providers;

/// <summary>
/// The one classifier of failed attempts, for every kind of provider: HTTP adapters (which throw
/// <see cref="ProviderException"/> with the upstream's status, type, code and param), any <c>IChatClient</c> (whose
/// SDKs throw <see cref="HttpRequestException"/> with a status code, System.ClientModel's <c>ClientResultException</c>
/// or Azure's <c>RequestFailedException</c> with a <c>Status</c>), and custom providers. The outcome decides retry and
/// fallback (docs/routing.md, the error table); the details reach the caller when the upstream rejected the request.
/// </summary>
internal static class FailureClassifier
{
    /// <summary>Turns what an attempt threw into a failure value. <paramref name="item"/>'s token tells our own cancellations apart.</summary>
    public static ProviderFailure Classify(WorkItem item, Exception ex)
    {
        if (item.Token.IsCancellationRequested && ex is OperationCanceledException)
        {
            return new ProviderFailure(AttemptOutcome.Cancelled, null, null, item.Reason.ToString().ToLowerInvariant());
        }

        return ex switch
        {
            ProviderException p => new ProviderFailure(p.Outcome, p.StatusCode, p.RetryAfter, p.Message)
            {
                ErrorType = p.ErrorType,
                ErrorCode = p.ErrorCode,
                Param = p.Param,
                UpstreamMessage = p.UpstreamMessage,
                NotSent = p.NotSent,
            },

            // The provider's own timeout (a custom provider's HttpClient, say) rather than ours.
            OperationCanceledException or TimeoutException => new ProviderFailure(AttemptOutcome.Timeout, null, null, "The attempt timed out."),
            HttpRequestException { StatusCode: { } status } => FromStatus((int)status, ex),
            HttpRequestException => new ProviderFailure(AttemptOutcome.RetryableError, null, null, "Connection to the provider failed."),
            _ when StatusOf(ex) is { } status => FromStatus(status, ex),
            _ => new ProviderFailure(AttemptOutcome.RetryableError, null, null, $"The provider failed unexpectedly ({ex.GetType().Name})."),
        };
    }

    private static ProviderFailure FromStatus(int status, Exception ex) =>
        new(ProviderException.Classify(status), status, null, $"The provider answered {status} ({ex.GetType().Name}).")
        {
            UpstreamMessage = status is >= 400 and < 500 ? $"The provider rejected the request ({status} {ReasonPhrase(status)})." : null,
        };

    /// <summary>
    /// An HTTP status carried by an SDK's exception type the gateway does not reference (System.ClientModel's
    /// <c>ClientResultException.Status</c>, Azure's <c>RequestFailedException.Status</c>): read by name, on the failure
    /// path only.
    /// </summary>
    private static int? StatusOf(Exception ex)
    {
        for (var e = ex; e is not null; e = e.InnerException)
        {
            var property = e.GetType().GetProperty("Status") ?? e.GetType().GetProperty("StatusCode");
            switch (property?.GetValue(e))
            {
                case int s and >= 100 and < 600:
                    return s;
                case HttpStatusCode code:
                    return (int)code;
            }
        }

        return null;
    }

    private static string ReasonPhrase(int status) => status switch
    {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        _ => "Client Error",
    };
}
