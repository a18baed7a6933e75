namespace PipelineGateway.Pipeline;

/// <summary>
/// A cheap prompt-size estimate (about four characters a token plus per-message framing), for decisions that
/// need an order of magnitude rather than an exact count (routing by cost).
/// </summary>
internal static class TokenEstimate
{
    public static int Approximate(ChatCompletionRequest request)
    {
        var chars = 0;
        foreach (var m in request.Messages)
        {
            var content = m.Content;
            if (content is { HasText: true })
            {
                chars += content.TextLength; // a text kept as the request's JSON is not made a string for this
            }
            else if (content?.Parts is { } parts)
            {
                foreach (var p in parts)
                {
                    chars += p.Text?.Length ?? 0;
                }
            }

            chars += 16; // role and framing: about 4 tokens a message
        }

        return Math.Max(1, chars / 4);
    }
}
