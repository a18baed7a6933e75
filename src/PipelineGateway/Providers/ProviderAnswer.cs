namespace PipelineGateway.Providers;

/// <summary>
/// What the worker accepts from any provider — an HTTP adapter, the Microsoft.Extensions.AI adapter or a user's own
/// <see cref="ILlmProvider"/>. An answer that is present but not a usable chat completion (null, <c>"choices": null</c>, a
/// null choice, content part or tool call) is that provider's retryable failure, like a body that is not JSON: the
/// answer's own API, the cache, accounting and every writer after the worker read those parts as present.
/// </summary>
internal static class ProviderAnswer
{
    public static ChatCompletionResponse Accept(ChatCompletionResponse? response, string provider)
    {
        if (response?.Choices is not { } choices)
        {
            throw Unusable(provider, response is null ? "the answer is null" : "'choices' is null");
        }

        foreach (var choice in choices)
        {
            if (choice is null)
            {
                throw Unusable(provider, "a choice is null");
            }

            if (choice.Message is { } message && (message.Content?.Parts?.Contains(null!) == true || message.ToolCalls?.Contains(null!) == true))
            {
                throw Unusable(provider, "a message holds a null content part or tool call");
            }

            // A whole answer always ended: one whose upstream gave no finish reason (a server that speaks the format
            // loosely, a custom provider) ended its turn — with its calls, if it made some — rather than leave the
            // OpenAI schema's required finish_reason out of what the caller, the log and the Responses API read.
            if (choice.FinishReason is null)
            {
                choice.FinishReason = choice.Message?.ToolCalls is { Count: > 0 } ? FinishReasons.ToolCalls : FinishReasons.Stop;
                response.DropUpstreamJson(); // changed: no longer what the upstream's bytes say
            }
            else if (choice.FinishReason == FinishReasons.Stop && choice.Message?.ToolCalls is { Count: > 0 })
            {
                // Calls, said to have stopped (vLLM's and OpenAI's named tool choice, some compatible servers): the
                // reason OpenAI's clients and agent loops branch on, as a stream's is (StreamToolCalls).
                choice.FinishReason = FinishReasons.ToolCalls;
                response.DropUpstreamJson();
            }
        }

        if (response.Usage is { } usage)
        {
            var total = usage.TotalTokens;
            response.Usage = Billable(usage);
            if (response.Usage is null || response.Usage.TotalTokens != total)
            {
                response.DropUpstreamJson();
            }
        }

        return response;
    }

    /// <summary>
    /// An upstream's usage as the gateway bills it. A negative count, or counts whose sum no <see cref="int"/> holds, are
    /// no usage at all (a broken or hostile upstream must not refund a budget, a cost total or a token limit): dropped,
    /// so the answer is billed the gateway's estimate (<see cref="Admission.TokenCounter.EstimateUsage"/>). A total below
    /// its parts' sum is raised to it (the token limits settle on the total).
    /// </summary>
    internal static TokenUsage? Billable(TokenUsage usage)
    {
        if (usage.PromptTokens < 0 || usage.CompletionTokens < 0 || (long)usage.PromptTokens + usage.CompletionTokens > int.MaxValue)
        {
            return null;
        }

        if (usage.TotalTokens < usage.PromptTokens + usage.CompletionTokens)
        {
            usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens;
        }

        return usage;
    }

    /// <summary>
    /// The same for a stream's chunk (each choice, its delta and tool calls); a chunk with <c>"choices": null</c> is read as
    /// one without choices, as usage-only and filter-result chunks are.
    /// </summary>
    public static ChatCompletionChunk Accept(ChatCompletionChunk? chunk, string provider)
    {
        if (chunk is null)
        {
            throw Unusable(provider, "a stream event is null");
        }

        if (chunk.Usage is { } usage && !ReferenceEquals(Billable(usage), usage))
        {
            chunk.Usage = null; // unusable: the stream is billed the gateway's estimate
            chunk.DropEventJson();
        }

        if (chunk.ChoicesUnread)
        {
            return chunk; // skimmed: each choice and its delta were objects, without tool calls
        }

        chunk.Choices ??= [];
        foreach (var choice in chunk.Choices)
        {
            if (choice?.Delta is not { } delta || delta.ToolCalls?.Contains(null!) == true)
            {
                throw Unusable(provider, "a stream event's choice, its delta or one of its tool calls is null");
            }
        }

        return chunk;
    }

    /// <summary>
    /// Fills what the OpenAI schema requires of an answer and the provider left out (null or empty): <c>id</c> (from the
    /// gateway's request id), <c>object</c>, <c>created</c> (now), <c>model</c> (the deployment's) and each message's
    /// role (<c>assistant</c>; a choice without a message gets an empty assistant message). SDKs read these as present.
    /// A response that gets anything filled no longer writes as its upstream bytes (<see cref="ChatCompletionResponse.UpstreamJson"/>).
    /// </summary>
    public static void Fill(ChatCompletionResponse response, Pipeline.WorkItem item, string model, TimeProvider time)
    {
        var filled = false;
        if (string.IsNullOrEmpty(response.Id))
        {
            response.Id = (response.Operation?.Kind == OperationKind.Moderations ? "modr-" : "chatcmpl-") + item.RequestId; // an id in the API's own form
            filled = true;
        }

        if (string.IsNullOrEmpty(response.Object))
        {
            response.Object = ChatCompletionResponse.ObjectName;
            filled = true;
        }

        if (response.Created <= 0)
        {
            response.Created = time.GetUtcNow().ToUnixTimeSeconds();
            filled = true;
        }

        if (string.IsNullOrEmpty(response.Model))
        {
            response.Model = model;
            filled = true;
        }

        foreach (var choice in response.Choices)
        {
            if (choice.Message is null)
            {
                choice.Message = new ChatCompletionMessage();
                filled = true;
            }

            if (string.IsNullOrEmpty(choice.Message.Role))
            {
                choice.Message.Role = ChatRoles.Assistant;
                filled = true;
            }
        }

        if (filled)
        {
            response.DropUpstreamJson(); // the reader keeps the bytes only when nothing is missing: this is a safeguard
        }
    }

    /// <summary>
    /// The same for a stream's chunk: <paramref name="id"/> and <paramref name="created"/> are chosen once per stream, so
    /// every chunk of it agrees. A chunk that gets anything filled no longer writes as its upstream bytes
    /// (<see cref="ChatCompletionChunk.EventJson"/>, which the reader keeps only when nothing is missing).
    /// </summary>
    public static void Fill(ChatCompletionChunk chunk, ref string? id, ref long created, Pipeline.WorkItem item, string model, TimeProvider time)
    {
        var filled = false;
        if (string.IsNullOrEmpty(chunk.Id))
        {
            chunk.Id = id ??= "chatcmpl-" + item.RequestId;
            filled = true;
        }

        if (string.IsNullOrEmpty(chunk.Object))
        {
            chunk.Object = ChatCompletionChunk.ObjectName;
            filled = true;
        }

        if (chunk.Created <= 0)
        {
            chunk.Created = created > 0 ? created : created = time.GetUtcNow().ToUnixTimeSeconds();
            filled = true;
        }

        if (string.IsNullOrEmpty(chunk.Model))
        {
            chunk.Model = model;
            filled = true;
        }

        if (filled)
        {
            chunk.DropEventJson();
        }
    }

    private static ProviderException Unusable(string provider, string why) =>
        new(AttemptOutcome.RetryableError, $"'{provider}' returned an answer that is not a usable chat completion: {why}.");
}
