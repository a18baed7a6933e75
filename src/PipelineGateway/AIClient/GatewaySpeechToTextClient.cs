using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PipelineGateway.Providers;

namespace PipelineGateway;

/// <summary>
/// The gateway as a Microsoft.Extensions.AI <see cref="ISpeechToTextClient"/> (an experimental abstraction, MEAI001):
/// every call is one transcription submitted to the gateway's queue — admission, budgets, routing with failover, cost
/// (by the token or the minute of audio) and metrics like any other request (<c>/v1/audio/transcriptions</c> without
/// HTTP). The audio is read whole (at most 25 MB, OpenAI's bound); <see cref="SpeechToTextOptions.ModelId"/> (a model
/// group, else the client's) and <see cref="SpeechToTextOptions.SpeechLanguage"/> are sent; a translation into English is
/// asked when <see cref="SpeechToTextOptions.TextLanguage"/> is English and the speech's language is another. The
/// streaming call yields the whole transcript as one update (the gateway answers transcriptions whole).
/// </summary>
[Experimental("MEAI001")]
public sealed class GatewaySpeechToTextClient : ISpeechToTextClient
{
    private readonly IGatewayQueue _gateway;
    private readonly string _model;

    public GatewaySpeechToTextClient(IGatewayQueue gateway, string model)
    {
        ArgumentNullException.ThrowIfNull(gateway);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        _gateway = gateway;
        _model = model;
    }

    public async Task<SpeechToTextResponse> GetTextAsync(Stream audioSpeechStream, SpeechToTextOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(audioSpeechStream);
        var audio = await ReadAsync(audioSpeechStream, cancellationToken).ConfigureAwait(false);
        var translate = options?.TextLanguage is { } text && text.StartsWith("en", StringComparison.OrdinalIgnoreCase)
            && options.SpeechLanguage is { } speech && !speech.StartsWith("en", StringComparison.OrdinalIgnoreCase);
        List<KeyValuePair<string, string>> fields = [new("model", options?.ModelId ?? _model), new("response_format", "json")];
        if (!translate && options?.SpeechLanguage is { Length: > 0 } language)
        {
            fields.Add(new("language", language));
        }

        var request = Transcriptions.ToRequest(translate ? OperationKind.Translation : OperationKind.Transcription, fields, new Upload(audio, "audio", null));
        var response = await _gateway.SubmitAsync(request, cancellationToken).ConfigureAwait(false);
        using var json = JsonDocument.Parse(response.Operation!.List);
        return new SpeechToTextResponse(json.RootElement.GetProperty("text").GetString())
        {
            ModelId = response.Model.Length > 0 ? response.Model : response.Gateway?.ProviderModel,
            ResponseId = response.Gateway?.RequestId,
            Usage = GatewayChatClient.Usage(response.Usage),
            AdditionalProperties = GatewayChatClient.Info(response.Gateway),
        };
    }

    public async IAsyncEnumerable<SpeechToTextResponseUpdate> GetStreamingTextAsync(Stream audioSpeechStream, SpeechToTextOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var response = await GetTextAsync(audioSpeechStream, options, cancellationToken).ConfigureAwait(false);
        foreach (var update in response.ToSpeechToTextResponseUpdates())
        {
            yield return update;
        }
    }

    /// <summary>The audio, whole: refused past <see cref="Transcriptions.MaxFileBytes"/> (never an unbounded read).</summary>
    private static async Task<byte[]> ReadAsync(Stream audio, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        var chunk = new byte[81_920];
        int read;
        while ((read = await audio.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + read > Transcriptions.MaxFileBytes)
            {
                throw new InvalidRequestException("file", $"The audio must be at most {Transcriptions.MaxFileBytes / (1024 * 1024)} MB.");
            }

            buffer.Write(chunk, 0, read);
        }

        return buffer.ToArray();
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(SpeechToTextClientMetadata) ? new SpeechToTextClientMetadata("pipelinegateway", null, _model)
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(_gateway) ? _gateway
        : null;

    public void Dispose()
    {
        // The queue is the host's, not this client's.
    }
}

/// <summary>The gateway as an <see cref="ISpeechToTextClient"/>.</summary>
[Experimental("MEAI001")]
public static class GatewaySpeechToTextClientExtensions
{
    /// <summary>A speech-to-text client over the gateway, for <paramref name="model"/> (a model group or alias) unless <see cref="SpeechToTextOptions.ModelId"/> says otherwise.</summary>
    public static ISpeechToTextClient AsSpeechToTextClient(this IGatewayQueue gateway, string model) => new GatewaySpeechToTextClient(gateway, model);
}
