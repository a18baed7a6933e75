using CsCheck;
using FluentAssertions;
using PipelineGateway.Providers;

namespace PipelineGateway.Tests.Providers;

public sealed class SecretRedactorTests
{
    [Theory]
    [InlineData("Incorrect API key provided: sk-proj-abc***************wxyz. Check it.", "abc", "wxyz")]
    [InlineData("Invalid API Key: gsk_AbCd****************************WxYz", "AbCd", "WxYz")]
    [InlineData("key xai-Qm…9f3a was revoked", "Qm", "9f3a")]
    [InlineData("key ends in ****9f3a", "9f3a", null)]
    [InlineData("key ends in …9f3a", "9f3a", null)]
    [InlineData("key starts gsk_AbCd******", "AbCd", null)]
    [InlineData("key AIzaSyA1...Zk9q rejected", "SyA1", "Zk9q")]
    public void Masked_echoes_lose_both_visible_ends(string text, string head, string? tail)
    {
        var safe = SecretRedactor.Redact(text);

        safe.Should().NotContain(head).And.Contain("[redacted]");
        if (tail is not null)
        {
            safe.Should().NotContain(tail);
        }
    }

    [Theory]
    [InlineData("sk-abcdefghijklmnop")]
    [InlineData("sk-ant-api03-abcdefghijklmnop")]
    [InlineData("sk-proj-abcdefghijklmnop")]
    [InlineData("gsk_abcdefghijklmnop")]
    [InlineData("xai-abcdefghijklmnop")]
    [InlineData("AIzaSyAbcdefghijklmnop")]
    [InlineData("hf_abcdefghijklmnop")]
    public void Common_key_shapes_are_redacted_whole(string key) =>
        SecretRedactor.Redact($"bad key '{key}' sent").Should().Be("bad key '[redacted]' sent");

    [Theory]
    [InlineData("GET /v1/x?key%3Dsk-proj-Ab3dEfGh1jKlMnOpQrSt9 failed", "Ab3dEfGh1jKl")]
    [InlineData("{\\u0022key\\u0022:\\u0022sk-AbC123dEf456gHi789jKl\\u0022}", "AbC123dEf456")]
    [InlineData("OPENAI_API_KEY_sk-AbC123dEf456gHi789jKl not accepted", "AbC123dEf456")]
    [InlineData("pasted twice: xxxsk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm", "Zx9Yw8Vu7Ts6")]
    [InlineData("key=0gsk_Zq81LmNoPqRsTuVwXy7a invalid", "Zq81LmNoPqRs")]
    public void A_key_glued_to_the_characters_before_it_is_redacted(string text, string fragment)
    {
        var safe = SecretRedactor.Redact(text);

        safe.Should().NotContain(fragment).And.Contain("[redacted]");
    }

    [Fact]
    public void A_key_glued_after_any_characters_leaves_no_fragment() =>
        Gen.Select(
                Gen.String[Gen.Char["abcdefghijklmnopqrstuvwxyz0123456789_%=\\"], 0, 12],
                Gen.Int[0, 6].Select(i => new[] { "sk-", "sk-proj-", "sk-ant-api03-", "gsk_", "xai-", "hf_", "ghp_" }[i]),
                Gen.String[Gen.Char["ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"], 20, 60])
            .Where(t => t.Item3.Any(char.IsUpper) && t.Item3.Any(char.IsLower) && t.Item3.Any(char.IsDigit))
            .Sample((before, prefix, body) =>
            {
                var safe = SecretRedactor.Redact($"{before}{prefix}{body} rest");
                return !safe.Contains(body[..8], StringComparison.Ordinal) && !safe.Contains(body[^8..], StringComparison.Ordinal);
            }, seed: "0N0XIzNsQ0O2", iter: 2000);

    [Fact]
    public void Bearer_tokens_are_redacted_whatever_their_shape() =>
        SecretRedactor.Redact("Authorization: Bearer abc.def-ghi_jkl").Should().Be("Authorization: Bearer [redacted]");

    [Fact]
    public void A_registered_secret_of_any_shape_is_redacted_everywhere()
    {
        SecretRedactor.Register("plain-4f9c2e7d1a");

        SecretRedactor.Redact("x=plain-4f9c2e7d1a;y=plain-4f9c2e7d1a").Should().Be("x=[redacted];y=[redacted]");
    }

    [Fact]
    public void Redaction_runs_before_the_cut_so_a_key_across_the_limit_leaves_no_fragment()
    {
        const string key = "gsk_Zq81LmNoPqRsTuVw";
        var text = new string('x', 490) + " " + key + " tail";

        var safe = SecretRedactor.RedactAndTrim(text, 500);

        safe.Should().NotContain("gsk_Zq").And.NotContain("Zq81");
        safe.Length.Should().BeLessThanOrEqualTo(501);
    }

    [Theory]
    [InlineData("Loading... please wait")]
    [InlineData("max_tokens: must be positive")]
    [InlineData("The model `gpt-4o-mini` does not exist")]
    [InlineData("Rate limit reached for requests. Try again in 20s.")]
    [InlineData("task-management and risk-assessment-framework-v2 for 2024, whisk-together")]
    [InlineData("the desk-booking-service-2024-eu-west failed")]
    [InlineData("see Task-Management-Framework-Overview and Risk-Assessment-Guidelines")]
    [InlineData("tracked as task-PLAT-2024-Q3-RELEASE-NOTES")]
    public void Ordinary_error_prose_is_left_alone(string text) =>
        SecretRedactor.Redact(text).Should().Be(text);

    /// <summary>
    /// CsCheck, fixed seed: the patterns run only over texts holding what their matches need (a mask, a key prefix,
    /// "bearer") — any text made of words, key prefixes of every kind, masks, dots, "Bearer" in any case and random
    /// characters redacts exactly as the patterns run over every text do.
    /// </summary>
    [Fact]
    public void Skipping_a_pattern_over_a_text_it_cannot_match_changes_nothing()
    {
        string[] tokens = ["sk-", "sk-ant-", "sk-proj-", "gsk_", "xai-", "AIza", "ghp_", "github_pat_", "hf_", "pk-", "rk-",
            "**", "***", "…", "...", "..", "*", "Bearer ", "bearer\t", "BEARER ", " ", "\n", "-", "_", "%3D", "\"", "="];
        var piece = Gen.OneOf(
            Gen.Int[0, tokens.Length - 1].Select(i => tokens[i]),
            Gen.String[Gen.Char["abcXYZ0189"], 1, 24],
            Gen.String[0, 6]);
        piece.Array[0, 30].Select(string.Concat).Sample(text =>
            SecretRedactor.ApplyPatterns(text, prefilter: true).Should().Be(SecretRedactor.ApplyPatterns(text, prefilter: false), "for \"{0}\"", text),
            iter: 20_000, seed: "0N0XIzNsQ0O2");
    }
}
