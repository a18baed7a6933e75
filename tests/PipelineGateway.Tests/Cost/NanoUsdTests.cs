using CsCheck;
using FluentAssertions;
using PipelineGateway.Cost;

namespace PipelineGateway.Tests.Cost;

/// <summary>
/// Money as whole nano-dollars (<see cref="NanoUsd"/>): every figure the gateway sums (metrics, budgets, the request
/// log's <c>cost_nano</c>) is a request's cost converted by it once, so its rounding is the one every total shares.
/// </summary>
public sealed class NanoUsdTests
{
    [Fact]
    public void Property_nano_dollars_convert_to_dollars_and_back_unchanged_and_dollars_round_to_nine_places()
    {
        // CsCheck, fixed seed. Every nano-dollar count a long holds comes back from its dollars unchanged.
        Gen.Long[-9_000_000_000_000_000_000L, 9_000_000_000_000_000_000L]
            .Sample(n => NanoUsd.From(NanoUsd.ToUsd(n)) == n, seed: "0N0XIzNsQ0R1", iter: 20_000);

        // Dollars with any number of places: the nano-dollars are the amount rounded to nine places (half to even).
        Gen.Select(Gen.Long[-9_000_000_000_000_000L, 9_000_000_000_000_000L], Gen.Int[0, 9])
            .Select((units, extraPlaces) => Scaled(units, 9 + extraPlaces))
            .Sample(usd => NanoUsd.ToUsd(NanoUsd.From(usd)) == decimal.Round(usd, 9), seed: "0N0XIzNsQ0R2", iter: 20_000);
    }

    private static decimal Scaled(long units, int places)
    {
        var usd = (decimal)units;
        for (var i = 0; i < places; i++)
        {
            usd /= 10m; // exact: at most 28 digits
        }

        return usd;
    }

    [Theory]
    [InlineData("0.000000001", 1)]
    [InlineData("0.0000000015", 2)] // half: to the even neighbour
    [InlineData("0.0000000025", 2)]
    [InlineData("-0.0000000015", -2)]
    [InlineData("0.00000000049", 0)]
    [InlineData("1234.5678901234", 1_234_567_890_123)]
    public void Rounds_to_the_nearest_nano_dollar_half_to_even(string usd, long nano) =>
        NanoUsd.From(decimal.Parse(usd, System.Globalization.CultureInfo.InvariantCulture)).Should().Be(nano);
}
