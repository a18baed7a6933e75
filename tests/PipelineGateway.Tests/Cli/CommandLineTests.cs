using FluentAssertions;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Cli;

/// <summary>The real <c>pgw</c> executable's command line (System.CommandLine): help, version, and usage mistakes.</summary>
public sealed class CommandLineTests
{
    private static async Task<(int Code, string Out, string Err)> RunAsync(params string[] args)
    {
        using var files = new BatchFiles();
        using var pgw = PgwProcess.Start(files.Dir, args);
        var code = await pgw.ExitCodeAsync(60_000);
        return (code, pgw.Stdout, pgw.Stderr);
    }

    [Theory]
    [InlineData("demo", "--concurency", "5")]
    [InlineData("serve", "--url", "http://127.0.0.1:0")]
    [InlineData("batch", "in.jsonl", "-o", "out.jsonl", "--retry-faild")]
    public async Task An_unknown_option_is_an_error_that_names_it_and_exits_2(params string[] args)
    {
        var (code, _, err) = await RunAsync(args);

        code.Should().Be(2);
        err.Should().Contain($"'{args.First(a => a.StartsWith("--", StringComparison.Ordinal) && a is "--concurency" or "--url" or "--retry-faild")}'");
        err.Should().Contain($"pgw {args[0]} --help");
    }

    [Theory]
    [InlineData("demo", "--concurrency")]
    [InlineData("batch", "--claim-after")]
    [InlineData("serve", "--urls")]
    [InlineData("simulate", "--error-rate")]
    public async Task Every_command_has_help_listing_its_options(string command, string option)
    {
        var (code, output, _) = await RunAsync(command, "--help");

        code.Should().Be(0);
        output.Should().Contain($"pgw {command}").And.Contain(option);
    }

    [Fact]
    public async Task Values_out_of_range_and_missing_required_options_are_refused_before_anything_runs()
    {
        var range = await RunAsync("demo", "--concurrency", "0");
        var missing = await RunAsync("batch", "in.jsonl");
        var rate = await RunAsync("simulate", "--error-rate", "2");

        range.Code.Should().Be(2);
        range.Err.Should().Contain("--concurrency must be a whole number from 1 to 100000");
        missing.Code.Should().Be(2);
        missing.Err.Should().Contain("--output");
        rate.Code.Should().Be(2);
        rate.Err.Should().Contain("--error-rate must be from 0 to 1");
    }

    [Fact]
    public async Task Version_and_help_with_no_command()
    {
        var version = await RunAsync("--version");
        var help = await RunAsync();

        version.Code.Should().Be(0);
        version.Out.Trim().Should().MatchRegex(@"^\d+\.\d+\.\d+");
        help.Code.Should().Be(0);
        help.Out.Should().Contain("demo").And.Contain("batch").And.Contain("serve").And.Contain("simulate");
    }
}
