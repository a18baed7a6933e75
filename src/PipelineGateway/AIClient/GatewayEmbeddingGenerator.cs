using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PipelineGateway.Providers;

namespace PipelineGateway;

/// <summary>
/// The gateway as a Microsoft.Extensions.AI <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>: every call is one
/// embeddings request submitted to the gateway's queue, so it goes through admission (rate and token limits, budgets),
/// the cache, routing with failover, cost and metrics like any other request (<c>/v1/embeddings</c> without HTTP).
/// <see cref="EmbeddingGenerationOptions.ModelId"/> (a model group, else the generator's) and
/// <see cref="EmbeddingGenerationOptions.Dimensions"/> are sent; vectors are asked as base64 (what OpenAI's SDKs ask:
/// a quarter of the bytes of JSON numbers). A bad request throws <see cref="InvalidRequestException"/>; the gateway's
/// failures its typed exceptions, as <see cref="GatewayChatClient"/>'s.
/// </summary>
public sealed class GatewayEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly IGatewayQueue _gateway;
    private readonly string _model;

    public GatewayEmbeddingGenerator(IGatewayQueue gateway, string model)
    {
        ArgumentNullException.ThrowIfNull(gateway);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        _gateway = gateway;
        _model = model;
    }

    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        var inputs = values.ToList();
        if (inputs.Count == 0)
        {
            return []; // nothing to embed: no request
        }

        var request = Embeddings.ToRequest(Body(options?.ModelId ?? _model, inputs, options?.Dimensions));
        var response = await _gateway.SubmitAsync(request, cancellationToken).ConfigureAwait(false);
        var created = response.Created > 0 ? DateTimeOffset.FromUnixTimeSeconds(response.Created) : (DateTimeOffset?)null;
        var embeddings = Embeddings.Vectors(response.Operation!).Select(v => new Embedding<float>(v) { ModelId = response.Model, CreatedAt = created });
        return new GeneratedEmbeddings<Embedding<float>>(embeddings)
        {
            Usage = GatewayChatClient.Usage(response.Usage),
            AdditionalProperties = GatewayChatClient.Info(response.Gateway),
        };
    }

    private static JsonElement Body(string model, List<string> inputs, int? dimensions)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            w.WriteStartArray("input");
            foreach (var input in inputs)
            {
                w.WriteStringValue(input);
            }

            w.WriteEndArray();
            w.WriteString("encoding_format", "base64");
            if (dimensions is { } d)
            {
                w.WriteNumber("dimensions", d);
            }

            w.WriteEndObject();
        }

        var reader = new Utf8JsonReader(buffer.WrittenSpan);
        return JsonElement.ParseValue(ref reader);
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(EmbeddingGeneratorMetadata) ? new EmbeddingGeneratorMetadata("pipelinegateway", null, _model)
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(_gateway) ? _gateway
        : null;

    public void Dispose()
    {
        // The queue is the host's, not this generator's.
    }
}

/// <summary>The gateway as an <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>.</summary>
public static class GatewayEmbeddingGeneratorExtensions
{
    /// <summary>An embedding generator over the gateway, for <paramref name="model"/> (a model group or alias) unless <see cref="EmbeddingGenerationOptions.ModelId"/> says otherwise.</summary>
    public static IEmbeddingGenerator<string, Embedding<float>> AsEmbeddingGenerator(this IGatewayQueue gateway, string model) => new GatewayEmbeddingGenerator(gateway, model);

    /// <summary>
    /// Registers an <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/> of strings over the gateway for <paramref name="model"/>
    /// (keyed by <paramref name="serviceKey"/> when given).
    /// </summary>
    public static TBuilder AddEmbeddingGenerator<TBuilder>(this TBuilder builder, string model, object? serviceKey = null)
        where TBuilder : Hosting.IGatewayBuilder
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        static GatewayEmbeddingGenerator Create(IServiceProvider sp, string model) =>
            new(Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<IGatewayQueue>(sp), model);
        if (serviceKey is null)
        {
            Microsoft.Extensions.DependencyInjection.ServiceCollectionServiceExtensions.AddSingleton<IEmbeddingGenerator<string, Embedding<float>>>(builder.Services, sp => Create(sp, model));
        }
        else
        {
            Microsoft.Extensions.DependencyInjection.ServiceCollectionServiceExtensions.AddKeyedSingleton<IEmbeddingGenerator<string, Embedding<float>>>(builder.Services, serviceKey, (sp, _) => Create(sp, model));
        }

        return builder;
    }
}
