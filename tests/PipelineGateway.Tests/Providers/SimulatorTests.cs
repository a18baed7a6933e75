using System.Net;
using System.Text.Json;
using FluentAssertions;
using PipelineGateway.Simulator;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// The upstream simulator answers a path it does not serve as the real services do — a 404 whose body is their error
/// shape (OpenAI's "Invalid URL (METHOD /path)", Anthropic's <c>not_found_error</c> under <c>/v1/messages</c>) — not an
/// empty 404, so what a gateway reads from a wrong path is tested against what it would get.
/// </summary>
public sealed class SimulatorTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("GET", "v1/nothing", "/v1/nothing")]
    [InlineData("POST", "v1/chat/completion", "/v1/chat/completion")]
    [InlineData("POST", "v1/report.json", "/v1/report.json")]
    [InlineData("GET", "", "/")]
    public async Task An_unknown_path_is_OpenAIs_404_naming_it(string method, string path, string named)
    {
        await using var simulator = await SimulatorServer.StartAsync(new SimulatorOptions(), cancellationToken: Ct);
        using var http = new HttpClient { BaseAddress = simulator.BaseAddress };

        using var response = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.NotFound);
        response.Content.Headers.ContentType!.MediaType.Should().Be("application/json");
        var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("error");
        error.GetProperty("message").GetString().Should().Be($"Invalid URL ({method} {named})");
        error.GetProperty("type").GetString().Should().Be("invalid_request_error");
    }

    [Fact]
    public async Task An_unknown_path_under_messages_is_Anthropics_404()
    {
        await using var simulator = await SimulatorServer.StartAsync(new SimulatorOptions(), cancellationToken: Ct);
        using var http = new HttpClient { BaseAddress = simulator.BaseAddress };

        using var response = await http.PostAsync("v1/messages/nothing", new StringContent("{}"), Ct);

        response.StatusCode.Should().Be(HttpStatusCode.NotFound);
        var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement;
        body.GetProperty("type").GetString().Should().Be("error");
        body.GetProperty("error").GetProperty("type").GetString().Should().Be("not_found_error");
    }
}
