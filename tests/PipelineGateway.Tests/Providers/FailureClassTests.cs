using FluentAssertions;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Anthropic;
using PipelineGateway.Providers.Http;

namespace PipelineGateway.Tests.Providers;

/// <summary>The one failure-class table every adapter uses.</summary>
public sealed class FailureClassTests
{
    [Theory]
    [InlineData(400, AttemptOutcome.NonRetryableError)]
    [InlineData(401, AttemptOutcome.DeploymentUnavailable)]
    [InlineData(403, AttemptOutcome.DeploymentUnavailable)]
    [InlineData(404, AttemptOutcome.DeploymentUnavailable)]
    [InlineData(422, AttemptOutcome.NonRetryableError)]
    [InlineData(408, AttemptOutcome.Timeout)]
    [InlineData(429, AttemptOutcome.RateLimited)]
    [InlineData(500, AttemptOutcome.RetryableError)]
    [InlineData(502, AttemptOutcome.RetryableError)]
    [InlineData(503, AttemptOutcome.RetryableError)]
    [InlineData(504, AttemptOutcome.RetryableError)]
    [InlineData(529, AttemptOutcome.RetryableError)]
    public void Status_codes_map_to_failure_classes(int status, AttemptOutcome outcome) =>
        ProviderException.Classify(status).Should().Be(outcome);

    [Theory]
    [InlineData("overloaded_error", AttemptOutcome.RetryableError)]
    [InlineData("rate_limit_error", AttemptOutcome.RateLimited)]
    [InlineData("api_error", AttemptOutcome.RetryableError)]
    [InlineData("invalid_request_error", AttemptOutcome.NonRetryableError)]
    [InlineData("authentication_error", AttemptOutcome.DeploymentUnavailable)]
    public void Anthropic_error_types_map_to_failure_classes(string type, AttemptOutcome outcome) =>
        AnthropicTranslator.Classify(type, 500).Should().Be(outcome);

    [Theory]
    [InlineData("1s", 1000)]
    [InlineData("6m0s", 360_000)]
    [InlineData("20ms", 20)]
    [InlineData("1h2m3.5s", 3_723_500)]
    [InlineData("0.5s", 500)]
    [InlineData("1m30.25s", 90_250)]
    public void OpenAI_reset_durations_parse(string text, double ms) =>
        UpstreamHeaders.Duration(text).Should().Be(TimeSpan.FromMilliseconds(ms));

    [Fact]
    public void Secrets_are_redacted_from_upstream_messages()
    {
        SecretRedactor.Redact("Incorrect API key provided: sk-proj-abc***wxyz. Check it.", null).Should().NotContain("abc").And.NotContain("wxyz");
        SecretRedactor.Redact("token my-secret-value rejected", "my-secret-value").Should().Be("token [redacted] rejected");
    }

    [Theory]
    [InlineData("")]
    [InlineData("soon")]
    [InlineData("15")]
    public void Reset_durations_without_a_unit_are_not_durations(string text) =>
        UpstreamHeaders.Duration(text).Should().BeNull();
}
