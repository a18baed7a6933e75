using System.Diagnostics;
using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Cli;

/// <summary>pgw as a .NET tool: packed, installed into a temporary tool path, run.</summary>
public sealed class DotnetToolTests
{
    private static async Task<(int Code, string Out, string Err)> RunAsync(string file, string workingDirectory, params string[] args)
    {
        var info = new ProcessStartInfo(file) { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["DOTNET_NOLOGO"] = "1";
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, await stdout, await stderr);
    }

    [Fact]
    public async Task The_cli_packs_as_a_tool_that_installs_and_runs_version_and_the_demo()
    {
        using var files = new BatchFiles();
        var repo = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(PgwProcess.PgwDll)!, "..", "..", "..", "..", "..")); // src/PipelineGateway.Cli/bin/<config>/net10.0
        var artifacts = Path.Combine(files.Dir, "artifacts");
        var tools = Path.Combine(files.Dir, "tools");

        var pack = await RunAsync("dotnet", repo, "pack", Path.Combine(repo, "src", "PipelineGateway.Cli"), "-c", "Release", "-o", artifacts);
        pack.Code.Should().Be(0, pack.Out + pack.Err);
        Directory.GetFiles(artifacts, "PipelineGateway.Cli.*.nupkg").Should().ContainSingle();

        var install = await RunAsync("dotnet", files.Dir, "tool", "install", "--tool-path", tools, "--add-source", artifacts, "PipelineGateway.Cli");
        install.Code.Should().Be(0, install.Out + install.Err);

        var pgw = Path.Combine(tools, "pgw");
        var version = await RunAsync(pgw, files.Dir, "--version");
        version.Code.Should().Be(0, version.Err);
        version.Out.Should().MatchRegex(@"^\d+\.\d+\.\d+");

        var demo = await RunAsync(pgw, files.Dir, "demo", "--output", Path.Combine(files.Dir, "demo"));
        demo.Code.Should().Be(0, demo.Err);
        demo.Out.Should().Contain("240 lines: 240 answered");
        File.Exists(Path.Combine(files.Dir, "demo", "gateway.db")).Should().BeTrue("the demo keeps its request log in its output folder");
    }
}
