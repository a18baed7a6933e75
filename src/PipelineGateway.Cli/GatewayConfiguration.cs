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
    /// Reload the file when it changes (<c>pgw serve</c>: its keys follow it, GatewayServer). A reload that cannot be
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

            builder.AddJsonFile(Path.GetFullPath(path), optional: false, reloadOnChange: watch);
            source = path;
        }
        else if (FindDefault() is { } found)
        {
            builder.AddJsonFile(found, optional: false, reloadOnChange: watch);
            source = Path.GetRelativePath(Environment.CurrentDirectory, found);
        }
        else
        {
            builder.AddJsonStream(OpenEmbedded("gateway.json"));
            source = "embedded default (simulated providers)";
        }

        builder.AddEnvironmentVariables("PGW_");
        IConfigurationRoot built;
        try
        {
            built = builder.Build(); // a file that cannot be read at start stops it (thrown here)
        }
        catch (IOException ex) when (watch && ex is not FileNotFoundException)
        {
            // The file's watcher could not start (inotify's per-user instances used up, as on a machine running many
            // .NET processes): served unwatched rather than not at all — SIGHUP still reads the file again.
            var (unwatched, read) = Load(path, watch: false);
            return (unwatched, $"{read}; not watched for changes ({ex.Message.TrimEnd('.')}): SIGHUP reads it again");
        }

        foreach (var file in builder.Sources.OfType<Microsoft.Extensions.Configuration.Json.JsonConfigurationSource>())
        {
            file.OnLoadException = static failed => failed.Ignore = true; // from now on: reloads only
        }

        return (built, source);
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
