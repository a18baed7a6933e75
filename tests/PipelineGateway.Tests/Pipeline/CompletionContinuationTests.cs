using System.Diagnostics;
using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>
/// Where a caller's code resumes after its answer. By default never on a pipeline thread (a library caller's code after
/// the await may block); only a provider worker's success, for a caller that asked for it (the HTTP front door), resumes
/// the caller inside the worker's completion, saving a thread-pool hand-off. The stack at the resumed caller shows which.
/// </summary>
public sealed class CompletionContinuationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A provider that answers after a real asynchronous step, as an HTTP provider does.</summary>
    private static FakeProvider Upstream() => new("p")
    {
        OnComplete = async (r, _) =>
        {
            await Task.Yield();
            return FakeProvider.Answer(r.Model, "ok");
        },
    };

    private static Task<Resumed> SubmitAsync(Gateway gateway, ChatCompletionRequest request, bool inline) =>
        ResumeAsync(() => ((GatewayQueue)gateway.Services.GetRequiredService<IGatewayQueue>()).SubmitAsync(request, SubmitMode.Wait, inline, Ct));

    /// <summary>
    /// Awaits without the test's synchronization context (which would take every continuation and make "never inline"
    /// true whatever the gateway did), and records the answer or failure and where the caller resumed.
    /// </summary>
    private static async Task<Resumed> ResumeAsync(Func<ValueTask<ChatCompletionResponse>> submit)
    {
        try
        {
            var response = await submit().ConfigureAwait(false);
            return new Resumed(response, null, ResumedInsideCompletion());
        }
        catch (GatewayException ex)
        {
            return new Resumed(null, ex, ResumedInsideCompletion());
        }
    }

    private sealed record Resumed(ChatCompletionResponse? Response, GatewayException? Error, bool ResumedInsideCompletion);

    /// <summary>True when the caller's code runs inside the completion itself (every completion goes through these two).</summary>
    private static bool ResumedInsideCompletion() =>
        new StackTrace().GetFrames().Any(f => f.GetMethod() is { Name: nameof(WorkItem.TryComplete) or nameof(WorkItem.TryFail), DeclaringType: var t } && t == typeof(WorkItem));

    [Fact]
    public async Task A_caller_that_asks_for_it_is_resumed_inside_the_workers_completion()
    {
        await using var gateway = await TestGateway.With(Upstream()).StartAsync(Ct);

        var resumed = await SubmitAsync(gateway, TestGateway.Request(), inline: true);

        resumed.Response!.Content.Should().Be("ok");
        resumed.ResumedInsideCompletion.Should().BeTrue();
    }

    [Fact]
    public async Task A_library_caller_is_never_resumed_on_a_pipeline_thread()
    {
        await using var gateway = await TestGateway.With(Upstream()).StartAsync(Ct);

        var internalCall = await SubmitAsync(gateway, TestGateway.Request(), inline: false);
        var publicCall = await ResumeAsync(() => gateway.SubmitAsync(TestGateway.Request(), Ct));

        internalCall.Response!.Content.Should().Be("ok");
        internalCall.ResumedInsideCompletion.Should().BeFalse();
        publicCall.Response!.Content.Should().Be("ok");
        publicCall.ResumedInsideCompletion.Should().BeFalse();
    }

    [Fact]
    public async Task Failures_and_cache_hits_never_resume_the_caller_on_the_completing_thread()
    {
        var failing = new FakeProvider("p")
        {
            OnComplete = async (_, _) =>
            {
                await Task.Yield();
                throw new ProviderException(AttemptOutcome.NonRetryableError, "bad request", 400);
            },
        };
        await using (var gateway = await TestGateway.With(failing).StartAsync(Ct))
        {
            var failed = await SubmitAsync(gateway, TestGateway.Request(), inline: true);

            failed.Error.Should().BeOfType<UpstreamRejectedException>();
            failed.ResumedInsideCompletion.Should().BeFalse("a failure is answered from the dead-letter stage's loop, which must never run caller code");
        }

        await using (var cached = await TestGateway.With(Upstream()).AddCache(TimeSpan.FromMinutes(5)).StartAsync(Ct))
        {
            var first = await SubmitAsync(cached, TestGateway.Request(text: "same"), inline: true);
            var hit = await SubmitAsync(cached, TestGateway.Request(text: "same"), inline: true);

            first.ResumedInsideCompletion.Should().BeTrue();
            hit.Response!.Gateway!.Cached.Should().BeTrue();
            hit.ResumedInsideCompletion.Should().BeFalse("a hit is answered on the cache stage's loop");
        }
    }
}
