using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// <c>POST /v1/responses</c>: OpenAI's Responses API (the OpenAI SDKs' responses clients, the Agents SDK, Codex), stateless,
/// through the same pipeline to any provider — the request read by <see cref="ResponsesCodec"/> into the canonical form,
/// the answer written back by <see cref="ResponsesWriter"/>, whole or as the API's SSE events. Errors in OpenAI's shape.
/// </summary>
internal sealed class ResponsesEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ILogger<ResponsesEndpoint> logger)
{
    public async Task HandleAsync(HttpContext ctx)
    {
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        ctx.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize = options.MaxRequestBodyBytes;
        ChatCompletionRequest request;
        try
        {
            request = await JsonBody.ReadAsync(ctx.Request.BodyReader, static body => ResponsesCodec.Parse(body), aborted);
        }
        catch (JsonException ex)
        {
            await RouteErrors.WriteAsync(ctx, new InvalidRequestException(null, $"The request body is not valid JSON: {Serialization.JsonProblems.FirstSentence(ex.Message)}"));
            return;
        }
        catch (BadHttpRequestException ex)
        {
            await JsonBody.WriteBodyFailureAsync(ctx, ex, options, logger);
            return;
        }
        catch (InvalidRequestException ex)
        {
            await RouteErrors.WriteAsync(ctx, ex);
            return;
        }

        if (!keys.MayUse(caller.Key, request.Model))
        {
            await RouteErrors.WriteAsync(ctx, 403, "permission_error", "model_not_allowed", $"This key may not use the model '{Providers.ProviderException.Quoted(request.Model)}'.", "model");
            return;
        }

        request.Gateway = caller.Headers.ToOptions(caller.Key);
        ServerSubmit.Identify(ctx, request, "x-request-id");
        var writer = new ResponsesWriter(request, "resp_" + request.Gateway.RequestSequence.ToString("x16", System.Globalization.CultureInfo.InvariantCulture), time.GetUtcNow().ToUnixTimeSeconds());
        if (request.Stream == true)
        {
            await NamedEventStream.WriteAsync(ctx, queue, request, writer, options, time, headers, aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            headers.WriteGatewayHeaders(ctx, request, response.Gateway);
            ctx.Response.ContentType = "application/json";
            await ctx.Response.Body.WriteAsync(writer.Whole(response), aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await RouteErrors.WriteAsync(ctx, ex);
        }
    }
}
