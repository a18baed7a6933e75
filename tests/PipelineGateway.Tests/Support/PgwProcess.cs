using System.Diagnostics;
using System.Reflection;
using System.Text;

namespace PipelineGateway.Tests.Support;

/// <summary>Runs the real <c>pgw</c> executable (built beside the tests) as a child process.</summary>
public sealed class PgwProcess : IDisposable
{
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();

    private PgwProcess(Process process) => Process = process;

    public Process Process { get; }

    public string Stdout
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToString();
            }
        }
    }

    public string Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    public static string PgwDll
    {
        get
        {
            var configuration = typeof(PgwProcess).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Debug";
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "PipelineGateway.sln")))
                {
                    var dll = Path.Combine(dir.FullName, "src", "PipelineGateway.Cli", "bin", configuration, "net10.0", "pgw.dll");
                    return File.Exists(dll) ? dll : throw new FileNotFoundException($"pgw was not built at {dll}.");
                }
            }

            throw new DirectoryNotFoundException("The repository root (PipelineGateway.sln) was not found above the test folder.");
        }
    }

    public static PgwProcess Start(string workingDirectory, params string[] args) => Start(workingDirectory, fileSizeLimitKb: null, args);

    /// <summary>Starts pgw with <paramref name="environment"/> added to its environment (a null value removes the variable).</summary>
    public static PgwProcess Start(string workingDirectory, IReadOnlyDictionary<string, string?> environment, params string[] args) =>
        Start(workingDirectory, fileSizeLimitKb: null, environment, args);

    /// <summary>
    /// Starts pgw with a limit on the size of any file it writes (RLIMIT_FSIZE, <c>ulimit -f</c>), SIGXFSZ ignored: a write
    /// past it fails the way a full disk does, for this process only.
    /// </summary>
    public static PgwProcess Start(string workingDirectory, int? fileSizeLimitKb, params string[] args) => Start(workingDirectory, fileSizeLimitKb, environment: null, args);

    private static PgwProcess Start(string workingDirectory, int? fileSizeLimitKb, IReadOnlyDictionary<string, string?>? environment, string[] args)
    {
        var info = new ProcessStartInfo(fileSizeLimitKb is null ? (DefaultSignals.Value ? "env" : "dotnet") : "bash")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (fileSizeLimitKb is { } kb)
        {
            info.ArgumentList.Add("-c");
            info.ArgumentList.Add($"trap '' XFSZ; ulimit -f {kb}; exec dotnet \"$@\"");
            info.Environment["DOTNET_EnableWriteXorExecute"] = "0"; // W^X maps code through a memory file the limit would cap
            info.ArgumentList.Add("pgw");
        }
        else if (DefaultSignals.Value)
        {
            // A test host started with SIGINT ignored (a background job of a non-interactive shell: CI scripts run that
            // way) passes the ignoring on, and .NET keeps it, so Ctrl+C's signal would never reach pgw: reset it.
            info.ArgumentList.Add("--default-signal=INT");
            info.ArgumentList.Add("dotnet");
        }

        info.ArgumentList.Add(PgwDll);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null)
            {
                info.Environment.Remove(name);
            }
            else
            {
                info.Environment[name] = value;
            }
        }

        var process = new Process { StartInfo = info };
        var pgw = new PgwProcess(process);
        process.OutputDataReceived += (_, e) => Append(pgw._stdout, e.Data);
        process.ErrorDataReceived += (_, e) => Append(pgw._stderr, e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return pgw;
    }

    /// <summary>True where <c>env --default-signal</c> exists (GNU coreutils 8.31 and later).</summary>
    private static readonly Lazy<bool> DefaultSignals = new(() =>
    {
        try
        {
            using var probe = System.Diagnostics.Process.Start(new ProcessStartInfo("env", ["--default-signal=INT", "true"]) { UseShellExecute = false, RedirectStandardError = true });
            probe!.WaitForExit();
            return probe.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    });

    /// <summary>Sends a signal (TERM, INT…) with the system's kill command.</summary>
    public static void Signal(Process process, string signal)
    {
        using var kill = System.Diagnostics.Process.Start("kill", ["-" + signal, process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }

    private static void Append(StringBuilder sb, string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (sb)
        {
            sb.AppendLine(line);
        }
    }

    /// <summary>Waits for the process to exit (bounded) and returns its exit code.</summary>
    public async Task<int> ExitCodeAsync(int timeoutMs = 120_000)
    {
        using var cts = new CancellationTokenSource(timeoutMs);
        try
        {
            await Process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Process.Kill(entireProcessTree: true);
            throw new TimeoutException($"pgw did not exit in {timeoutMs} ms.\nstdout:\n{Stdout}\nstderr:\n{Stderr}");
        }

        Process.WaitForExit(); // drains the output readers
        return Process.ExitCode;
    }

    public void Dispose()
    {
        if (!Process.HasExited)
        {
            Process.Kill(entireProcessTree: true);
            Process.WaitForExit();
        }

        Process.Dispose();
    }
}
