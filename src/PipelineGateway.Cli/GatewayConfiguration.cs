using System.Reflection;

namespace PipelineGateway.Cli;

/// <summary>
/// Where the CLI's configuration comes from: <c>--config FILE</c>, else <c>config/gateway.json</c> in the
/// working directory, else the embedded default (simulated providers only, so it runs with no keys).
/// Environment variables (<c>PGW_Gateway__Pipeline__MaxInFlight=...</c>) override any of them.
/// </summary>
internal static class GatewayConfiguration
{
    public const string DefaultPath = "config/gateway.json";

    /// <param name="watch">
    /// Reload the file when it changes (<c>pgw serve</c>: its keys follow it, GatewayServer; polled, see <see cref="AddFile"/>). A reload that cannot be
    /// read — a file half written — is ignored rather than thrown on the watcher's thread: it reads as no settings, which
    /// the keys refuse (the running keys are kept).
    /// </param>
    public static (IConfigurationRoot Configuration, string Source) Load(string? path, bool watch = false)
    {
        var builder = new ConfigurationBuilder();
        string source;
        if (path is not null)
        {
            if (!File.Exists(path))
            {
                throw new CliException($"The configuration file '{path}' does not exist.");
            }

            AddFile(builder, Path.GetFullPath(path), watch);
            source = path;
        }
        else if (FindDefault() is { } found)
        {
            AddFile(builder, found, watch);
            source = Path.GetRelativePath(Environment.CurrentDirectory, found);
        }
        else
        {
            builder.AddJsonStream(OpenEmbedded("gateway.json"));
            source = "embedded default (simulated providers)";
        }

        builder.AddEnvironmentVariables("PGW_");
        var built = builder.Build(); // a file that cannot be read at start stops it (thrown here)

        foreach (var file in builder.Sources.OfType<Microsoft.Extensions.Configuration.Json.JsonConfigurationSource>())
        {
            file.OnLoadException = static failed => failed.Ignore = true; // from now on: reloads only
        }

        return (built, source);
    }

    /// <summary>
    /// The JSON file, watched by polling its own timestamp (every ~4 s) when <paramref name="watch"/>. Not the default
    /// file watcher: it watches the file's whole directory tree (an inotify watch with subdirectories), so a request log
    /// kept below the configuration's directory (<c>/app/gateway.json</c> beside <c>/app/pgw-data/</c>, or both under
    /// <c>/tmp</c>) woke it for every page SQLite wrote — measured under load: ~0.8% of the gateway's sampled bytes were
    /// the watcher's events (docs/benchmarks.md) — and it needs an inotify instance, which a machine running many .NET
    /// processes can run out of (start-up then failed). SIGHUP reads the file at once.
    /// </summary>
    private static void AddFile(ConfigurationBuilder builder, string fullPath, bool watch)
    {
        if (!watch)
        {
            builder.AddJsonFile(fullPath, optional: false, reloadOnChange: false);
            return;
        }

        builder.AddJsonFile(source =>
        {
            source.FileProvider = new Microsoft.Extensions.FileProviders.PhysicalFileProvider(Path.GetDirectoryName(fullPath)!)
            {
                UsePollingFileWatcher = true,
                UseActivePolling = true,
            };
            source.Path = Path.GetFileName(fullPath);
            source.Optional = false;
            source.ReloadOnChange = true;
        });
    }

    /// <summary>The directory of the configuration file <see cref="Load"/> reads (null: the embedded default).</summary>
    public static string? DirectoryOf(string? path) =>
        path is not null ? Path.GetDirectoryName(Path.GetFullPath(path)) : FindDefault() is { } found ? Path.GetDirectoryName(found) : null;

    /// <summary>
    /// config/gateway.json in the working directory or the nearest parent: <c>dotnet run --project</c> starts
    /// the program in the project's folder, below the repository root where the file lives.
    /// </summary>
    private static string? FindDefault()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, DefaultPath);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    public static Stream OpenEmbedded(string name) =>
        Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
        ?? throw new CliException($"The embedded resource '{name}' is missing from this build.");
}

/// <summary>A user-facing error: printed without a stack trace, exit code 2.</summary>
/// <summary>A failure the user can act on, printed as one line; <see cref="ExitCode"/> 2 for a wrong command line, 1 for the rest.</summary>
internal sealed class CliException(string message, int exitCode = 2) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
