using System.Runtime.CompilerServices;
using PipelineGateway.Providers;

namespace PipelineGateway.Tests.Support;

/// <summary>A provider whose behaviour is a callback; counts calls and cancellations.</summary>
public sealed class FakeProvider(string name) : ILlmProvider
{
    private int _calls;
    private int _cancelled;

    public string Name { get; } = name;

    public Func<ProviderRequest, CancellationToken, ValueTask<ChatCompletionResponse>> OnComplete { get; set; } =
        (r, _) => ValueTask.FromResult(Answer(r.Model, "ok"));

    public Func<ProviderRequest, CancellationToken, IAsyncEnumerable<ChatCompletionChunk>>? OnStream { get; set; }

    public int Calls => Volatile.Read(ref _calls);

    public int Cancelled => Volatile.Read(ref _cancelled);

    public async ValueTask<ChatCompletionResponse> CompleteAsync(ProviderRequest request, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _calls);
        try
        {
            return await OnComplete(request, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            Interlocked.Increment(ref _cancelled);
            throw;
        }
    }

    public async IAsyncEnumerable<ChatCompletionChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _calls);
        var source = OnStream?.Invoke(request, cancellationToken) ?? DefaultStream(request.Model);
        await foreach (var chunk in source.WithCancellation(cancellationToken))
        {
            yield return chunk;
        }
    }

    /// <summary>A provider whose calls each answer "ok" once the test releases <paramref name="gate"/> (a slot per call).</summary>
    public static FakeProvider AnswersWhenReleased(string name, SemaphoreSlim gate) => new(name)
    {
        OnComplete = async (r, ct) =>
        {
            await gate.WaitAsync(ct);
            return Answer(r.Model, "ok");
        },
    };

    /// <summary>A provider that never answers: each call waits until its token is cancelled.</summary>
    public static FakeProvider NeverAnswers(string name) => new(name)
    {
        OnComplete = async (r, ct) =>
        {
            await UntilCancelled(ct);
            return Answer(r.Model, "never");
        },
    };

    /// <summary>
    /// Completes only when <paramref name="token"/> is cancelled (throwing its cancellation): no timer, no sleep. The
    /// caller resumes off the cancelling thread, so the callbacks registered before this one still run.
    /// </summary>
    public static async Task UntilCancelled(CancellationToken token)
    {
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using (token.Register(static s =>
        {
            var (source, cancelledBy) = ((TaskCompletionSource, CancellationToken))s!;
            source.TrySetCanceled(cancelledBy);
        }, (cancelled, token)))
        {
            await cancelled.Task;
        }
    }

    public static ChatCompletionResponse Answer(string model, string text) => new()
    {
        Id = "fake",
        Model = model,
        Choices = [new ChatChoice { Message = ChatCompletionMessage.Assistant(text), FinishReason = FinishReasons.Stop }],
        Usage = TokenUsage.Of(3, 1),
    };

    public static ChatCompletionChunk Chunk(string model, string text, string? finish = null) => new()
    {
        Id = "fake",
        Model = model,
        Choices = [new ChunkChoice { Delta = new ChatCompletionDelta { Content = text }, FinishReason = finish }],
    };

    private static async IAsyncEnumerable<ChatCompletionChunk> DefaultStream(string model)
    {
        await Task.Yield();
        yield return Chunk(model, "hello");
        yield return Chunk(model, " world", FinishReasons.Stop);
    }

    public static ProviderException Fail503() => new(AttemptOutcome.RetryableError, "upstream 503", 503);

    /// <summary>A provider that answers <paramref name="text"/> once <paramref name="gate"/> opens (or fails with <paramref name="failure"/>).</summary>
    public static FakeProvider Gated(string name, TaskCompletionSource gate, string text = "ok", Func<Exception?>? failure = null) => new(name)
    {
        OnComplete = async (r, ct) =>
        {
            await gate.Task.WaitAsync(ct);
            return failure?.Invoke() is { } f ? throw f : Answer(r.Model, text);
        },
    };
}
