using FluentAssertions;
using Microsoft.Extensions.DependencyInjection;
using PipelineGateway.Hosting;
using PipelineGateway.Pipeline;
using PipelineGateway.Providers;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Pipeline;

/// <summary>
/// Where a caller's code resumes after its answer, shown by what the caller's code can do to the gateway. By default
/// never on a pipeline thread: a library caller's code after the await may block, and the gateway goes on answering
/// others. Only a provider worker's success, for a caller that asked for it (the HTTP front door), resumes the caller
/// inside the worker's completion, on the worker's own thread, saving a thread-pool hand-off.
/// </summary>
public sealed class CompletionContinuationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>How long a request that should go through may take before the test calls the gateway stalled.</summary>
    private static readonly TimeSpan Stalled = TimeSpan.FromSeconds(20);

    /// <summary>A provider that answers after a real asynchronous step, as an HTTP provider does.</summary>
    private static FakeProvider Upstream() => new("p")
    {
        OnComplete = async (r, _) =>
        {
            await Task.Yield();
            return FakeProvider.Answer(r.Model, "ok");
        },
    };

    /// <summary>One worker, so a worker held by a caller's code would hold every later request.</summary>
    private static GatewayBuilder OneWorker(FakeProvider provider) =>
        new GatewayBuilder().AddProvider(provider, workers: 1, queueCapacity: 16).AddModel("m", "p");

    private static ValueTask<ChatCompletionResponse> Internal(Gateway gateway, ChatCompletionRequest request, bool inline) =>
        ((GatewayQueue)gateway.Services.GetRequiredService<IGatewayQueue>()).SubmitAsync(request, SubmitMode.Wait, inline, Ct);

    /// <summary>
    /// A caller whose code after the await blocks until released (awaiting without the test's synchronization context,
    /// which would take every continuation and hide where the gateway resumed it).
    /// </summary>
    private sealed class BlockingCaller : IDisposable
    {
        private readonly ManualResetEventSlim _release = new();
        private readonly TaskCompletionSource<object> _resumed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<object> Resumed => _resumed.Task;

        public Task Run(Func<ValueTask<ChatCompletionResponse>> submit) => Task.Run(async () =>
        {
            object outcome;
            try
            {
                outcome = await submit().ConfigureAwait(false);
            }
            catch (GatewayException ex)
            {
                outcome = ex;
            }

            _resumed.SetResult(outcome);
            _release.Wait(Stalled); // the caller's own blocking code
        });

        public void Release() => _release.Set();

        public void Dispose()
        {
            _release.Set();
            _release.Dispose();
        }
    }

    [Fact]
    public async Task A_caller_that_asks_for_it_runs_inside_the_workers_completion_before_the_worker_takes_its_next_request()
    {
        var calls = 0;
        var firstAnswer = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var provider = new FakeProvider("p")
        {
            OnComplete = async (r, _) =>
            {
                if (Interlocked.Increment(ref calls) == 1)
                {
                    await firstAnswer.Task;
                }

                await Task.Yield();
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await OneWorker(provider).StartAsync(Ct);
        var pool = gateway.Services.GetRequiredService<PipelineGateway.Dispatch.ProviderPools>().All[0];
        using var caller = new BlockingCaller();

        // The caller's request is with the only worker; the next one waits in the worker's queue.
        var run = caller.Run(() => Internal(gateway, TestGateway.Request(text: "a"), inline: true));
        await Wait.Until(() => Volatile.Read(ref calls) == 1, "the first request reaches the provider");
        var next = gateway.SubmitAsync(TestGateway.Request(text: "b"), Ct).AsTask();
        await Wait.Until(() => pool.QueueDepth == 1, "the next request waits for the worker");
        firstAnswer.SetResult();

        var outcome = await caller.Resumed.WaitAsync(Stalled, Ct);
        outcome.Should().BeOfType<ChatCompletionResponse>().Which.Content.Should().Be("ok");

        // While the caller's code runs, the worker cannot take the next request: it is the worker running that code.
        // (Resumed anywhere else, the free worker takes it within microseconds; 200 ms is only how long we look.)
        var workerTookNext = SpinWait.SpinUntil(() => pool.QueueDepth == 0 || Volatile.Read(ref calls) > 1, TimeSpan.FromMilliseconds(200));
        workerTookNext.Should().BeFalse("the worker runs the caller's code as part of its completion, before it takes the next request");
        caller.Release();
        (await next.WaitAsync(Stalled, Ct)).Content.Should().Be("ok");
        await run;
    }

    [Fact]
    public async Task A_library_caller_that_blocks_after_its_answer_does_not_hold_the_worker()
    {
        await using var gateway = await OneWorker(Upstream()).StartAsync(Ct);
        using var internalCaller = new BlockingCaller();
        using var publicCaller = new BlockingCaller();

        var runs = new[]
        {
            internalCaller.Run(() => Internal(gateway, TestGateway.Request(text: "a"), inline: false)),
            publicCaller.Run(() => gateway.SubmitAsync(TestGateway.Request(text: "b"), Ct)),
        };
        await internalCaller.Resumed.WaitAsync(Stalled, Ct);
        await publicCaller.Resumed.WaitAsync(Stalled, Ct);

        // Both callers are blocked in their own code; the only worker still answers.
        var next = await gateway.SubmitAsync(TestGateway.Request(text: "c"), Ct).AsTask().WaitAsync(Stalled, Ct);
        next.Content.Should().Be("ok");

        internalCaller.Release();
        publicCaller.Release();
        await Task.WhenAll(runs);
    }

    [Fact]
    public async Task A_caller_blocked_after_a_failure_does_not_hold_the_dead_letter_stage()
    {
        var failing = new FakeProvider("p")
        {
            OnComplete = async (_, _) =>
            {
                await Task.Yield();
                throw new ProviderException(AttemptOutcome.NonRetryableError, "bad request", 400);
            },
        };
        await using var gateway = await OneWorker(failing).StartAsync(Ct);
        using var caller = new BlockingCaller();

        var run = caller.Run(() => Internal(gateway, TestGateway.Request(text: "a"), inline: true));
        (await caller.Resumed.WaitAsync(Stalled, Ct)).Should().BeOfType<UpstreamRejectedException>();

        // A failure is answered from the dead-letter stage's single loop; the next failure needs that loop.
        var next = async () => await Internal(gateway, TestGateway.Request(text: "b"), inline: true).AsTask().WaitAsync(Stalled, Ct);
        await next.Should().ThrowAsync<UpstreamRejectedException>();

        caller.Release();
        await run;
    }

    [Fact]
    public async Task A_caller_blocked_after_a_cache_hit_does_not_hold_the_cache_stage()
    {
        await using var gateway = await OneWorker(Upstream()).AddCache(TimeSpan.FromMinutes(5)).StartAsync(Ct);
        await gateway.SubmitAsync(TestGateway.Request(text: "same"), Ct);
        using var caller = new BlockingCaller();

        var run = caller.Run(() => Internal(gateway, TestGateway.Request(text: "same"), inline: true));
        var outcome = await caller.Resumed.WaitAsync(Stalled, Ct);
        outcome.Should().BeOfType<ChatCompletionResponse>().Which.Gateway!.Cached.Should().BeTrue();

        // A hit is answered on the cache stage's single loop; every later request passes through it.
        var next = await gateway.SubmitAsync(TestGateway.Request(text: "other"), Ct).AsTask().WaitAsync(Stalled, Ct);
        next.Gateway!.Cached.Should().BeFalse();

        caller.Release();
        await run;
    }

    /// <summary>Which provider calls ran on the submitting thread while its submit had not returned yet.</summary>
    private sealed class Submitter
    {
        [ThreadStatic]
        private static bool t_submitting;

        public List<string> RanInsideSubmit { get; } = [];

        public void Note(string text)
        {
            if (t_submitting)
            {
                lock (RanInsideSubmit)
                {
                    RanInsideSubmit.Add(text);
                }
            }
        }

        public Task<ValueTask<ChatCompletionResponse>> Submit(Func<ValueTask<ChatCompletionResponse>> submit) => Task.Run(() =>
        {
            t_submitting = true;
            try
            {
                return submit();
            }
            finally
            {
                t_submitting = false;
            }
        });
    }

    [Fact]
    public async Task The_front_doors_thread_goes_on_to_the_upstream_call_when_a_worker_is_idle_a_library_callers_never_does()
    {
        var submitter = new Submitter();
        var provider = new FakeProvider("p")
        {
            OnComplete = async (r, _) =>
            {
                submitter.Note(r.Request.Messages[0].Content!.GetText());
                await Task.Yield(); // the upstream's answer arrives later, on another thread
                return FakeProvider.Answer(r.Model, "ok");
            },
        };
        await using var gateway = await OneWorker(provider).StartAsync(Ct);
        await IdleWorker(gateway);

        var front = await submitter.Submit(() => Internal(gateway, TestGateway.Request(text: "front door"), inline: true));
        (await front.AsTask().WaitAsync(Stalled, Ct)).Content.Should().Be("ok");
        await IdleWorker(gateway);
        var library = await submitter.Submit(() => Internal(gateway, TestGateway.Request(text: "library"), inline: false));
        (await library.AsTask().WaitAsync(Stalled, Ct)).Content.Should().Be("ok");

        submitter.RanInsideSubmit.Should().Equal(["front door"], "only the front door lends its thread to the worker it handed a request to");
    }

    [Fact]
    public async Task A_worker_on_the_front_doors_thread_gives_it_back_after_one_attempt_even_when_the_provider_answers_at_once()
    {
        var submitter = new Submitter();
        await using var holder = new GatewayHolder();
        var queued = new List<Task<ChatCompletionResponse>>();
        var provider = new FakeProvider("p");
        provider.OnComplete = (r, _) =>
        {
            var text = r.Request.Messages[0].Content!.GetText();
            submitter.Note(text);
            if (text == "first")
            {
                // While the worker is busy with the first request, two more queue up behind it.
                queued.Add(Internal(holder.Gateway!, TestGateway.Request(text: "second"), inline: false).AsTask());
                queued.Add(Internal(holder.Gateway!, TestGateway.Request(text: "third"), inline: false).AsTask());
            }

            return ValueTask.FromResult(FakeProvider.Answer(r.Model, text)); // answered synchronously
        };
        holder.Gateway = await OneWorker(provider).StartAsync(Ct);
        await IdleWorker(holder.Gateway);

        var first = await submitter.Submit(() => Internal(holder.Gateway, TestGateway.Request(text: "first"), inline: true));

        (await first.AsTask().WaitAsync(Stalled, Ct)).Content.Should().Be("first");
        (await Task.WhenAll(queued).WaitAsync(Stalled, Ct)).Select(a => a.Content).Should().Equal("second", "third");
        submitter.RanInsideSubmit.Should().Equal(["first"], "the queued requests are taken on the worker's own thread, not the lent one");
    }

    /// <summary>Lending needs a parked worker: one still starting takes the request from the queue on its own thread.</summary>
    private static Task IdleWorker(Gateway gateway) =>
        Wait.Until(() => gateway.Services.GetRequiredService<PipelineGateway.Dispatch.ProviderPools>().All[0].IdleWorkers == 1, "the worker is parked");

    private sealed class GatewayHolder : IAsyncDisposable
    {
        public Gateway? Gateway { get; set; }

        public ValueTask DisposeAsync() => Gateway?.DisposeAsync() ?? ValueTask.CompletedTask;
    }
}
