using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Server;

/// <summary>
/// <c>POST /v1/completions</c> (and Azure's <c>/openai/deployments/{deployment}/completions</c>): OpenAI's legacy text
/// completions in and out, SSE when <c>stream: true</c> — what code-completion tools (fill in the middle) and base models
/// behind vLLM or Ollama use. Through the same pipeline as chat (<see cref="TextCompletions"/>): a deployment with the
/// native route gets the caller's body, any other answers the prompt as chat; the answer is written in the Completions
/// shape either way.
/// </summary>
internal sealed class CompletionsEndpoint(IGatewayQueue queue, GatewayKeys keys, ServerOptions options, GatewayResponseHeaders headers, TimeProvider time, ILogger<CompletionsEndpoint> logger)
{
    public Task HandleAsync(HttpContext ctx) => HandleAsync(ctx, deployment: null);

    /// <summary>Azure OpenAI's route: the deployment in the path is the model (a model group or alias), whatever the body says.</summary>
    public Task HandleAzureAsync(HttpContext ctx) => HandleAsync(ctx, ctx.Request.RouteValues["deployment"] as string);

    private async Task HandleAsync(HttpContext ctx, string? deployment)
    {
        // Key, content type, size and x-gateway-* headers were checked by the front door.
        var caller = ctx.Features.Get<GatewayCaller>()!;
        var aborted = ctx.RequestAborted;
        if (await OperationsEndpoint.ReadAsync(ctx, caller, body => TextCompletions.Read(body, deployment), keys, options, logger) is not { } request)
        {
            return;
        }

        if (request.Stream == true)
        {
            await NamedEventStream.WriteAsync(ctx, queue, request, new Events(request.StreamOptions?.IncludeUsage == true, ChatCompletionsEndpoint.ContinuousUsage(request)), options, time, headers, calls: null, aborted);
            return;
        }

        try
        {
            var response = await ServerSubmit.SubmitAsync(queue, request, aborted);
            headers.WriteGatewayHeaders(ctx, request, response.Gateway);
            var json = TextCompletions.WriteAnswer(response);
            ctx.Response.ContentType = "application/json";
            ctx.Response.ContentLength = json.Length;
            await ctx.Response.Body.WriteAsync(json, aborted);
        }
        catch (Exception ex) when (ex is GatewayException or OperationCanceledException)
        {
            headers.WriteRateLimitHeaders(ctx, request, ex);
            await OpenAIErrors.WriteAsync(ctx, ex);
        }
    }

    /// <summary>The Completions stream's <c>data:</c> events (no event names), then <c>[DONE]</c>; an error after the start as OpenAI writes one.</summary>
    private sealed class Events(bool includeUsage, bool continuousUsage) : INamedEventWriter
    {
        private static readonly byte[] Done = "[DONE]"u8.ToArray();

        public IEnumerable<(string Name, byte[] Json)> Start() => [];

        public IEnumerable<(string Name, byte[] Json)> OnChunk(ChatCompletionChunk chunk)
        {
            // Usage only when asked for, once: the last chunk's, saying what the request cost (the headers went out before it was known).
            var usage = ChatCompletionsEndpoint.WrittenUsage(chunk, includeUsage, continuousUsage);
            return TextCompletions.WriteEvent(chunk, usage) is { } json ? [(string.Empty, json)] : [];
        }

        public IEnumerable<(string Name, byte[] Json)> Finish() => [(string.Empty, Done)];

        public (string Name, byte[] Json) Error(int status, Exception error, string message) =>
            (string.Empty, JsonSerializer.SerializeToUtf8Bytes(new OpenAIErrorBody { Error = OpenAIErrors.Map(error).Error }, ServerJsonContext.Default.OpenAIErrorBody));
    }
}
