using System.ComponentModel.DataAnnotations;
using Microsoft.Extensions.Options;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Http;
using PipelineGateway.Routing;

namespace PipelineGateway.Hosting;

/// <summary>
/// Validates the whole configuration at start: data annotations on every nested object, then the rules
/// across fields. Each message names the setting (as a configuration path) and what is allowed.
/// </summary>
internal sealed class GatewayOptionsValidator(
    IEnumerable<IProviderFactory> factories,
    IEnumerable<IRoutingStrategy> strategies,
    IEnumerable<ILlmProvider> customProviders) : IValidateOptions<GatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        var errors = new List<string>(options.UnknownSettings);
        const string root = GatewayOptions.SectionName;
        Annotations(options.Pipeline, $"{root}:Pipeline", errors);
        Annotations(options.Cache, $"{root}:Cache", errors);

        var p = options.Pipeline;
        Positive(p.DefaultTimeout, $"{root}:Pipeline:DefaultTimeout", errors);
        Positive(p.DrainTimeout, $"{root}:Pipeline:DrainTimeout", errors);
        Positive(p.RetryBaseDelay, $"{root}:Pipeline:RetryBaseDelay", errors);
        Positive(p.QueueFullRetryAfter, $"{root}:Pipeline:QueueFullRetryAfter", errors);
        Positive(p.MaxQueueWait, $"{root}:Pipeline:MaxQueueWait", errors);
        Annotations(options.Fairness, $"{root}:Fairness", errors);
        foreach (var (key, weight) in options.Fairness.Weights)
        {
            if (!(weight > 0 && weight <= 1_000_000))
            {
                errors.Add($"{root}:Fairness:Weights:{key} must be a number above 0 and at most 1000000; got {weight}.");
            }
        }
        if (p.RetryMaxDelay < p.RetryBaseDelay)
        {
            errors.Add($"{root}:Pipeline:RetryMaxDelay must be at least RetryBaseDelay ({p.RetryBaseDelay}); got {p.RetryMaxDelay}.");
        }

        Positive(options.Cache.DefaultTtl, $"{root}:Cache:DefaultTtl", errors);

        var types = factories.Select(f => f.Type).Append(ProviderTypes.Custom).ToHashSet(StringComparer.OrdinalIgnoreCase);
        var custom = customProviders.Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        var providers = new HashSet<string>(custom, StringComparer.Ordinal);
        for (var i = 0; i < options.Providers.Count; i++)
        {
            var prov = options.Providers[i];
            var path = $"{root}:Providers:{i}";
            Annotations(prov, path, errors);
            if (prov.Simulated is not null)
            {
                Annotations(prov.Simulated, $"{path}:Simulated", errors);
            }

            if (!types.Contains(prov.Type))
            {
                errors.Add($"{path}:Type '{prov.Type}' is unknown; allowed: {string.Join(", ", types.Order())}.");
            }
            else if (string.Equals(prov.Type, ProviderTypes.Custom, StringComparison.OrdinalIgnoreCase) && !custom.Contains(prov.Name))
            {
                errors.Add($"{path}: provider '{prov.Name}' has Type Custom but no ILlmProvider with that name is registered.");
            }

            if (ApiKeys.Required(prov.Type))
            {
                if (string.IsNullOrWhiteSpace(prov.ApiKeyEnvironmentVariable))
                {
                    errors.Add($"{path}:ApiKeyEnvironmentVariable must name the environment variable holding the {prov.Type} API key (for example OPENAI_API_KEY).");
                }
                else if (string.IsNullOrEmpty(ApiKeys.Read(prov)))
                {
                    errors.Add($"{path}:ApiKeyEnvironmentVariable names '{prov.ApiKeyEnvironmentVariable}', which is not set in the environment.");
                }
            }

            if (prov.Type is ProviderTypes.OpenAICompatible or ProviderTypes.AzureOpenAI && string.IsNullOrWhiteSpace(prov.BaseUrl))
            {
                errors.Add($"{path}:BaseUrl is required for a {prov.Type} provider.");
            }

            if (prov.BaseUrl is { Length: > 0 } url && (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https")))
            {
                errors.Add($"{path}:BaseUrl '{url}' must be an absolute http or https URL.");
            }

            Positive(prov.Timeout, $"{path}:Timeout", errors);
            Positive(prov.StreamIdleTimeout, $"{path}:StreamIdleTimeout", errors);

            if (!string.IsNullOrEmpty(prov.Name) && !providers.Add(prov.Name) && !custom.Contains(prov.Name))
            {
                errors.Add($"{path}:Name '{prov.Name}' is used by more than one provider.");
            }
        }

        if (options.Models.Count == 0)
        {
            errors.Add($"{root}:Models must define at least one model group.");
        }

        var strategyNames = strategies.Select(s => s.Name).ToHashSet(StringComparer.OrdinalIgnoreCase);
        var modelNames = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        for (var i = 0; i < options.Models.Count; i++)
        {
            var group = options.Models[i];
            var path = $"{root}:Models:{i}";
            Annotations(group, path, errors);
            foreach (var alias in group.Aliases.Prepend(group.Name).Where(n => !string.IsNullOrEmpty(n)))
            {
                if (!modelNames.Add(alias))
                {
                    errors.Add($"{path}: the model name or alias '{alias}' is used more than once.");
                }
            }

            var wildcard = ModelGroupOptions.IsWildcard(group.Name);
            if (group.Name?.IndexOf('*') is >= 0 and var star && star != group.Name.Length - 1)
            {
                errors.Add($"{path}:Name '{group.Name}': a '*' may only end a name (a wildcard group, 'openai/*').");
            }

            if (wildcard && group.Aliases.Count > 0)
            {
                errors.Add($"{path}:Aliases: a wildcard group ('{group.Name}') has no aliases — the names it takes are its own.");
            }

            if (group.Aliases.Find(a => a.Contains('*', StringComparison.Ordinal)) is { } starred)
            {
                errors.Add($"{path}:Aliases: '{starred}' has a '*'; only a group's name can be a wildcard.");
            }

            if (!wildcard && group.ListUpstreamModels)
            {
                errors.Add($"{path}:ListUpstreamModels lists the names a wildcard group takes; '{group.Name}' is not one (its name does not end in '*').");
            }

            if (!wildcard && group.MaxModels is not null)
            {
                errors.Add($"{path}:MaxModels bounds the names a wildcard group takes; '{group.Name}' is not one (its name does not end in '*').");
            }

            if (!strategyNames.Contains(group.Strategy))
            {
                errors.Add($"{path}:Strategy '{group.Strategy}' is unknown; allowed: {string.Join(", ", strategyNames.Order())}.");
            }

            if (group.Deployments.Count == 0)
            {
                errors.Add($"{path}:Deployments must list at least one deployment for model '{group.Name}'.");
            }

            for (var j = 0; j < group.Deployments.Count; j++)
            {
                var d = group.Deployments[j];
                Annotations(d, $"{path}:Deployments:{j}", errors);
                if (d.Model is { } upstream && upstream.Count(c => c == '*') is var stars and > 0 && (!wildcard || stars > 1))
                {
                    errors.Add($"{path}:Deployments:{j}:Model '{upstream}': a '*' stands for what a caller's name has in the place of a wildcard group's '*' — one, and only in a wildcard group.");
                }

                if (!string.IsNullOrEmpty(d.Provider) && !providers.Contains(d.Provider))
                {
                    errors.Add($"{path}:Deployments:{j}:Provider '{d.Provider}' is not a configured provider; {(providers.Count == 0 ? "no providers are configured (Gateway:Providers)" : "configured: " + string.Join(", ", providers.Order()))}.");
                }
            }
        }

        var wildcardPrefixes = options.Models.Where(g => ModelGroupOptions.IsWildcard(g.Name)).Select(g => g.Name[..^1]).ToList();
        for (var i = 0; i < options.Models.Count; i++)
        {
            var group = options.Models[i];
            foreach (var (list, setting) in new[] { (group.Fallbacks, "Fallbacks"), (group.ContextWindowFallbacks, "ContextWindowFallbacks") })
            {
                foreach (var target in list)
                {
                    if (ModelGroupOptions.IsWildcard(target))
                    {
                        errors.Add($"{root}:Models:{i}:{setting} names the wildcard '{target}'; name a model (one a wildcard takes is fine: 'openai/gpt-4o-mini').");
                    }
                    else if (!modelNames.Contains(target) && !wildcardPrefixes.Exists(p => target.Length > p.Length && target.StartsWith(p, StringComparison.OrdinalIgnoreCase)))
                    {
                        errors.Add($"{root}:Models:{i}:{setting} names '{target}', which is not a model group or alias.");
                    }
                    else if (string.Equals(target, group.Name, StringComparison.OrdinalIgnoreCase) || group.Aliases.Contains(target, StringComparer.OrdinalIgnoreCase))
                    {
                        errors.Add($"{root}:Models:{i}:{setting} names the group itself ('{target}').");
                    }
                }
            }

            if (group.Hedging is { } hedging && hedging.Delay <= TimeSpan.Zero)
            {
                errors.Add($"{root}:Models:{i}:Hedging:Delay must be a positive duration; got {hedging.Delay}.");
            }
        }

        for (var i = 0; i < options.Budgets.Count; i++)
        {
            var budget = options.Budgets[i];
            Annotations(budget, $"{root}:Budgets:{i}", errors);
            if (budget.User is not null && budget.Scope != Cost.BudgetScope.User)
            {
                errors.Add($"{root}:Budgets:{i}:User names an end user, which only a budget with Scope User is for; got Scope {budget.Scope}.");
            }

            if (budget.Key is not null && budget.Scope == Cost.BudgetScope.Global)
            {
                errors.Add($"{root}:Budgets:{i}:Key names a key, which a Global budget (all traffic) cannot be for: use Scope Key.");
            }
        }

        var h = options.Health;
        Annotations(h, $"{root}:Health", errors);
        Positive(h.Window, $"{root}:Health:Window", errors);
        Positive(h.Cooldown, $"{root}:Health:Cooldown", errors);
        Positive(h.RateLimitCooldown, $"{root}:Health:RateLimitCooldown", errors);
        Positive(h.RejectedCooldown, $"{root}:Health:RejectedCooldown", errors);
        Positive(h.LatencyProbeInterval, $"{root}:Health:LatencyProbeInterval", errors);
        if (h.MaxCooldown < h.Cooldown)
        {
            errors.Add($"{root}:Health:MaxCooldown must be at least Cooldown ({h.Cooldown}); got {h.MaxCooldown}.");
        }

        Annotations(options.Admission, $"{root}:Admission", errors);
        Positive(options.Admission.MaxWait, $"{root}:Admission:MaxWait", errors);
        for (var i = 0; i < options.Admission.RateLimits.Count; i++)
        {
            var rule = options.Admission.RateLimits[i];
            var path = $"{root}:Admission:RateLimits:{i}";
            Annotations(rule, path, errors);
            Positive(rule.Window, $"{path}:Window", errors);
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    private static void Positive(TimeSpan value, string path, List<string> errors)
    {
        if (value <= TimeSpan.Zero)
        {
            errors.Add($"{path} must be a positive duration (for example 00:00:30); got {value}.");
        }
    }

    private static void Annotations(object target, string path, List<string> errors)
    {
        var results = new List<ValidationResult>();
        if (!Validator.TryValidateObject(target, new ValidationContext(target), results, validateAllProperties: true))
        {
            foreach (var r in results)
            {
                var member = r.MemberNames.FirstOrDefault();
                errors.Add(member is null ? $"{path}: {r.ErrorMessage}" : $"{path}:{member}: {r.ErrorMessage}");
            }
        }
    }
}
