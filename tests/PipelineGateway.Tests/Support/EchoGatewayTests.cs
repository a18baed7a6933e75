namespace PipelineGateway.Tests.Support;

/// <summary>
/// A test class with its own scripted upstream — a real Kestrel that is not our simulator, answering every request
/// with <paramref name="fault"/> — and a gateway over it (<see cref="ScriptedUpstream.EchoSettings"/>, with what
/// <see cref="Configure"/> adds), started before the class's tests and stopped after them.
/// </summary>
public abstract class EchoGatewayTests(string fault) : IAsyncLifetime
{
    protected ScriptedUpstream Upstream { get; private set; } = null!;

    internal GatewayApp Gateway { get; private set; } = null!;

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        Upstream = await ScriptedUpstream.StartAsync(Ct);
        var settings = Upstream.EchoSettings(fault);
        Configure(settings);
        Gateway = await GatewayApp.StartAsync(settings, Ct);
    }

    /// <summary>The test class's own settings, on top of the echo provider's.</summary>
    protected virtual void Configure(Dictionary<string, string?> settings)
    {
    }

    public async ValueTask DisposeAsync()
    {
        await Gateway.DisposeAsync();
        await Upstream.DisposeAsync();
        GC.SuppressFinalize(this);
    }
}
