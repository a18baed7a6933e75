using System.Net;
using System.Net.Http.Headers;
using CsCheck;
using FluentAssertions;
using Microsoft.Extensions.Logging;
using PipelineGateway.Hosting;
using PipelineGateway.Server;
using PipelineGateway.Tests.Support;

namespace PipelineGateway.Tests.Hosting;

/// <summary>
/// A log line is one line of text whatever a caller or an upstream put in it: the redacting logger writes control
/// characters out (<c>\r</c>, <c>\n</c>, <c>\u001b</c>…) before any provider sees the message. A caller's path with a
/// carriage return and an escape sequence (Kestrel decodes <c>%0D</c>, <c>%1B</c>) reached the console raw: the return
/// overwrote the line shown with a forged one, the sequence drove the reader's terminal.
/// </summary>
public sealed class LogLineTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_callers_control_characters_reach_the_log_written_out_never_raw()
    {
        var logs = new CapturingLoggerProvider();
        var config = TestServerConfig.Simulated(new Dictionary<string, string?>
        {
            ["Gateway:Server:Keys:0:Id"] = "team",
            ["Gateway:Server:Keys:0:Sha256"] = GatewayKeys.Hash("sk-gw-team-0123456789"),
        });
        await using var app = GatewayServer.Build(config, "http://127.0.0.1:0", l => l.AddProvider(logs).SetMinimumLevel(LogLevel.Information));
        using var http = new HttpClient { BaseAddress = await GatewayServer.StartAsync(app, Ct) };
        using var request = new HttpRequestMessage(HttpMethod.Get, "v1/models%0D%0Awarn:%20FORGED%1B%5B31m%C2%9B");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "wrong");

        (await http.SendAsync(request, Ct)).StatusCode.Should().Be(HttpStatusCode.Unauthorized);

        var line = logs.Lines.Should().ContainSingle(l => l.Contains("FORGED", StringComparison.Ordinal)).Subject;
        line.Should().Contain(@"/v1/models\r\nwarn: FORGED\u001b[31m\u009b", "each control character written out, the rest as it came");
        line.Should().NotContainAny("\r", "\n", "\u001b", "\u009b");
        await app.StopAsync(Ct);
    }

    /// <summary>
    /// CsCheck, fixed seed: any text comes out without a control character (but an exception's line breaks), each one
    /// written out as the spelling says (<c>\r</c>, <c>\n</c>, <c>\t</c>, else <c>\u</c> and four hex digits), every other
    /// character as it was and in its place; text without any is the same instance (no copy).
    /// </summary>
    [Fact]
    public void Printable_text_keeps_every_other_character_and_writes_each_control_out()
    {
        Gen.String[Gen.Char[(char)0, (char)0xA0], 0, 40].Select(Gen.Bool).Sample((text, keepLineBreaks) =>
        {
            var printed = RedactingLoggerProvider.Printable(text, keepLineBreaks);
            printed.Where(c => char.IsControl(c) && !(keepLineBreaks && c is '\r' or '\n')).Should().BeEmpty();
            printed.Should().Be(string.Concat(text.Select(c => c switch
            {
                '\r' or '\n' when keepLineBreaks => c.ToString(),
                '\r' => @"\r",
                '\n' => @"\n",
                '\t' => @"\t",
                _ when char.IsControl(c) => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            })));
            if (!text.Any(char.IsControl))
            {
                printed.Should().BeSameAs(text, "nothing to write out: no copy");
            }
        }, seed: "0N0XIzNsQ0O2");
    }
}
