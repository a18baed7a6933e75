using Microsoft.Extensions.Time.Testing;
using PipelineGateway.Hosting;

namespace PipelineGateway.Tests.Support;

public static class TestGateway
{
    public static ChatCompletionRequest Request(string model = "m", string text = "Hello!") => new()
    {
        Model = model,
        Messages = [ChatCompletionMessage.User(text)],
    };

    /// <summary>
    /// <paramref name="request"/> naming end user <paramref name="user"/> (per-user budgets and rate limits): as
    /// <c>user</c>, or as OpenAI's newer <c>safety_identifier</c>.
    /// </summary>
    public static ChatCompletionRequest NamingUser(this ChatCompletionRequest request, string? user, bool safetyIdentifier = false)
    {
        if (safetyIdentifier)
        {
            request.AdditionalProperties = new() { ["safety_identifier"] = System.Text.Json.JsonSerializer.SerializeToElement(user) };
        }
        else
        {
            request.User = user;
        }

        return request;
    }

    /// <summary>A builder with the given fake providers, all serving model "m" in the given order.</summary>
    public static GatewayBuilder With(params FakeProvider[] providers) => With(RoutingStrategy.Priority, providers);

    public static GatewayBuilder With(RoutingStrategy strategy, params FakeProvider[] providers)
    {
        var builder = new GatewayBuilder();
        foreach (var p in providers)
        {
            builder.AddProvider(p, workers: 4, queueCapacity: 16);
        }

        return builder.AddModel("m", m =>
        {
            m.Strategy(strategy.ToString());
            foreach (var p in providers)
            {
                m.Deploy(p.Name);
            }
        });
    }

    public static FakeTimeProvider Clock() => new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));
}

public enum RoutingStrategy
{
    RoundRobin,
    Priority,
}
