using PipelineGateway.Hosting;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Providers;

/// <summary>Creates providers of one <see cref="ProviderOptions.Type"/> from configuration.</summary>
public interface IProviderFactory
{
    string Type { get; }

    ILlmProvider Create(ProviderOptions options, IServiceProvider services);
}

internal sealed class SimulatedProviderFactory(TimeProvider time) : IProviderFactory
{
    public string Type => ProviderTypes.Simulated;

    public ILlmProvider Create(ProviderOptions options, IServiceProvider services) =>
        new SimulatedProvider(options.Name, options.Simulated ?? new SimulatedProviderOptions(), time);
}
