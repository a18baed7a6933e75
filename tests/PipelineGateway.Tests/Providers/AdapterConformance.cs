using PipelineGateway.Hosting;

namespace PipelineGateway.Tests.Providers;

public sealed class OpenAIAdapterTests : ProviderConformanceTests
{
    protected override ProviderOptions Options(Uri simulator) => new() { Type = ProviderTypes.OpenAI, BaseUrl = new Uri(simulator, "v1").ToString() };
}

public sealed class OpenAICompatibleAdapterTests : ProviderConformanceTests
{
    protected override ProviderOptions Options(Uri simulator) => new() { Type = ProviderTypes.OpenAICompatible, BaseUrl = new Uri(simulator, "v1/").ToString() };
}

public sealed class AzureOpenAIAdapterTests : ProviderConformanceTests
{
    protected override ProviderOptions Options(Uri simulator) => new() { Type = ProviderTypes.AzureOpenAI, BaseUrl = simulator.ToString() };
}

public sealed class AnthropicAdapterTests : ProviderConformanceTests
{
    protected override ProviderOptions Options(Uri simulator) => new() { Type = ProviderTypes.Anthropic, BaseUrl = new Uri(simulator, "v1").ToString() };
}
