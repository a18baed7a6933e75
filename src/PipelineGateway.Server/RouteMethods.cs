using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Routing.Template;

namespace PipelineGateway.Server;

/// <summary>
/// What the fallback answers: a path the gateway serves, asked with a method it does not serve there (a browser's GET on
/// <c>/v1/chat/completions</c>), is a 405 with an <c>Allow</c> header, as OpenAI's and every HTTP API's; only a path
/// nothing serves is a 404. Read from the mapped endpoints themselves, so a route added later is covered.
/// </summary>
internal sealed class RouteMethods(EndpointDataSource endpoints)
{
    private (TemplateMatcher Matcher, IReadOnlyList<string> Methods)[]? _routes;

    /// <summary>The methods served at <paramref name="path"/> (empty: no route there), in mapping order, each once.</summary>
    public IReadOnlyList<string> At(PathString path)
    {
        _routes ??= Build(endpoints);
        var allowed = new List<string>();
        foreach (var (matcher, methods) in _routes)
        {
            if (matcher.TryMatch(path, []))
            {
                foreach (var method in methods)
                {
                    if (!allowed.Contains(method, StringComparer.OrdinalIgnoreCase))
                    {
                        allowed.Add(method);
                    }
                }
            }
        }

        return allowed;
    }

    private static (TemplateMatcher, IReadOnlyList<string>)[] Build(EndpointDataSource endpoints) =>
        [.. endpoints.Endpoints
            .OfType<RouteEndpoint>()
            .Select(e => (Endpoint: e, Methods: e.Metadata.GetMetadata<IHttpMethodMetadata>()?.HttpMethods))
            // An endpoint without methods answers every method (the fallback itself): never a 405's reason.
            .Where(e => e.Methods is { Count: > 0 } && e.Endpoint.RoutePattern.RawText is not null)
            .Select(e => (new TemplateMatcher(TemplateParser.Parse(e.Endpoint.RoutePattern.RawText!), []), e.Methods!))];
}
