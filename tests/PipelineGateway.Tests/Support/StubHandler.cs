using System.Net;
using System.Text;

namespace PipelineGateway.Tests.Support;

/// <summary>Answers every request with a canned body and keeps the last request's body and headers.</summary>
public sealed class StubHandler(HttpStatusCode status, string body, string contentType = "application/json") : HttpMessageHandler
{
    public string? LastBody { get; private set; }

    public HttpRequestMessage? LastRequest { get; private set; }

    public Dictionary<string, string> ResponseHeaders { get; } = [];

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        LastRequest = request;
        LastBody = request.Content is null ? null : await request.Content.ReadAsStringAsync(cancellationToken);
        var response = new HttpResponseMessage(status) { Content = new StringContent(body, Encoding.UTF8, contentType) };
        foreach (var (k, v) in ResponseHeaders)
        {
            response.Headers.TryAddWithoutValidation(k, v);
        }

        return response;
    }
}
