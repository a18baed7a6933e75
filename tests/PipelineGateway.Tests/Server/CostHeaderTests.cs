using System.Globalization;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Server;

namespace PipelineGateway.Tests.Server;

/// <summary>
/// The <c>x-gateway-cost-usd</c> header's text is what the custom format <c>0.##########</c> writes (at most ten
/// decimals, rounded half away from zero, no trailing zeros), written without the custom format's slow path.
/// </summary>
public sealed class CostHeaderTests
{
    private static string Custom(decimal cost) => cost.ToString("0.##########", CultureInfo.InvariantCulture);

    [Theory]
    [InlineData("0")]
    [InlineData("0.0000111")]
    [InlineData("0.00001110")]
    [InlineData("0.00000000005")] // half: rounds away from zero to the tenth decimal
    [InlineData("0.00000000004999")]
    [InlineData("12.5")]
    [InlineData("100")]
    [InlineData("1000000.0000000001")]
    [InlineData("79228162514264337593543950335")]
    [InlineData("-0.00000000001")]
    [InlineData("-3.25")]
    public void Known_costs_read_as_the_custom_format_writes_them(string value)
    {
        var cost = decimal.Parse(value, CultureInfo.InvariantCulture);
        GatewayResponseHeaders.CostText(cost).Should().Be(Custom(cost));
    }

    [Fact]
    public void Property_every_cost_reads_as_the_custom_format_writes_it()
    {
        // CsCheck, fixed seed: decimals of every scale (0–28) and magnitude, costs of real requests among them.
        var gen = Gen.Select(Gen.Long, Gen.Int[0, 28], Gen.Bool).Select((mantissa, scale, small) =>
            small ? new decimal((int)Math.Abs(mantissa % 10_000_000), 0, 0, false, (byte)Math.Min(scale + 6, 28)) : new decimal((int)mantissa, (int)(mantissa >> 32), scale * 7919, mantissa < 0, (byte)scale));
        gen.Sample(cost => GatewayResponseHeaders.CostText(cost) == Custom(cost), iter: 100_000, seed: "0N0XIzNsQ0O2");
    }
}
