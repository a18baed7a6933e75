using System.Reflection;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;
using PipelineGateway.Providers.Simulated;
using PipelineGateway.Routing;

namespace PipelineGateway.Hosting;

/// <summary>
/// Settings in a provider's, a model group's or a deployment's configuration that nothing reads: the binder skips
/// them silently, so a typo (<c>Timout</c>) would leave the default in force and an <c>ApiKey</c> written into the file
/// would leave the provider without a key (and a secret in plain text beside the configuration). Each is a start-up
/// error naming the setting (never its value) and what is read there.
/// </summary>
internal static partial class UnknownSettings
{
    public static IEnumerable<string> In(IConfiguration gateway, string root)
    {
        foreach (var provider in gateway.GetSection("Providers").GetChildren())
        {
            foreach (var message in Check(provider, typeof(ProviderOptions), "a provider", $"{root}:Providers"))
            {
                yield return message;
            }

            var simulated = provider.GetSection(nameof(ProviderOptions.Simulated));
            foreach (var message in Check(simulated, typeof(SimulatedProviderOptions), "a simulated provider's", $"{root}:Providers:{provider.Key}"))
            {
                yield return message;
            }
        }

        foreach (var group in gateway.GetSection("Models").GetChildren())
        {
            foreach (var message in Check(group, typeof(ModelGroupOptions), "a model group", $"{root}:Models"))
            {
                yield return message;
            }

            foreach (var deployment in group.GetSection(nameof(ModelGroupOptions.Deployments)).GetChildren())
            {
                foreach (var message in Check(deployment, typeof(DeploymentOptions), "a deployment", $"{root}:Models:{group.Key}:Deployments"))
                {
                    yield return message;
                }
            }
        }
    }

    private static IEnumerable<string> Check(IConfigurationSection section, Type type, string what, string parent)
    {
        var known = Names(type);
        foreach (var child in section.GetChildren())
        {
            if (known.Contains(child.Key))
            {
                continue;
            }

            var path = $"{parent}:{section.Key}:{child.Key}";
            yield return SecretShaped().IsMatch(child.Key)
                ? $"{path} is not read: an API key is never taken from a configuration file (it would sit there in plain text). Put it in an environment variable and name that variable in ApiKeyEnvironmentVariable."
                : $"{path} is not {what} setting (a typo?); the settings read there are {string.Join(", ", known.Order(StringComparer.Ordinal))}.";
        }
    }

    private static HashSet<string> Names(Type type) =>
        type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.SetMethod is { IsPublic: true } || p.PropertyType.IsGenericType) // lists and dictionaries bind in place
            .Select(p => p.Name)
            .ToHashSet(StringComparer.OrdinalIgnoreCase);

    [GeneratedRegex(@"^(api[_\-]?key|key|secret|token|password|authorization|bearer)$", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex SecretShaped();
}
