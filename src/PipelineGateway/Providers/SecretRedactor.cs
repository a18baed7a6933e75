using System.Collections.Immutable;
using System.Text.RegularExpressions;

namespace PipelineGateway.Providers;

/// <summary>
/// Keeps secrets out of everything the gateway writes: answers, error bodies, attempt lists, metrics, logs. Three
/// nets, applied to the whole text before anything is cut short:
/// <list type="number">
/// <item>every configured secret (provider keys as they are read, the Redis password, anything passed to
/// <see cref="Register"/>), wherever it appears;</item>
/// <item>any token masked the way upstreams echo a key back — characters, a mask (<c>***</c>, <c>…</c>, <c>...</c>),
/// characters (<c>gsk_ab***wxyz</c>, <c>sk-proj-…7f3a</c>) — whatever the key's shape, since its visible ends are
/// fragments of a real key;</item>
/// <item>common key shapes whole (<c>sk-</c>, <c>sk-ant-</c>, <c>sk-proj-</c>, <c>gsk_</c>, <c>xai-</c>, <c>AIza</c>,
/// <c>ghp_</c>, <c>hf_</c>, <c>Bearer …</c>), also glued to the characters before them when they look like a key.</item>
/// </list>
/// </summary>
internal static partial class SecretRedactor
{
    private const string Mark = "[redacted]";
    private static ImmutableArray<string> s_secrets = [];

    /// <summary>Adds a secret to redact everywhere from now on (values shorter than 8 characters are ignored: too common).</summary>
    public static void Register(string? secret)
    {
        if (string.IsNullOrEmpty(secret) || secret.Length < 8)
        {
            return;
        }

        ImmutableInterlocked.Update(ref s_secrets, static (list, s) => list.Contains(s) ? list : list.Add(s), secret);
    }

    /// <summary>The text with every secret, masked key echo and key-shaped token replaced by <c>[redacted]</c>.</summary>
    public static string Redact(string? text, string? secret = null)
    {
        if (string.IsNullOrEmpty(text))
        {
            return text ?? string.Empty;
        }

        if (!string.IsNullOrEmpty(secret) && secret.Length >= 4)
        {
            text = text.Replace(secret, Mark, StringComparison.Ordinal);
        }

        foreach (var s in s_secrets)
        {
            text = text.Replace(s, Mark, StringComparison.Ordinal);
        }

        return ApplyPatterns(text, prefilter: true);
    }

    /// <summary>
    /// The three patterns, each run only over a text that holds what every match of it must (<paramref name="prefilter"/>:
    /// a mask, a key's prefix, <c>bearer</c> in any case), found by a vectorized search. The masked-token pattern tries a
    /// match at every letter of every word: with the request log's bodies on it was ~15% of a coding agent's request
    /// (docs/benchmarks.md, "Agent-sized requests and token limits"). Without the prefilter for the tests' comparison.
    /// </summary>
    internal static string ApplyPatterns(string text, bool prefilter)
    {
        if (!prefilter || text.Contains("**", StringComparison.Ordinal) || text.Contains('…') || text.Contains("...", StringComparison.Ordinal))
        {
            text = MaskedToken().Replace(text, Mark);
        }

        if (!prefilter || text.AsSpan().ContainsAny(KeyPrefixes))
        {
            text = KeyShape().Replace(text, Mark);
        }

        return !prefilter || text.Contains("bearer", StringComparison.OrdinalIgnoreCase) ? Bearer().Replace(text, "Bearer " + Mark) : text;
    }

    /// <summary>What every <see cref="KeyShape"/> match starts with (its prefixes, the longer ones holding a shorter one left out).</summary>
    private static readonly System.Buffers.SearchValues<string> KeyPrefixes =
        System.Buffers.SearchValues.Create(["sk-", "gsk_", "xai-", "AIza", "ghp_", "github_pat_", "hf_", "pk-", "rk-"], StringComparison.Ordinal);

    /// <summary>Redacts first, then cuts to <paramref name="max"/> characters (never the other way round: a cut could split a secret out of reach).</summary>
    public static string RedactAndTrim(string? text, int max = 500)
    {
        var safe = Redact(text);
        return safe.Length <= max ? safe : safe[..max] + "…";
    }

    // A masked echo: visible characters on both sides of a mask (sk-ab***wxyz, gsk_…wxyz), a key's start before a run
    // of stars (gsk_abcd****), or its last characters after a mask (****wxyz, …wxyz). A word before "..." alone
    // ("Loading...") is prose, not a fragment, so dots need characters after them.
    [GeneratedRegex(@"[A-Za-z0-9_\-]{2,}(?:\*{2,}|…|\.{3})[A-Za-z0-9_\-]{2,}|[A-Za-z0-9_\-]{4,}\*{3,}|(?:\*{2,}|…|\.{3})[A-Za-z0-9_\-]{4,}", RegexOptions.CultureInvariant)]
    private static partial Regex MaskedToken();

    // A key's shape at a word's start, or glued to what comes before it (a key pasted after other characters, "%3Dsk-…"
    // in an echoed URL, "\u0022sk-…" in escaped JSON, "MY_KEY_sk-…") when it looks like a key: 20 characters or more with
    // upper case, lower case and a digit (every provider's random part has them; words like "task-management" or
    // "risk-assessment-2024" do not, and are left alone).
    [GeneratedRegex(@"\b(?:sk-ant-|sk-proj-|sk-|gsk_|xai-|AIza|ghp_|github_pat_|hf_|pk-|rk-)[A-Za-z0-9_\-]{6,}|(?:sk-|gsk_|xai-|AIza|ghp_|github_pat_|hf_|pk-|rk-)(?=[A-Za-z0-9_\-]*[A-Z])(?=[A-Za-z0-9_\-]*[a-z])(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{20,}", RegexOptions.CultureInvariant)]
    private static partial Regex KeyShape();

    [GeneratedRegex(@"\bBearer\s+[A-Za-z0-9_\-\.=+/]{6,}", RegexOptions.CultureInvariant | RegexOptions.IgnoreCase)]
    private static partial Regex Bearer();
}
