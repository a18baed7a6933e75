using System.Text;
using System.Text.Json;
using PipelineGateway.Batch;

namespace PipelineGateway.Server.Responses;

/// <summary>
/// <c>/v1/responses</c> lines of a batch (OpenAI's Batch API takes them): each body read by <see cref="ResponsesCodec"/>
/// as <c>POST /v1/responses</c> reads it, each answer written by <see cref="ResponsesWriter"/> as the route answers it.
/// A batch's responses are not stored (the output file is their record: <c>store</c> is false in them), and a line may
/// not refer to stored responses (<c>previous_response_id</c>, <c>item_reference</c>): it gives its input in full.
/// </summary>
internal static class ResponsesBatch
{
    public const string Url = "/v1/responses";

    /// <summary>The endpoint for <see cref="BatchOptions.Extra"/>; its answers are stamped by <paramref name="time"/>.</summary>
    public static BatchEndpoint Endpoint(TimeProvider time) => new()
    {
        Url = Url,
        Kind = "a responses",
        Read = (JsonElement body, out Func<ChatCompletionResponse, byte[]> answer) =>
        {
            var bytes = Encoding.UTF8.GetBytes(body.GetRawText());
            var (previous, items, conversation) = ResponsesCodec.References(bytes);
            if (previous is not null || items.Count > 0 || conversation is not null)
            {
                throw new InvalidRequestException(previous is not null ? "previous_response_id" : conversation is not null ? "conversation" : "input",
                    "A batch line cannot refer to stored responses or conversations ('previous_response_id', 'item_reference', 'conversation'): give its input in full.");
            }

            ChatCompletionRequest request;
            try
            {
                var read = ResponsesCodec.Parse(bytes, null);
                if (read.Background)
                {
                    throw new InvalidRequestException("background", "A batch line cannot be a background response: a batch runs in the background already.");
                }

                request = read.Request;
            }
            catch (ResponsesCodec.NotFoundException ex)
            {
                throw new InvalidRequestException(ex.Param, ex.Message);
            }
            catch (JsonException ex)
            {
                throw new InvalidRequestException(null, Serialization.JsonProblems.FirstSentence(ex.Message));
            }

            answer = response => new ResponsesWriter(request, ResponsesStore.NewResponseId(), time.GetUtcNow().ToUnixTimeSeconds()).Whole(response);
            return request;
        },
    };
}
