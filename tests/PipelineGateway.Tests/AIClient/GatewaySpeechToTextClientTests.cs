#pragma warning disable MEAI001 // ISpeechToTextClient is Microsoft.Extensions.AI's experimental abstraction
using System.Text.Json;
using FluentAssertions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Hosting;
using PipelineGateway.Hosting;
using PipelineGateway.Providers;
using PipelineGateway.Providers.Simulated;

namespace PipelineGateway.Tests.AIClient;

/// <summary>
/// The gateway as a Microsoft.Extensions.AI speech-to-text client: each call one transcription through the queue (priced
/// by the minute of audio, counted), a translation asked when the text's language is English and the speech's another.
/// </summary>
public sealed class GatewaySpeechToTextClientTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>About two seconds of silent WAV, as the speech simulator makes it.</summary>
    private static readonly byte[] Wav = SimulatedSpeech.Audio(Speech.ToRequest(JsonDocument.Parse("""{"model":"m","input":"one two three four five","voice":"alloy","response_format":"wav"}""").RootElement).Operation!).List.ToArray();

    private static IHost Host()
    {
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Services.AddPipelineGateway()
            .AddSimulatedProvider("sim", o => { o.LatencyMs = 0; o.JitterMs = 0; o.FailureRate = 0; })
            .AddModel("whisper", m => m.Deploy("sim", "whisper-1"));
        return builder.Build();
    }

    [Fact]
    public async Task An_application_transcribes_through_the_gateway_and_gets_the_cost_of_the_minutes()
    {
        using var host = Host();
        await host.StartAsync(Ct);
        var client = ((IGatewayQueue)host.Services.GetService(typeof(IGatewayQueue))!).AsSpeechToTextClient("whisper");

        var response = await client.GetTextAsync(new MemoryStream(Wav), new SpeechToTextOptions { SpeechLanguage = "en" }, Ct);

        response.Text.Should().NotBeNullOrWhiteSpace();
        response.ModelId.Should().Be("whisper-1");
        response.AdditionalProperties!["gateway.cost_usd"].Should().Be(2m / 60m * 0.006m, "two seconds at whisper-1's $0.006 a minute");
        var translated = await client.GetTextAsync(new MemoryStream(Wav), new SpeechToTextOptions { SpeechLanguage = "de", TextLanguage = "en" }, Ct);
        translated.Text.Should().Be(response.Text, "the simulator's words are the audio's, whatever the task");
        var updates = new List<SpeechToTextResponseUpdate>();
        await foreach (var update in client.GetStreamingTextAsync(new MemoryStream(Wav), cancellationToken: Ct))
        {
            updates.Add(update);
        }

        string.Concat(updates.Select(u => u.Text)).Should().Be(response.Text);
        client.GetService(typeof(SpeechToTextClientMetadata)).Should().BeOfType<SpeechToTextClientMetadata>().Which.DefaultModelId.Should().Be("whisper");
    }

    [Fact]
    public async Task Bad_audio_or_model_is_a_typed_exception()
    {
        using var host = Host();
        await host.StartAsync(Ct);
        var client = ((IGatewayQueue)host.Services.GetService(typeof(IGatewayQueue))!).AsSpeechToTextClient("whisper");

        await FluentActions.Awaiting(() => client.GetTextAsync(new MemoryStream([]), cancellationToken: Ct)).Should().ThrowAsync<InvalidRequestException>().Where(e => e.Param == "file");
        await FluentActions.Awaiting(() => client.GetTextAsync(new MemoryStream(new byte[Transcriptions.MaxFileBytes + 1]), cancellationToken: Ct)).Should().ThrowAsync<InvalidRequestException>().Where(e => e.Param == "file");
        await FluentActions.Awaiting(() => client.GetTextAsync(new MemoryStream(Wav), new SpeechToTextOptions { ModelId = "nope" }, Ct)).Should().ThrowAsync<GatewayException>();
    }
}
