using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PipelineGateway.Providers;
using PipelineGateway.Routing;

namespace PipelineGateway.Server;

/// <summary>
/// <c>GET /v1/models</c> and <c>GET /v1/models/{id}</c>: the model groups (and aliases, by id) the caller's key may use,
/// in OpenAI's shape — or in Anthropic's when the request carries <c>anthropic-version</c>, which every Anthropic SDK
/// sends and no OpenAI one does (the two APIs share the path; an Anthropic client reads <c>type</c>,
/// <c>display_name</c>, <c>created_at</c>, <c>has_more</c>).
/// </summary>
internal static class ModelsEndpoint
{
    public static async Task ListAsync(HttpContext ctx, ModelCatalog catalog, GatewayKeys keys, UpstreamModelList upstream)
    {
        var key = ctx.Features.Get<GatewayCaller>()?.Key;
        var anthropic = IsAnthropic(ctx);
        // The configured groups, then the names wildcards took that an upstream has answered (a name a caller made up
        // is not listed; a wildcard's own name is not a model) and those their providers list, for a wildcard that asks it.
        var made = catalog.Wildcards.SelectMany(static w => w.Made).Where(static g => g.Established).Select(static g => g.Name).ToList();
        foreach (var wildcard in catalog.Wildcards)
        {
            if (wildcard.ListsUpstreamModels)
            {
                made.AddRange(await upstream.NamesAsync(wildcard, ctx.RequestAborted));
            }
        }

        var configured = catalog.Groups.Select(static g => g.Name).ToHashSet(StringComparer.OrdinalIgnoreCase);
        var ids = catalog.Groups.Select(static g => g.Name)
            .Concat(made.Where(configured.Add).Order(StringComparer.Ordinal))
            .Where(name => keys.MayUse(key, name)).ToList();
        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder });
        w.WriteStartObject();
        if (!anthropic)
        {
            w.WriteString("object", "list");
        }

        w.WriteStartArray("data");
        foreach (var id in ids)
        {
            Write(w, id, anthropic);
        }

        w.WriteEndArray();
        if (anthropic)
        {
            w.WriteBoolean("has_more", false);
            WriteId(w, "first_id", ids.Count > 0 ? ids[0] : null);
            WriteId(w, "last_id", ids.Count > 0 ? ids[^1] : null);
        }

        w.WriteEndObject();
    }

    /// <summary>
    /// One model by its id — a group's name or an alias, or a name a wildcard group takes — or a 404 in the caller's API's
    /// shape (also for a model the key may not use). Makes no group: whether an upstream has a wildcard's name is known
    /// when it is called.
    /// </summary>
    public static async Task RetrieveAsync(HttpContext ctx, ModelCatalog catalog, GatewayKeys keys)
    {
        // Kestrel decodes a path but for "%2F": the SDKs encode a slash in an id ("openai/gpt-4o" as "openai%2Fgpt-4o").
        var id = (ctx.Request.RouteValues["id"] as string ?? string.Empty).Replace("%2F", "/", StringComparison.OrdinalIgnoreCase);
        var key = ctx.Features.Get<GatewayCaller>()?.Key;
        var anthropic = IsAnthropic(ctx);
        if (!catalog.Knows(id) || !keys.MayUse(key, id))
        {
            var message = $"The model '{ProviderException.Quoted(id)}' does not exist or this key may not use it.";
            await (anthropic
                ? RouteErrors.WriteAnthropicAsync(ctx, 404, "not_found_error", message)
                : RouteErrors.WriteAsync(ctx, 404, "invalid_request_error", "model_not_found", message, "model"));
            return;
        }

        ctx.Response.ContentType = "application/json";
        await using var w = new Utf8JsonWriter(ctx.Response.Body, new JsonWriterOptions { Encoder = Serialization.WireJson.Encoder });
        Write(w, id, anthropic);
    }

    private static bool IsAnthropic(HttpContext ctx) => ctx.Request.Headers.ContainsKey("anthropic-version");

    private static void Write(Utf8JsonWriter w, string id, bool anthropic)
    {
        w.WriteStartObject();
        if (anthropic)
        {
            w.WriteString("type", "model");
            w.WriteString("id", id);
            w.WriteString("display_name", id);
            w.WriteString("created_at", "1970-01-01T00:00:00Z"); // a gateway's model group has no release date
        }
        else
        {
            w.WriteString("id", id);
            w.WriteString("object", "model");
            w.WriteNumber("created", 0);
            w.WriteString("owned_by", "pipelinegateway");
        }

        w.WriteEndObject();
    }

    private static void WriteId(Utf8JsonWriter w, string name, string? id)
    {
        if (id is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, id);
        }
    }
}
