using CsCheck;
using FluentAssertions;
using PipelineGateway.RequestLog;

namespace PipelineGateway.Tests.RequestLog;

/// <summary>The time parser behind <c>since</c>/<c>until</c> (HTTP) and <c>pgw usage --since</c>.</summary>
public sealed class TimeSpecTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 2, 12, 0, 0, TimeSpan.Zero);

    [Theory]
    [InlineData("30m", 0, 0, 30)]
    [InlineData("24h", 1, 0, 0)]
    [InlineData("7d", 7, 0, 0)]
    [InlineData("2w", 14, 0, 0)]
    [InlineData("7D", 7, 0, 0)]
    public void Relative_times_count_back_from_now(string text, int days, int hours, int minutes)
    {
        TimeSpec.TryParse(text, Now, out var value).Should().BeTrue();
        value.Should().Be(Now - new TimeSpan(days, hours, minutes, 0));
    }

    [Theory]
    [InlineData("2026-12-01", "2026-12-01T00:00:00Z")]
    [InlineData("2026-12-01T08:30:00Z", "2026-12-01T08:30:00Z")]
    [InlineData("2026-12-01T08:30:00+02:00", "2026-12-01T06:30:00Z")]
    public void Absolute_times_are_utc_unless_they_say_otherwise(string text, string expected)
    {
        TimeSpec.TryParse(text, Now, out var value).Should().BeTrue();
        value.Should().Be(DateTimeOffset.Parse(expected, System.Globalization.CultureInfo.InvariantCulture));
    }

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("d")]
    [InlineData("-5d")]
    [InlineData("5y")]
    [InlineData("99999999999d")]
    [InlineData("yesterday")]
    public void Anything_else_is_refused(string text) => TimeSpec.TryParse(text, Now, out _).Should().BeFalse();

    [Fact]
    public void Property_any_input_parses_or_is_refused_and_never_throws_and_relative_times_round_trip()
    {
        // CsCheck, fixed seed: arbitrary strings (hostile query parameters) never throw; every number with a unit
        // within range comes back as exactly that far before now.
        var pcg = new PCG(22, 7);
        var strings = Gen.String[0, 80];
        for (var i = 0; i < 20_000; i++)
        {
            var text = strings.Generate(pcg, null, out _);
            var act = () => TimeSpec.TryParse(text, Now, out _);
            act.Should().NotThrow(text);
        }

        var relative = Gen.Select(Gen.Int[0, 100_000], Gen.Int[0, 3].Select(i => "mhdw"[i]));
        for (var i = 0; i < 5_000; i++)
        {
            var (n, unit) = relative.Generate(pcg, null, out _);
            TimeSpec.TryParse($"{n}{unit}", Now, out var value).Should().BeTrue();
            var back = unit switch { 'm' => TimeSpan.FromMinutes(n), 'h' => TimeSpan.FromHours(n), 'd' => TimeSpan.FromDays(n), _ => TimeSpan.FromDays(7.0 * n) };
            value.Should().Be(Now - back);
        }
    }
}
