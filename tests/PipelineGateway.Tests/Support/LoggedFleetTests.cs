namespace PipelineGateway.Tests.Support;

/// <summary>
/// A test class whose tests each get a fresh <see cref="SimulatorFleet"/> with the SQLite request log (in a directory of
/// their own, removed after) and an HTTP client to its gateway — the operation routes' tests.
/// </summary>
public abstract class LoggedFleetTests : IAsyncLifetime
{
    private readonly BatchFiles _files = new();

    internal SimulatorFleet Fleet { get; private set; } = null!;

    protected HttpClient Http { get; private set; } = null!;

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Starts the fleet, its request log at <paramref name="database"/> (<see cref="SimulatorFleet.StartLoggedAsync"/>).</summary>
    internal abstract Task<SimulatorFleet> StartAsync(string database);

    public async ValueTask InitializeAsync()
    {
        Fleet = await StartAsync(Path.Combine(_files.Dir, "gateway.db"));
        Http = new HttpClient { BaseAddress = Fleet.Base };
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Fleet.DisposeAsync();
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        _files.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>A response header's one value, or empty.</summary>
    protected static string Header(HttpResponseMessage response, string name) => response.Headers.TryGetValues(name, out var values) ? values.Single() : string.Empty;
}
