using FluentAssertions;
using PipelineGateway.Hosting;
using PipelineGateway.Redis;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Redis;

/// <summary>Redis as the shared second-level cache of two gateway instances.</summary>
public sealed class RedisCacheTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Task<Gateway> Instance(string redis, string prefix, FakeProvider provider) =>
        new GatewayBuilder()
            .AddProvider(provider, workers: 4, queueCapacity: 64)
            .AddModel("m", provider.Name)
            .AddCache(TimeSpan.FromMinutes(5))
            .AddRedis(redis, keyPrefix: prefix)
            .StartAsync(Ct);

    private static string Prefix() => "t" + Guid.NewGuid().ToString("N")[..12];

    [Fact]
    public async Task An_answer_cached_by_one_instance_is_a_hit_on_the_other_with_the_TTL_honoured()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        var providerA = new FakeProvider("pa") { OnComplete = (r, _) => ValueTask.FromResult(FakeProvider.Answer(r.Model, "from A")) };
        var providerB = new FakeProvider("pb") { OnComplete = (r, _) => ValueTask.FromResult(FakeProvider.Answer(r.Model, "from B")) };
        await using var a = await Instance(redis, prefix, providerA);
        await using var b = await Instance(redis, prefix, providerB);

        var first = await a.SubmitAsync(TestGateway.Request(text: "shared question"), Ct);
        first.Gateway!.Cached.Should().BeFalse();

        var db = RedisServer.Connect(redis);
        var key = $"{prefix}:c:{PipelineGateway.Caching.CacheKey.Compute("m", TestGateway.Request(text: "shared question"))}";
        await Wait.Until(() => db.KeyExists(key), "the answer reaches Redis");
        var ttl = await db.KeyTimeToLiveAsync(key);
        ttl.Should().NotBeNull();
        ttl!.Value.Should().BeGreaterThan(TimeSpan.FromMinutes(4)).And.BeLessThanOrEqualTo(TimeSpan.FromMinutes(5));

        var second = await b.SubmitAsync(TestGateway.Request(text: "shared question"), Ct);
        second.Gateway!.Cached.Should().BeTrue("instance B finds A's answer in Redis");
        second.Content.Should().Be("from A");
        second.Gateway.Provider.Should().Be("pa");
        providerB.Calls.Should().Be(0);

        var other = await b.SubmitAsync(TestGateway.Request(text: "another question"), Ct);
        other.Gateway!.Cached.Should().BeFalse();
        other.Content.Should().Be("from B");
    }

    [Fact]
    public async Task An_embeddings_answer_cached_by_one_instance_is_served_by_the_other_as_it_was()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        Task<Gateway> Embedder(string provider) => new GatewayBuilder()
            .AddSimulatedProvider(provider, o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("emb", m => m.Deploy(provider, "text-embedding-3-small"))
            .AddCache(TimeSpan.FromMinutes(5))
            .AddRedis(redis, keyPrefix: prefix)
            .StartAsync(Ct);
        await using var a = await Embedder("sa");
        await using var b = await Embedder("sb");
        static ChatCompletionRequest Ask() => PipelineGateway.Providers.Embeddings.Read("""{"model":"emb","input":["shared","texts"],"dimensions":4}"""u8);

        var first = await a.SubmitAsync(Ask(), Ct);
        var key = $"{prefix}:c:{PipelineGateway.Caching.CacheKey.Compute("emb", Ask())}";
        var db = RedisServer.Connect(redis);
        await Wait.Until(() => db.KeyExists(key), "the answer reaches Redis");

        var second = await b.SubmitAsync(Ask(), Ct);
        second.Gateway!.Cached.Should().BeTrue("instance B finds A's answer in Redis");
        second.Gateway.Provider.Should().Be("sa");
        second.Operation!.Count.Should().Be(2);
        second.Operation.List.ToArray().Should().Equal(first.Operation!.List.ToArray());
        (second.Usage!.PromptTokens, second.Model).Should().Be((first.Usage!.PromptTokens, first.Model));
    }

    /// <summary>
    /// An image answer, cached when non-deterministic answers are (images are drawn anew otherwise), is read back from Redis
    /// as images — not as embeddings, whose stored answers also hold <c>data</c> — with the upstream's members.
    /// </summary>
    [Fact]
    public async Task An_image_answer_cached_by_one_instance_is_served_by_the_other_as_it_was()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        Task<Gateway> Painter(string provider) => new GatewayBuilder()
            .AddSimulatedProvider(provider, o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("img", m => m.Deploy(provider, "gpt-image-1"))
            .AddCache(TimeSpan.FromMinutes(5), configure: c => c.CacheNonDeterministic = true)
            .AddRedis(redis, keyPrefix: prefix)
            .StartAsync(Ct);
        await using var a = await Painter("sa");
        await using var b = await Painter("sb");
        static ChatCompletionRequest Ask() => PipelineGateway.Providers.Operations.Read(PipelineGateway.Providers.OperationKind.Images, """{"model":"img","prompt":"a shared fox","n":2,"size":"8x8"}"""u8);

        var first = await a.SubmitAsync(Ask(), Ct);
        var key = $"{prefix}:c:{PipelineGateway.Caching.CacheKey.Compute("img", Ask())}";
        var db = RedisServer.Connect(redis);
        await Wait.Until(() => db.KeyExists(key), "the answer reaches Redis");

        var second = await b.SubmitAsync(Ask(), Ct);
        second.Gateway!.Cached.Should().BeTrue("instance B finds A's answer in Redis");
        second.Operation!.Kind.Should().Be(PipelineGateway.Providers.OperationKind.Images);
        second.Operation.Count.Should().Be(2);
        second.Operation.List.ToArray().Should().Equal(first.Operation!.List.ToArray());
        second.Operation.Members.ToArray().Should().Equal(first.Operation.Members.ToArray(), "the usage and size as the upstream wrote them");
        PipelineGateway.Providers.Operations.ToJson(second).Should().Equal(PipelineGateway.Providers.Operations.ToJson(first));
    }

    /// <summary>A ranking read back from Redis as a ranking — not as moderations, whose stored answers also hold <c>results</c>.</summary>
    [Fact]
    public async Task A_ranking_cached_by_one_instance_is_served_by_the_other_as_it_was()
    {
        var redis = RedisServer.Shared();
        var prefix = Prefix();
        Task<Gateway> Ranker(string provider) => new GatewayBuilder()
            .AddSimulatedProvider(provider, o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("rr", m => m.Deploy(provider, "bge-reranker-v2-m3"))
            .AddCache(TimeSpan.FromMinutes(5))
            .AddRedis(redis, keyPrefix: prefix)
            .StartAsync(Ct);
        await using var a = await Ranker("sa");
        await using var b = await Ranker("sb");
        static ChatCompletionRequest Ask() => PipelineGateway.Providers.Operations.Read(PipelineGateway.Providers.OperationKind.Rerank, """{"model":"rr","query":"shared","documents":["shared text","other"],"top_n":2}"""u8);

        var first = await a.SubmitAsync(Ask(), Ct);
        var key = $"{prefix}:c:{PipelineGateway.Caching.CacheKey.Compute("rr", Ask())}";
        var db = RedisServer.Connect(redis);
        await Wait.Until(() => db.KeyExists(key), "the answer reaches Redis");

        var second = await b.SubmitAsync(Ask(), Ct);
        second.Gateway!.Cached.Should().BeTrue("instance B finds A's answer in Redis");
        second.Operation!.Kind.Should().Be(PipelineGateway.Providers.OperationKind.Rerank);
        PipelineGateway.Providers.Operations.ToJson(second).Should().Equal(PipelineGateway.Providers.Operations.ToJson(first));
    }

    [Fact]
    public async Task With_Redis_down_the_cache_is_a_miss_and_requests_still_succeed()
    {
        await using var server = await RedisServer.StartAsync();
        var provider = new FakeProvider("p");
        await using var a = await Instance(server.Configuration, Prefix(), provider);
        await server.StopAsync();

        var r1 = await a.SubmitAsync(TestGateway.Request(text: "q1"), Ct);
        var r2 = await a.SubmitAsync(TestGateway.Request(text: "q1"), Ct);

        r1.Gateway!.Cached.Should().BeFalse();
        r2.Gateway!.Cached.Should().BeTrue("the instance's own cache still works");
        provider.Calls.Should().Be(1);
    }
}
