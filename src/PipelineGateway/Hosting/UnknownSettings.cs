using System.Reflection;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;

namespace PipelineGateway.Hosting;

/// <summary>
/// Settings in the gateway's configuration that nothing reads: the binder skips them silently, so a typo
/// (<c>Timout</c>, <c>RateLimts</c>) would leave the default in force and an <c>ApiKey</c> written into the file would
/// leave the provider without a key (and a secret in plain text beside the configuration). Each is a start-up error
/// naming the setting (never its value) and what is read there. The whole <c>Gateway</c> section is walked along
/// <see cref="GatewayOptions"/>' own shape; the sections other parts read (<c>Server</c>, <c>Redis</c>, <c>Telemetry</c>)
/// are theirs to check.
/// </summary>
internal static partial class UnknownSettings
{
    /// <summary>Sections under <c>Gateway</c> that other packages bind (the HTTP server, Redis, OpenTelemetry).</summary>
    private static readonly string[] ReadElsewhere = ["Server", "Redis", "Telemetry"];

    public static IEnumerable<string> In(IConfiguration gateway, string root)
    {
        var errors = new List<string>();
        foreach (var child in gateway.GetChildren())
        {
            if (!ReadElsewhere.Contains(child.Key, StringComparer.OrdinalIgnoreCase))
            {
                Walk(child, typeof(GatewayOptions), root, errors);
            }
        }

        return errors;
    }

    /// <summary>
    /// The same for a section another package binds itself (<c>Gateway:Server</c>, <c>Gateway:Redis</c>): its settings
    /// walked along <paramref name="type"/>'s shape.
    /// </summary>
    public static IReadOnlyList<string> InSection(IConfigurationSection section, Type type)
    {
        var errors = new List<string>();
        foreach (var child in section.GetChildren())
        {
            Walk(child, type, section.Path, errors);
        }

        return errors;
    }

    /// <summary>Checks <paramref name="section"/> as the property of <paramref name="owner"/> it names, then what it holds.</summary>
    private static void Walk(IConfigurationSection section, Type owner, string parent, List<string> errors)
    {
        var path = $"{parent}:{section.Key}";
        var property = owner.GetProperty(section.Key, BindingFlags.Public | BindingFlags.Instance | BindingFlags.IgnoreCase);
        if (property is null || !(property.SetMethod is { IsPublic: true } || property.PropertyType.IsGenericType))
        {
            errors.Add(SecretShaped().IsMatch(section.Key)
                ? owner.GetProperty("Sha256") is not null
                    ? $"{path} is not read: a gateway key is never kept in plain text. Put the hex SHA-256 of the key in Sha256 (for example: printf %s \"$KEY\" | sha256sum)."
                    : $"{path} is not read: an API key is never taken from a configuration file (it would sit there in plain text). Put it in an environment variable and name that variable in ApiKeyEnvironmentVariable."
                : $"{path} is not a setting the gateway reads (a typo?); the settings read there are {string.Join(", ", Names(owner).Concat(owner == typeof(GatewayOptions) ? ReadElsewhere : []))}.");
            return;
        }

        Contents(section, property.PropertyType, path, errors);
    }

    /// <summary>What a setting of <paramref name="type"/> holds: an options object's settings, a list's or a dictionary's entries.</summary>
    private static void Contents(IConfigurationSection section, Type type, string path, List<string> errors)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        if (type.IsGenericType && (type.GetGenericTypeDefinition() == typeof(List<>) || type.GetGenericTypeDefinition() == typeof(Dictionary<,>)))
        {
            var entry = type.GetGenericArguments()[^1];
            if (IsOptions(entry))
            {
                foreach (var item in section.GetChildren())
                {
                    Contents(item, entry, $"{path}:{item.Key}", errors);
                }
            }

            return;
        }

        if (IsOptions(type))
        {
            foreach (var child in section.GetChildren())
            {
                Walk(child, type, path, errors);
            }
        }
    }

    /// <summary>A class of settings (not a value the binder reads from one string, nor a JSON value).</summary>
    private static bool IsOptions(Type type) =>
        type.IsClass && type != typeof(string) && type != typeof(JsonElement) && type.Namespace?.StartsWith("PipelineGateway", StringComparison.Ordinal) == true;

    private static IEnumerable<string> Names(Type type) =>
        type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.SetMethod is { IsPublic: true } || p.PropertyType.IsGenericType) // lists and dictionaries bind in place
            .Select(p => p.Name)
            .Order(StringComparer.Ordinal);

    [GeneratedRegex(@"^(api[_\-]?key|key|secret|token|password|authorization|bearer)$", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex SecretShaped();
}
